"""The generation engine: one worker thread runs the model for all streams, decoding them together.

The engine knows nothing of HTTP. A caller submits prompt token ids and gets a `Stream`
that yields text pieces as the model produces them and can be cancelled at any time.

The worker runs a loop of steps. Each step admits waiting requests (up to `max_batch`
in flight), advances one prompt by one prefill chunk, then runs one decode step for
every stream already past its prompt: a single forward pass over a left-padded batch,
one new token per stream. New requests join between steps, finished and cancelled ones
leave before the next step, so a stopped reply frees its slot within one step.

A prompt that begins like an earlier sequence reuses that sequence's KV cache from the
prefix cache (`kv_cache.py`), so the next turn of a conversation prefills only its new
tokens; a finished reply's cache goes back there. A prompt's KV cache is read into a
buffer with room for it (`kv_buffer.py`); the decoding replies share one pool of slots
(`kv_pool.py`), each writing its token in place at its own length, so neither a step nor a
reply joining or leaving copies the other replies' caches.

The worker thread runs from `start()` until `close()`; constructing an engine starts nothing.
After an error that leaves the GPU unusable (`gpu_failures.py`) it runs nothing again: every
reply ends with the reason, later ones are refused, and the app is told, to restart.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable

import torch

from webbot.config import MAX_REPLY_SECONDS, MAX_WAITING
from webbot.model import kv_buffer, kv_pool
from webbot.model.decoding import TextDecoder, sample_tokens
from webbot.model.gpu_failures import unrecoverable
from webbot.model.kv_cache import PrefixCache
from webbot.model.metrics import Metrics
from webbot.model.stream import EngineBusy, EngineFailed, NoUsableToken, SamplingParams, Stream

log = logging.getLogger(__name__)
_CLOSE = object()  # put in the queue to wake an idle worker when the engine closes
__all__ = ["Engine", "EngineBusy", "EngineFailed", "NoUsableToken", "SamplingParams", "Stream"]


def _no_usable_token() -> NoUsableToken:
    """The error that ends a reply whose next token could not be chosen, logged once."""
    error = NoUsableToken()
    log.error("a reply ended: %s", error)
    return error


class _Row:
    """A stream's state inside the engine: its ids so far and where its KV cache lives."""

    def __init__(self, stream: Stream, decoder: TextDecoder):
        self.stream, self.decoder = stream, decoder
        self.ids = list(stream.prompt_ids)  # the cache covers all but the last of these once prefilled
        self.cache = None  # a buffered cache (kv_buffer) while the prompt is prefilled
        self.pos = 0  # prompt tokens in that cache
        self.kv: list[tuple] | None = None  # own tensors while outside the batch
        self.source = None  # the prefix-cache entry whose whole prompt this one reused, if any


class Engine:
    """Runs one model from a single worker thread, so requests never race on it."""

    def __init__(self, model, tokenizer, eos_ids: list[int], cache: PrefixCache, max_waiting: int = MAX_WAITING,
                 max_batch: int = 8, prefill_chunk: int = 256, max_seconds: float = MAX_REPLY_SECONDS,
                 metrics: Metrics | None = None, growth_room: int = kv_buffer.GROWTH_ROOM,
                 on_failure: Callable[[str], None] | None = None, fixed_steps: Callable | None = None):
        if max_waiting < 1 or max_batch < 1:
            raise ValueError("max_waiting and max_batch must be at least 1")
        self.model, self.tokenizer, self.cache = model, tokenizer, cache
        self.eos_ids = list(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.max_batch, self.prefill_chunk, self.max_seconds = max_batch, prefill_chunk, max_seconds
        self.growth_room = growth_room  # tokens of room the batch's KV buffers and mask get, and grow by
        self.metrics = metrics or Metrics()
        self.requests: queue.Queue = queue.Queue(maxsize=max_waiting)
        self.prefilling: list[_Row] = []
        self.rows: list[_Row] = []  # decoding together, in the order of the batch
        self._pool: kv_pool.SlotPool | None = None  # the decoding rows' KV caches, rows[i] in slot i
        self.fixed_steps = fixed_steps  # makes FixedSteps (fixed_steps.py) from a row's KV; None: steps at any shape
        self._steps = None  # those steps, over their static pool, once made
        self._closing = threading.Event()
        self._worker: threading.Thread | None = None
        self.failed: str | None = None  # why the accelerator can no longer run the model, once it cannot
        self._admission = threading.Lock()  # submit's check of `failed` and its put, against the failure's drain
        self.on_failure = on_failure  # told that sentence once (the app restarts the process)

    def start(self) -> "Engine":
        """Start the worker thread (once)."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="generation", daemon=True)
            self._worker.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """End every reply (each ends as cancelled), stop the worker thread and wait for it."""
        self._closing.set()
        self.cancel_all()
        try:
            self.requests.put_nowait(_CLOSE)
        except queue.Full:
            pass  # the worker is not idle, so it sees the flag after this step
        if self._worker is not None:
            self._worker.join(timeout)

    @property
    def waiting(self) -> int:
        """Requests queued, not yet started."""
        return self.requests.qsize()

    @property
    def running(self) -> int:
        """Streams started and not finished."""
        return len(self.prefilling) + len(self.rows)

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV cache held: the prefix cache plus the streams in flight."""
        pool = self._pool  # read once: the worker may drop it meanwhile
        storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes()  # a buffer counts once
                    for row in list(self.rows) + list(self.prefilling) for pair in (row.kv or ()) for tensor in pair}
        return self.cache.nbytes + (pool.nbytes if pool else 0) + sum(storages.values())

    def position(self, stream: Stream) -> int:
        """Where a reply waits: 1 for the next to start, 0 once it has started (or left the queue)."""
        with self.requests.mutex:  # the worker takes from this deque meanwhile
            waiting = list(self.requests.queue)
        return waiting.index(stream) + 1 if stream in waiting else 0

    def submit(self, prompt_ids: list[int], params: SamplingParams, owner: str = "", public_tokens: int = 0,
               conversation: str | None = None) -> Stream:
        """Queue a reply for `owner`, who may reuse only their own cached prompts beyond the first `public_tokens`
        (its cache is kept under `conversation`, so deleting that removes it); raises EngineBusy when too many are
        already waiting."""
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        rows = self.model.get_input_embeddings().num_embeddings
        if not (0 <= min(prompt_ids) and max(prompt_ids) < rows):  # never reaches the model (a CUDA assert)
            raise ValueError(f"the prompt holds a token id outside the model's vocabulary of {rows}: the "
                             f"tokenizer does not match the model")
        stream = Stream(prompt_ids, params, owner, public_tokens, conversation)
        try:
            with self._admission:  # a GPU failure empties the queue under this lock: nothing slips in after
                if self.failed:
                    raise EngineFailed(self.failed)
                self.requests.put_nowait(stream)
        except queue.Full:
            self.metrics.rejected.inc()
            raise EngineBusy(f"{self.requests.maxsize} requests are already waiting") from None
        return stream

    def cancel_all(self) -> int:
        """Cancel every running and queued reply (at shutdown); returns how many."""
        waiting = [item for item in list(self.requests.queue) if item is not _CLOSE]
        streams = [row.stream for row in list(self.prefilling) + list(self.rows)] + waiting
        for stream in streams:
            stream.cancel()
        return len(streams)

    # The worker thread from here on.

    def _run(self) -> None:
        while not self._closing.is_set():
            self._admit()
            with torch.inference_mode():
                if self.prefilling:
                    row = self.prefilling[0]
                    try:
                        self._prefill_step(row)
                    except BaseException as exc:  # reported to the waiting caller, never kills the worker
                        log.exception("prefill failed")
                        self._check_failure(exc)
                        if row in self.prefilling:
                            self.prefilling.remove(row)
                        if row not in self.rows:
                            self._finish(row, "error", EngineFailed(self.failed) if self.failed else exc)
                if self.rows and not self.failed:
                    try:
                        self._decode_step()
                    except BaseException as exc:
                        log.exception("decode step failed")
                        rows, self.rows, self._pool, self._steps = list(self.rows), [], None, None
                        self._check_failure(exc)
                        for row in rows:  # the batch may be what failed: nothing of it is touched again
                            row.kv = None
                            self._finish(row, "error", EngineFailed(self.failed) if self.failed else exc)
        if self.failed:  # nothing is run on the accelerator again: every reply started or waiting ends
            error = EngineFailed(self.failed)
            waiting = []
            with self._admission:
                while not self.requests.empty():
                    waiting.append(self.requests.get_nowait())
            for row in self.prefilling + self.rows:
                row.kv = row.cache = None
                self._finish(row, "error", error)
            self.prefilling, self.rows = [], []
            for stream in waiting:
                if stream is not _CLOSE:
                    self._finish(_Row(stream, TextDecoder(self.tokenizer, stream.params.stop)), "error", error)
        for row in self.prefilling + self.rows:  # closed: whatever was running ends, as cancelled
            self._finish(row, "cancelled")
        self.prefilling, self.rows, self._pool, self._steps = [], [], None, None

    def _check_failure(self, exc: BaseException) -> None:
        """After an unrecoverable accelerator error, stop running the model and say so (once)."""
        if self.failed or not unrecoverable(exc):
            return
        self.failed = (f"The GPU failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}) and "
                       f"cannot run the model again in this process; the server restarts itself.")
        log.critical("%s", self.failed)
        self._closing.set()
        if self.on_failure is not None:
            try:
                self.on_failure(self.failed)
            except Exception:
                log.exception("telling the app that the GPU failed went wrong")

    def _admit(self) -> None:
        """Take waiting requests while there is room; block when there is nothing else to do."""
        while self.running < self.max_batch:
            try:
                stream = self.requests.get(block=self.running == 0)
            except queue.Empty:
                return
            if stream is _CLOSE:
                return
            stream.started = time.monotonic()
            row = _Row(stream, TextDecoder(self.tokenizer, stream.params.stop))
            if stream.cancelled.is_set():
                self._finish(row, "cancelled")
            else:
                self.prefilling.append(row)

    def _prefill_step(self, row: _Row) -> None:
        """Feed the next chunk of one prompt; after the last, pick its first token and join the batch."""
        stream = row.stream
        if stream.cancelled.is_set():
            self.prefilling.remove(row)
            self._finish(row, "cancelled")
            return
        if row.cache is None:
            found = self.cache.lookup(row.ids, stream.owner, stream.public_tokens)
            source = found.entry
            if source is not None and source.owner == stream.owner and found.tokens >= source.prompt_len - 1:
                row.source = source
            first = found.tokens if found.kv else min(self.prefill_chunk, len(row.ids))  # the first tokens written
            row.cache = kv_buffer.buffered_cache(found.kv, room=len(row.ids) - first)  # the prompt: never grows
            row.pos = stream.reused_tokens = found.tokens
            self.metrics.prompt_tokens.labels("reused").inc(found.tokens)
            self.metrics.prompt_tokens.labels("computed").inc(len(row.ids) - found.tokens)
            if found.tier:
                self.metrics.reused_by_tier.labels(found.tier).inc(found.tokens)
        end = min(row.pos + self.prefill_chunk, len(row.ids))
        device = self.model.device
        started = time.monotonic()
        inputs = {"input_ids": torch.tensor([row.ids[row.pos:end]], device=device),
                  "position_ids": torch.arange(row.pos, end, device=device).unsqueeze(0)}
        logits = self._forward(lambda: self.model(**inputs, past_key_values=row.cache, use_cache=True,
                                                  logits_to_keep=1).logits[:, -1], row.cache, row.pos)
        self.cache.rates.prefilled(end - row.pos, time.monotonic() - started)
        row.pos = end
        if end < len(row.ids):
            return
        self.prefilling.remove(row)
        row.kv = [(layer.keys, layer.values) for layer in row.cache.layers]
        row.cache = None
        token = sample_tokens(logits, [stream.params])[0]
        if token is None:
            self._finish(row, "error", _no_usable_token())
            return
        reason = self._emit(row, token)
        if reason:
            self._finish(row, reason)
        else:
            self.rows.append(row)  # joins the pool at the next decode step

    def _decode_step(self) -> None:
        """One token for every decoding stream, in one forward pass over the pool's slots."""
        for row in [r for r in self.rows if r.stream.cancelled.is_set()]:
            self._leave(row, "cancelled")
        if not self.rows:
            return
        self._join()
        ids = [row.ids[-1] for row in self.rows]
        # a step run again writes the same positions, and the pool's lengths move only once it succeeds
        if self._steps is not None:
            logits = self._forward(lambda: self._steps.run(ids))
        else:
            cache, mask, positions = self._pool.prepare()
            inputs = {"input_ids": torch.tensor([[i] for i in ids], device=self.model.device),
                      "position_ids": positions, "attention_mask": mask}
            logits = self._forward(lambda: self.model(**inputs, past_key_values=cache, use_cache=True).logits[:, -1])
        self._pool.advance()
        tokens = sample_tokens(logits, [row.stream.params for row in self.rows])
        for row, token in list(zip(self.rows, tokens, strict=True)):
            if token is None:
                self._leave(row, "error", _no_usable_token())
                continue
            reason = self._emit(row, token)
            if reason:
                self._leave(row, reason)

    def _forward(self, run: Callable, cache=None, length: int = 0):
        """`run()`: a forward pass of the model. Out of memory, the prefix cache's kept tensors are let go and the
        pass runs once more from where it started (what it wrote into a buffered `cache` past `length` is forgotten
        first)."""
        try:
            return run()
        except torch.OutOfMemoryError:
            freed = self.cache.release()
            for layer in cache.layers if cache is not None else ():
                layer.truncate(length)
            log.warning("out of memory in a forward pass: let go of %.0f MB of kept KV caches, trying it once more",
                        freed / 2**20)
            return run()

    def _join(self) -> None:
        """Copy the caches of rows that finished their prompt into the pool's next slots (rows[i] is in slot i)."""
        joining = self.rows[self._pool.rows if self._pool else 0:]
        if joining and self._pool is None:
            if self.fixed_steps is not None:  # a static pool, kept while the engine runs
                self._steps = self.fixed_steps(joining[0].kv)
                self._pool = self._steps.pool
            else:
                slots = self.max_batch if self.model.device.type == "cpu" else 1  # CPU: unwritten slots cost nothing
                self._pool = kv_pool.SlotPool.like(joining[0].kv, room=self.growth_room, slots=slots,
                                                   window=kv_pool.window_of(self.model.config))
        for row in joining:
            self._pool.add(row.kv)
            row.kv = None  # the pool holds it now

    def _leave(self, row: _Row, reason: str, error: BaseException | None = None) -> None:
        """Take a row out of the batch: its cache is kept (copied out of its slot), and the last row moves into
        the slot."""
        slot = self.rows.index(row)
        pool = self._pool
        if pool is None or slot >= pool.rows:  # not in the pool yet: it holds its own cache
            self.rows.remove(row)
            self._finish(row, reason, error)
            return
        row.kv = pool.view(slot)
        last = self.rows.pop(pool.rows - 1)  # the row in the pool's last slot moves into this one
        if last is not row:
            self.rows[slot] = last
        try:
            self._finish(row, reason, error)  # copies what it keeps before the slot is reused
        finally:
            pool.remove(slot)
            if not self.rows and not pool.static:
                self._pool = None

    def _emit(self, row: _Row, token: int) -> str | None:
        """Hand one new token to the stream; returns why the reply ends here, if it does."""
        stream = row.stream
        row.ids.append(token)
        stream.generated_ids.append(token)
        stream.record_token(self.metrics)
        if token in self.eos_ids:
            return "stop"
        piece = row.decoder.push(token)
        if piece:
            stream.push(piece)
        if row.decoder.stopped:
            return "stop"
        if stream.completion_tokens >= stream.params.max_new_tokens:
            return "length"
        if stream.last_token_at - stream.started > self.max_seconds:
            log.warning("a reply reached the %.0f s limit after %d tokens", self.max_seconds,
                        stream.completion_tokens)
            return "length"
        return None

    def _finish(self, row: _Row, reason: str, error: BaseException | None = None) -> None:
        """End a stream: flush held-back text, keep its cache for the next turn, wake the caller. The stream ends
        whatever happens here: a cache that cannot be kept (copying it can run out of memory on a busy GPU) is
        only not kept, and the reply is whole."""
        stream = row.stream
        try:
            tail = row.decoder.flush() if reason != "error" else ""
            if tail:
                stream.push(tail)
            if reason != "error" and len(row.ids) > len(stream.prompt_ids):
                try:
                    kept = row.kv if self.cache.reuse else None
                    kv = [(kv_buffer.compact(k), kv_buffer.compact(v)) for k, v in kept] if kept else None
                    # kv covers all ids but the last
                    self.cache.add(row.ids, kv, len(stream.prompt_ids), row.source, stream.owner,
                                   stream.public_tokens, stream.conversation)
                except Exception:
                    log.exception("a finished reply's KV cache could not be kept; its next turn reads it again")
        finally:
            row.kv = row.cache = None
            self.metrics.replies.labels(reason).inc()
            stream.end(reason, error)
