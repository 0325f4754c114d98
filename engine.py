"""The generation engine: one worker thread runs the model, requests wait in a bounded queue.

The engine knows nothing of HTTP. A caller submits prompt token ids and gets a `Stream`
that yields text pieces as the model produces them and can be cancelled at any time;
cancellation is checked between decode steps, so a stopped reply frees the model within
one token. Text leaves the engine only when its bytes form whole UTF-8 characters, and
stop strings are cut out before the caller sees them.
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_WAITING = 16  # requests queued behind the running one before new ones are refused
_END = object()


class EngineBusy(RuntimeError):
    """The admission queue is full; the caller should retry later."""


@dataclass
class SamplingParams:
    """How to pick tokens for one reply."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)


class TextDecoder:
    """Turns token ids into text pieces that never split a UTF-8 character or a stop string."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.prefix_offset = 0  # decode from a little before the new ids, so spaces come out right
        self.read_offset = 0
        self.pending = ""  # text held back because it may be the start of a stop string
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show (may be empty)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release(self.pending + text[len(before):])

    def _release(self, text: str) -> str:
        """Cut at a stop string, and hold back a tail that could still become one."""
        for stop in self.stop:
            at = text.find(stop)
            if at != -1:
                self.stopped, self.pending = True, ""
                return text[:at]
        hold = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        self.pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]

    def flush(self) -> str:
        """Whatever was held back, once generation has ended without a stop string."""
        text, self.pending = ("" if self.stopped else self.pending), ""
        return text


class Stream:
    """One reply in progress: iterate for text pieces; `cancel()` stops it on the server."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams):
        self.prompt_ids = prompt_ids
        self.params = params
        self.cancelled = threading.Event()
        self.events: queue.Queue = queue.Queue()
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self.text = ""

    @property
    def prompt_tokens(self) -> int:
        """Tokens in the prompt."""
        return len(self.prompt_ids)

    @property
    def done(self) -> bool:
        """True once the engine has finished with this stream."""
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Ask the engine to stop generating; takes effect before the next decode step."""
        self.cancelled.set()

    def next_piece(self, timeout: float | None = None) -> str | None:
        """The next text piece, None at the end; raises queue.Empty after timeout, or the engine's error."""
        item = self.events.get(timeout=timeout)
        if item is _END:
            self.events.put(_END)  # later calls see the end too
            if self.error is not None:
                raise self.error
            return None
        return item

    def __iter__(self):
        while (piece := self.next_piece()) is not None:
            yield piece

    def usage(self) -> dict:
        """OpenAI-style token counts."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class _Sink:
    """Receives token ids from `generate` (a transformers streamer) and feeds the stream."""

    def __init__(self, stream: Stream, decoder: TextDecoder, eos_ids: set[int]):
        self.stream, self.decoder, self.eos_ids = stream, decoder, eos_ids
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        stream = self.stream
        for token_id in value.reshape(-1).tolist():
            if stream.first_token_at is None:
                stream.first_token_at = time.monotonic()
            stream.completion_tokens += 1
            if token_id in self.eos_ids or self.decoder.stopped:
                continue
            piece = self.decoder.push(token_id)
            if piece:
                stream.text += piece
                stream.events.put(piece)

    def end(self) -> None:
        pass


class Engine:
    """Runs one model from a single worker thread, so requests never race on it."""

    def __init__(self, model, tokenizer, eos_ids: list[int], max_waiting: int = MAX_WAITING):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = list(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        if max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        self.requests: queue.Queue = queue.Queue(maxsize=max_waiting)
        self.active: Stream | None = None
        self._worker = threading.Thread(target=self._run, name="generation", daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        """Requests queued behind the running one."""
        return self.requests.qsize()

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Stream:
        """Queue a reply; raises EngineBusy when too many are already waiting."""
        stream = Stream(prompt_ids, params)
        try:
            self.requests.put_nowait(stream)
        except queue.Full:
            raise EngineBusy(f"{self.requests.maxsize} requests are already waiting") from None
        return stream

    def cancel_all(self) -> int:
        """Cancel the running reply and every queued one (at shutdown); returns how many."""
        streams = ([self.active] if self.active else []) + list(self.requests.queue)
        for stream in streams:
            stream.cancel()
        return len(streams)

    def _run(self) -> None:
        while True:
            stream = self.requests.get()
            if stream.cancelled.is_set():
                stream.finish_reason = "cancelled"
                stream.events.put(_END)
                continue
            self.active = stream
            try:
                self._generate(stream)
            except BaseException as exc:  # reported to the waiting caller, never kills the worker
                log.exception("generation failed")
                stream.error, stream.finish_reason = exc, "error"
            finally:
                self.active = None
                stream.events.put(_END)

    def _generate(self, stream: Stream) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        decoder = TextDecoder(self.tokenizer, stream.params.stop)

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                halt = stream.cancelled.is_set() or decoder.stopped
                return torch.full((input_ids.shape[0],), halt, dtype=torch.bool, device=input_ids.device)

        params = stream.params
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": None} \
            if params.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        input_ids = torch.tensor([stream.prompt_ids], device=self.model.device)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=params.max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                streamer=_Sink(stream, decoder, set(self.eos_ids)),
                stopping_criteria=StoppingCriteriaList([_Halt()]), **sampling)
        tail = decoder.flush()
        if tail:
            stream.text += tail
            stream.events.put(tail)
        last = output[0, -1].item() if output.shape[1] > input_ids.shape[1] else None
        if stream.cancelled.is_set():
            stream.finish_reason = "cancelled"
        elif decoder.stopped or last in self.eos_ids:
            stream.finish_reason = "stop"
        else:
            stream.finish_reason = "length"
