"""Rate limits (Flask-Limiter): replies and transcriptions per minute, per browser session or else per address.

A request over a limit gets a 429 with `Retry-After` and a sentence that says when to try
again; nothing is stored for it. Counters live in memory by default (one process: the
gunicorn setup runs one worker), or in the storage `WEBBOT_RATE_LIMIT_STORAGE` names
(for example `redis://host:6379`) when several processes must share them.
"""

import math
import time

from flask import Flask, request, session
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse

from web import error_response

# endpoint -> (setting that holds its limit, what the limit counts)
LIMITED = {
    "conversations.send_message": ("WEBBOT_RATE_MESSAGES", "messages"),
    "api.chat_completions": ("WEBBOT_RATE_MESSAGES", "messages"),
    "page_transcription": ("WEBBOT_RATE_TRANSCRIPTIONS", "recordings"),
    "api.audio_transcriptions": ("WEBBOT_RATE_TRANSCRIPTIONS", "recordings"),
}


def client_key() -> str:
    """Whom a request counts against: its browser session when it has one, else its address."""
    owner = session.get("owner")
    return f"session:{owner}" if owner else f"address:{request.remote_addr}"


def init_rate_limits(app: Flask) -> Limiter:
    """Apply the configured limits to the registered views; returns the limiter."""
    # No headers_enabled: it would stamp its own Retry-After on every response, 503s included.
    limiter = Limiter(client_key, app=app, storage_uri=app.config["WEBBOT_RATE_LIMIT_STORAGE"],
                      strategy="moving-window")
    for endpoint, (setting, counted) in LIMITED.items():
        value = app.config[setting]
        if value == "off":
            continue
        try:
            parse(value)
        except ValueError:
            raise ValueError(f"{setting} must be a rate such as 30/minute or 500/hour, or off; not {value!r}") from None
        app.view_functions[endpoint] = limiter.limit(value, scope=counted)(app.view_functions[endpoint])

    @app.errorhandler(RateLimitExceeded)
    def too_many(exc: RateLimitExceeded):
        current = limiter.current_limit
        wait = max(1, math.ceil(current.reset_at - time.time())) if current else 60
        counted = LIMITED.get(request.endpoint, (None, "requests"))[1]
        message = f"Too many {counted}: the limit is {exc.limit.limit}. Try again in {wait} seconds."
        return error_response(429, message, "rate_limit_error", "rate_limited", {"Retry-After": str(wait)})

    return limiter
