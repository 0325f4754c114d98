"""Server-sent events: formatting, heartbeats while a request waits, and clean-up on disconnect.

Both the chat page and the /v1 API stream replies through these helpers, so a reply
that waits in the queue keeps its connection alive, and a closed connection always
cancels generation on the server.
"""

import json
import queue
import threading
from collections.abc import Callable, Iterator

from flask import Response

from webbot.model.stream import Stream

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


def sse(data, event: str | None = None) -> str:
    """One event in text/event-stream format."""
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"{head}data: {payload}\n\n"


def pieces(stream: Stream, heartbeat_s: float) -> Iterator[str | None]:
    """Text pieces of a reply; None every `heartbeat_s` seconds while nothing arrives. A reply that fails just
    ends here: the caller reads `stream.finish_reason` and `stream.error`."""
    while True:
        try:
            piece = stream.next_piece(timeout=heartbeat_s)
        except queue.Empty:
            yield None
            continue
        except Exception:
            if stream.finish_reason == "error":
                return  # the caller tells the client, from stream.error
            raise
        if piece is None:
            return
        yield piece


def event_stream(body: Iterator[str], on_close: Callable[[], None]) -> Response:
    """A streaming response whose `on_close` runs exactly once, however the client leaves.

    The WSGI server closes the response on a normal end, on an error, and when the client
    disconnects (a write fails); a generator that never started would skip its `finally`,
    so clean-up hangs on the response instead.
    """
    once = threading.Lock()

    def close() -> None:
        if once.acquire(blocking=False):
            on_close()

    response = Response(body, mimetype="text/event-stream", headers=SSE_HEADERS)
    response.call_on_close(close)
    return response
