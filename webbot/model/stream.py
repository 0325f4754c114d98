"""What a caller holds while a reply is written: the sampling settings it asked for, and the `Stream` that
yields the reply's text and can be cancelled. Both model backends (the local engine and a remote model
server) hand out these; nothing here needs torch, so the web layer imports it freely.
"""

import queue
import threading
import time
from dataclasses import dataclass, field

from webbot.model.metrics import Metrics

_END = object()


class EngineBusy(RuntimeError):
    """The admission queue is full; the caller should retry later."""


class ReplyFailed(RuntimeError):
    """A reply ended by an error whose message is a sentence for the person, shown as it is."""


class EngineFailed(ReplyFailed):
    """The accelerator failed in a way that leaves it unusable for this process (a CUDA device-side assert, an
    illegal memory access): no reply can run until the process restarts."""


class NoUsableToken(ReplyFailed):
    """The model's scores for the next token were not numbers (NaN or infinite), so no token could be chosen."""

    def __init__(self):
        super().__init__("The model gave no usable next token (its scores were not numbers); try again, or use "
                         "another dtype (WEBBOT_DTYPE) if it happens again.")


@dataclass
class SamplingParams:
    """How to pick tokens for one reply."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)


class Stream:
    """One reply in progress: iterate for text pieces; `cancel()` stops it on the server."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, owner: str = "", public_tokens: int = 0,
                 conversation: str | None = None):
        self.prompt_ids = prompt_ids
        self.params = params
        self.owner = owner  # whose cached prompts this one may reuse (see kv_cache.py)
        self.public_tokens = public_tokens  # leading prompt tokens anyone's cache may supply
        self.conversation = conversation  # the page's conversation this reply belongs to, if any
        self.cancelled = threading.Event()
        self.events: queue.Queue = queue.Queue()
        self.generated_ids: list[int] = []
        self.reused_tokens = 0  # prompt tokens whose KV cache came from an earlier sequence (OpenAI's cached_tokens)
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.text = ""

    @property
    def prompt_tokens(self) -> int:
        """Tokens in the prompt."""
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far (end-of-turn token included)."""
        return len(self.generated_ids)

    @property
    def done(self) -> bool:
        """True once the engine has finished with this stream."""
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Ask the engine to stop generating; takes effect before the next step."""
        self.cancelled.set()

    def record_token(self, metrics: Metrics, count: int = 1) -> None:
        """Count `count` new tokens and time them: time to first token, then time per output token."""
        now = time.monotonic()
        metrics.generated_tokens.inc(count)
        if self.first_token_at is None:
            self.first_token_at = now
            metrics.time_to_first_token.observe(now - self.submitted)
        else:
            metrics.time_per_output_token.observe(now - self.last_token_at)
        self.last_token_at = now

    def push(self, piece: str) -> None:
        """Hand a piece of text to the reader."""
        self.text += piece
        self.events.put(piece)

    def end(self, reason: str, error: BaseException | None = None) -> None:
        """Record why the reply ended and wake the reader (called once, by whoever generated it)."""
        self.error, self.finish_reason = error, reason
        self.events.put(_END)

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
        """OpenAI-style token counts; `cached_tokens` counts only this requester's own reuse (and the public head)."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.reused_tokens}}
