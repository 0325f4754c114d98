"""Talking to OpenAI-compatible servers (vLLM, TGI, llama.cpp server, another webbot): clients and their errors.

The official `openai` client does the HTTP; this module builds one with the timeouts a
chat server needs (a short connect timeout, a longer wait between streamed chunks, no
silent retries that would double a reply) and turns its exceptions into `UpstreamError`,
which carries the HTTP status the app answers with (502, 503 or 504) and a sentence
that names the server and says what to check.
"""

CONNECT_TIMEOUT_S = 10.0


class UpstreamError(RuntimeError):
    """A model or speech server failed: `status` for our reply, `sentence` for the user."""

    def __init__(self, status: int, sentence: str, code: str):
        super().__init__(sentence)
        self.status, self.sentence, self.code = status, sentence, code


def make_client(url: str, key: str | None, timeout: float):
    """An openai client for `url` (ending in /v1) that waits at most `timeout` seconds between bytes."""
    from openai import OpenAI, Timeout

    return OpenAI(base_url=url.rstrip("/"), api_key=key or "unused", max_retries=0,
                  timeout=Timeout(timeout, connect=CONNECT_TIMEOUT_S))


def upstream_error(exc: Exception, what: str, url: str, timeout: float) -> UpstreamError:
    """The UpstreamError for an exception the openai client raised talking to `what` at `url`."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return UpstreamError(504, f"The {what} at {url} did not answer within {timeout:g} seconds; it may be "
                                  "overloaded. Try again, or raise WEBBOT_BACKEND_TIMEOUT.", "upstream_timeout")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError(502, f"The {what} at {url} is unreachable; check that it is running and that the "
                                  "URL is right.", "upstream_unreachable")
    if isinstance(exc, openai.APIStatusError):
        detail = _message_of(exc)
        if exc.status_code in (429, 503):
            return UpstreamError(503, f"The {what} is busy ({detail}); try again in a few seconds.", "busy")
        return UpstreamError(502, f"The {what} at {url} refused the request with HTTP {exc.status_code}: "
                                  f"{detail}", "upstream_error")
    return UpstreamError(502, f"The {what} at {url} failed: {type(exc).__name__}: {exc}", "upstream_error")


def _message_of(exc) -> str:
    """The error sentence an OpenAI-style server put in its body, else its status line."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if isinstance(message, str) and message:
            return message[:300]
    return str(exc)[:300]
