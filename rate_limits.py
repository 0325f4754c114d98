"""Rate limits (Flask-Limiter): replies and transcriptions per user, browser session or else address; sign-in
attempts per address.

A request over a limit gets a 429 with `Retry-After` and a sentence that says when to try
again; nothing is stored for it. Counters live in memory by default (one process: the
gunicorn setup runs one worker), or in the storage `WEBBOT_RATE_LIMIT_STORAGE` names
(for example `redis://host:6379`) when several processes must share them.
"""

import math
import time

from flask import Flask, g, request, session
from flask_limiter import Limiter, RateLimitExceeded
from flask_login import current_user
from limits import parse

from web import error_response, user_owner


def client_key() -> str:
    """Whom a request counts against: the signed-in user (page or API key), else the browser session, else
    the address."""
    if current_user and current_user.is_authenticated:
        return user_owner(current_user.id)
    if g.get("api_user"):
        return user_owner(g.api_user["id"])
    owner = session.get("owner")
    return f"session:{owner}" if owner else address_key()


def address_key() -> str:
    """The client's address (the real one behind WEBBOT_PROXY_HOPS proxies)."""
    return f"address:{request.remote_addr}"


# endpoint -> (setting that holds its limit, what the limit counts, whom it counts against)
LIMITED = {
    "messages.send_message": ("WEBBOT_RATE_MESSAGES", "messages", client_key),
    "messages.edit_message": ("WEBBOT_RATE_MESSAGES", "messages", client_key),
    "messages.regenerate": ("WEBBOT_RATE_MESSAGES", "messages", client_key),
    "messages.continue_reply": ("WEBBOT_RATE_MESSAGES", "messages", client_key),
    "messages.generate_title": ("WEBBOT_RATE_MESSAGES", "messages", client_key),
    "api.chat_completions": ("WEBBOT_RATE_MESSAGES", "messages", client_key),
    "page_transcription": ("WEBBOT_RATE_TRANSCRIPTIONS", "recordings", client_key),
    "api.audio_transcriptions": ("WEBBOT_RATE_TRANSCRIPTIONS", "recordings", client_key),
    # Guessing passwords from many sessions is still one address; sign-up shares the budget.
    "auth.signin": ("WEBBOT_RATE_SIGNIN", "sign-in attempts", address_key),
    "auth.signup": ("WEBBOT_RATE_SIGNIN", "sign-in attempts", address_key),
}


def init_rate_limits(app: Flask) -> Limiter:
    """Apply the configured limits to the registered views; returns the limiter."""
    # No headers_enabled: it would stamp its own Retry-After on every response, 503s included.
    limiter = Limiter(client_key, app=app, storage_uri=app.config["WEBBOT_RATE_LIMIT_STORAGE"],
                      strategy="moving-window")
    for endpoint, (setting, counted, key) in LIMITED.items():
        value = app.config[setting]
        if value == "off":
            continue
        try:
            parse(value)
        except ValueError:
            raise ValueError(f"{setting} must be a rate such as 30/minute or 500/hour, or off; not {value!r}") from None
        only_posts = endpoint.startswith("auth.")  # showing the form is free; sending it counts
        # Shared by scope: messages sent from the page and through the API draw on one allowance.
        app.view_functions[endpoint] = limiter.shared_limit(value, scope=counted, key_func=key,
                                                            methods=["POST"] if only_posts else None)(
            app.view_functions[endpoint])

    @app.errorhandler(RateLimitExceeded)
    def too_many(exc: RateLimitExceeded):
        current = limiter.current_limit
        wait = max(1, math.ceil(current.reset_at - time.time())) if current else 60
        counted = LIMITED.get(request.endpoint, (None, "requests", None))[1]
        message = f"Too many {counted}: the limit is {exc.limit.limit}. Try again in {wait} seconds."
        return error_response(429, message, "rate_limit_error", "rate_limited", {"Retry-After": str(wait)})

    return limiter
