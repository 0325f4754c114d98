"""RemoteBot: the ChatBot's interface over an OpenAI-compatible model server (WEBBOT_BACKEND=openai).

When one GPU is not enough, the model runs in vLLM, TGI or a llama.cpp server and every
app replica streams from it. The replica still loads the same model's tokenizer and chat
template (no weights) from WEBBOT_MODEL, so memory trimming and the "outside memory"
gauge count exactly the tokens the server will see; the trimmed messages go upstream
and the server applies the same template.

Each reply is one streaming /chat/completions request made with the official openai
client. A reader thread feeds an `engine.Stream`, so the page and the /v1 API cannot
tell the two backends apart. Stop and a closed tab cancel the stream, which closes the
HTTP response: vLLM, TGI and llama.cpp abort a request whose client has gone. A server
that cannot be reached, refuses, or goes quiet for WEBBOT_BACKEND_TIMEOUT seconds
becomes an `UpstreamError` (502/503/504 with a sentence) before the reply starts, or
ends a started reply with finish reason "error" and that sentence. No Flask imports.
"""

import hashlib
import logging
import threading
import time

from webbot.config import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_RECALL_SHARE,
    DEFAULT_REPLY_SHARE,
    DEFAULT_SYSTEM_PROMPT,
    REMOTE_MAX_STREAMS,
)
from webbot.model.bot import PlansReplies
from webbot.model.memory import Memory, MemoryPlan
from webbot.model.metrics import Metrics
from webbot.model.naming import display_name
from webbot.model.stream import EngineBusy, SamplingParams, Stream
from webbot.model.upstream import UpstreamError, make_client, upstream_error

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 3.0
HEALTH_CACHE_S = 5.0  # /healthz asks the model server at most this often


class RemoteStream(Stream):
    """A reply read from the model server; cancelling it closes the HTTP response."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams):
        super().__init__(prompt_ids, params)
        self.response = None
        self.upstream_tokens: int | None = None  # the server's own count, when it sends usage
        self.counted_tokens = 0

    @property
    def completion_tokens(self) -> int:
        """Tokens of the reply: the server's count when it gave one, else our tokenizer's."""
        return self.upstream_tokens if self.upstream_tokens is not None else self.counted_tokens

    def cancel(self) -> None:
        """Stop reading and close the connection, which tells the server to stop generating."""
        self.cancelled.set()
        response = self.response
        if response is not None:
            try:
                response.close()
            except Exception:  # closing a half-read response from another thread may complain; it is closed
                log.debug("closing an upstream response raised", exc_info=True)


class RemoteBot(PlansReplies):
    """Trims memory locally and streams replies from `url` (an OpenAI-compatible /v1 base URL)."""

    failure = None  # the model server's GPU is its own: a failure there is an upstream error

    def __init__(self, url: str, model: str, key: str | None = None, served_model: str | None = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, reply_share: float = DEFAULT_REPLY_SHARE,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, timeout: float = 120.0,
                 max_streams: int = REMOTE_MAX_STREAMS, metrics=None, client=None,
                 cache_salt: bool = False, recall_share: float = DEFAULT_RECALL_SHARE):
        self.url, self.model_id, self.key = url.rstrip("/"), model, key
        self.served_model = served_model or model
        self.max_tokens, self.reply_share, self.system_prompt = max_tokens, reply_share, system_prompt
        self.recall_share = recall_share
        self.timeout = timeout
        self.cache_salt = cache_salt
        self.metrics = metrics or Metrics()
        self.metrics.watch(self)
        self.memory: Memory | None = None
        self.error: str | None = None
        self._client = client
        self._slots = threading.BoundedSemaphore(max_streams)
        self._running: set[RemoteStream] = set()
        self._lock = threading.Lock()
        self._loaded = threading.Event()
        self._health: tuple[float, dict] | None = None

    @property
    def ready(self) -> bool:
        """True once the tokenizer is loaded (the model server is checked by `check()`)."""
        return self._loaded.is_set()

    @property
    def name(self) -> str:
        """The model id clients see: the one the server serves."""
        return self.served_model

    @property
    def display_name(self) -> str:
        """What the page calls the model: a name made from the one the server serves."""
        return display_name(self.served_model)

    @property
    def running(self) -> int:
        """Replies streaming from the server now."""
        with self._lock:
            return len(self._running)

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.url, self.key, self.timeout)
        return self._client

    def load(self) -> "RemoteBot":
        """Load the tokenizer and chat template (no weights) for memory trimming."""
        if self.ready:
            return self
        from webbot.model.loading import load_tokenizer

        started = time.monotonic()
        try:
            tokenizer = load_tokenizer(self.model_id, "point WEBBOT_MODEL at the served model's tokenizer files")
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load the tokenizer of %s", self.model_id)
            raise
        self.memory = Memory(tokenizer, self.max_tokens, self.reply_share, recall_share=self.recall_share)
        log.info("tokenizer of %s ready in %.1f s; replies come from %s (model %s); context %d tokens, "
                 "prompt budget %d", self.model_id, time.monotonic() - started, self.url, self.served_model,
                 self.max_tokens, self.memory.budget)
        self._loaded.set()
        return self

    def generate(self, plan: MemoryPlan, params: SamplingParams, owner: str = "",
                 conversation: str | None = None) -> RemoteStream:
        """Send the planned messages upstream for `owner`; returns once the server has accepted the request.

        Raises EngineBusy when this replica already streams `max_streams` replies, and
        UpstreamError when the server cannot be reached or refuses.
        """
        if not self._slots.acquire(blocking=False):
            self.metrics.rejected.inc()
            raise EngineBusy(f"{self.running} replies are streaming from the model server")
        params.max_new_tokens = self.reply_tokens(plan.prompt_tokens, params.max_new_tokens)
        stream = RemoteStream(plan.prompt_ids, params)
        request = {"model": self.served_model, "messages": plan.kept_messages, "stream": True,
                   "max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
                   "stream_options": {"include_usage": True}}
        if params.stop:
            request["stop"] = params.stop
        extra = {}
        if plan.continuing:  # vLLM's names for "go on writing the last assistant message"
            extra.update(continue_final_message=True, add_generation_prompt=False)
        if self.cache_salt:
            extra["cache_salt"] = hashlib.sha256(f"webbot-owner:{owner}".encode()).hexdigest()[:32]
        if extra:
            request["extra_body"] = extra
        try:
            stream.response = self.client.chat.completions.create(**request)
        except Exception as exc:
            self._slots.release()
            self._health = None  # /healthz asks again rather than repeat a stale "ok"
            self.metrics.replies.labels("error").inc()
            error = upstream_error(exc, "model server", self.url, self.timeout)
            log.warning("model server request failed: %s", error.sentence)
            raise error from None
        stream.started = time.monotonic()
        with self._lock:
            self._running.add(stream)
        threading.Thread(target=self._read, args=(stream,), daemon=True, name="upstream-reader").start()
        return stream

    def _read(self, stream: RemoteStream) -> None:
        """Move the server's chunks into the stream until it ends, fails or is cancelled."""
        reason, error = "stop", None
        try:
            for chunk in stream.response:
                if stream.cancelled.is_set():
                    break
                usage = getattr(chunk, "usage", None)
                if usage is not None and usage.completion_tokens is not None:
                    stream.upstream_tokens = usage.completion_tokens
                    details = getattr(usage, "prompt_tokens_details", None)
                    if self.cache_salt and details is not None and details.cached_tokens:
                        stream.reused_tokens = details.cached_tokens
                for choice in chunk.choices or ():
                    piece = choice.delta.content if choice.delta is not None else None
                    if piece:
                        self._emit(stream, piece)
                    if choice.finish_reason:
                        reason = "length" if choice.finish_reason == "length" else "stop"
        except Exception as exc:
            if not stream.cancelled.is_set():  # a cancel closes the response, which may raise here
                reason, self._health = "error", None
                error = UpstreamError(502, f"The model server at {self.url} stopped answering in the middle of "
                                           f"this reply ({type(exc).__name__}).", "upstream_interrupted")
                log.warning("reply from %s cut off after %d characters: %s", self.url, len(stream.text), exc)
        finally:
            try:
                stream.response.close()
            except Exception:
                log.debug("closing an upstream response raised", exc_info=True)
            with self._lock:
                self._running.discard(stream)
            self._slots.release()
            self._finish(stream, "cancelled" if stream.cancelled.is_set() and error is None else reason, error)

    def _emit(self, stream: RemoteStream, piece: str) -> None:
        tokens = len(self.memory.encode(piece)) or 1
        stream.counted_tokens += tokens
        stream.record_token(self.metrics, tokens)
        stream.push(piece)

    def _finish(self, stream: RemoteStream, reason: str, error: BaseException | None) -> None:
        self.metrics.replies.labels(reason).inc()
        self.metrics.prompt_tokens.labels("computed").inc(stream.prompt_tokens)
        stream.end(reason, error)

    def queue_position(self, stream: RemoteStream) -> tuple[int, int]:
        """The model server queues on its own side and does not say where; (0, streams from this replica)."""
        return 0, self.running

    def cancel_all(self) -> int:
        """Cancel every reply streaming now (a shutdown); each is stored as stopped."""
        with self._lock:
            streams = list(self._running)
        for stream in streams:
            stream.cancel()
        return len(streams)

    def close(self, seconds: float = 30.0) -> None:
        """End every reply streaming now; nothing else runs here."""
        self.cancel_all()

    def forget(self, conversations: set[str]) -> None:
        """Nothing is kept here: the model server keeps its own cache."""

    def gauges(self) -> dict[str, float]:
        """The server queues on its own side; here only the replies streaming through this replica count."""
        return {"queue_depth": 0, "active_streams": self.running, "kv_cache_bytes": 0, "kv_cache_budget": 0}

    def upstream_check(self) -> dict:
        """Whether the model server answers GET /models, asked at most every HEALTH_CACHE_S seconds."""
        now = time.monotonic()
        if self._health and now - self._health[0] < HEALTH_CACHE_S:
            return self._health[1]
        try:
            self.client.with_options(timeout=HEALTH_TIMEOUT_S).models.list()
            result = {"status": "ok", "url": self.url}
        except Exception as exc:
            result = {"status": "error", "url": self.url,
                      "error": upstream_error(exc, "model server", self.url, HEALTH_TIMEOUT_S).sentence}
        self._health = (now, result)
        return result
