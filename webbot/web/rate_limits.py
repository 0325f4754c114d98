"""Rate limits (Flask-Limiter): replies and transcriptions per user, browser session or else address; sign-in
attempts and wrong API keys per address.

A request over a limit gets a 429 with `Retry-After` and a sentence that says when to try
again; nothing is stored for it. Counters live in memory by default (one process: the
gunicorn setup runs one worker), or in the storage `WEBBOT_RATE_LIMIT_STORAGE` names
(for example `redis://host:6379`) when several processes must share them.
"""

import math
import time

from flask import Flask, g, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_login import current_user
from limits import parse

from webbot.web.errors import ApiError, error_response
from webbot.web.owners import user_owner
from webbot.web.visitors import known_owner


def client_key() -> str:
    """Whom a request counts against: the signed-in user (page or API key), else the browser session, else
    the address."""
    if current_user and current_user.is_authenticated:
        return user_owner(current_user.id)
    if g.get("api_user"):
        return user_owner(g.api_user["id"])
    owner = known_owner() if request.blueprint != "api" else None  # /v1 never reads the browser's cookies
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
    # The page asks for a title on its own after a first exchange: an allowance of its own (as large as the
    # messages'), so it never spends the person's; at most one title per conversation reaches the model.
    "messages.generate_title": ("WEBBOT_RATE_MESSAGES", "titles", client_key),
    # Notes of turns outside memory: asked for by the page after a reply; their own allowance too.
    "memory_notes.write_notes": ("WEBBOT_RATE_MESSAGES", "notes", client_key),
    "api.chat_completions": ("WEBBOT_RATE_MESSAGES", "messages", client_key),
    "pages.transcription": ("WEBBOT_RATE_TRANSCRIPTIONS", "recordings", client_key),
    "api.audio_transcriptions": ("WEBBOT_RATE_TRANSCRIPTIONS", "recordings", client_key),
    "pages.speech": ("WEBBOT_RATE_SPEECH", "texts spoken", client_key),
    "api.audio_speech": ("WEBBOT_RATE_SPEECH", "texts spoken", client_key),
    "documents.attach": ("WEBBOT_RATE_DOCUMENTS", "files", client_key),
    "api.upload_file": ("WEBBOT_RATE_DOCUMENTS", "files", client_key),
    # Guessing passwords from many sessions is still one address; sign-up shares the budget.
    "auth.signin": ("WEBBOT_RATE_SIGNIN", "sign-in attempts", address_key),
    "auth.signup": ("WEBBOT_RATE_SIGNIN", "sign-in attempts", address_key),
}


class KeyGuard:
    """Wrong bearer keys (on /v1 and /metrics) per address, as many as WEBBOT_RATE_SIGNIN allows sign-ins.

    Past the limit every bearer key from that address gets a 429 until the window moves,
    the right key too: guessing then learns nothing, however fast it asks.
    """

    SCOPE = "wrong-api-keys"

    def __init__(self, limiter: Limiter, rate: str):
        self.limiter, self.rate = limiter, rate
        self.item = None if rate == "off" else parse(rate)

    def check(self) -> None:
        """A 429 with Retry-After when this address has sent too many wrong keys lately."""
        if self.item is None or self.limiter.limiter.test(self.item, self.SCOPE, address_key()):
            return
        stats = self.limiter.limiter.get_window_stats(self.item, self.SCOPE, address_key())
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise ApiError(429, f"Too many wrong API keys from your address: the limit is {self.item}. Try again in "
                            f"{wait} seconds.", "rate_limited", {"Retry-After": str(wait)})

    def failed(self) -> None:
        """Count one wrong key against this address."""
        if self.item is not None:
            self.limiter.limiter.hit(self.item, self.SCOPE, address_key())


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

    app.extensions["webbot_key_guard"] = KeyGuard(limiter, app.config["WEBBOT_RATE_SIGNIN"])

    @app.errorhandler(RateLimitExceeded)
    def too_many(exc: RateLimitExceeded):
        current = limiter.current_limit
        wait = max(1, math.ceil(current.reset_at - time.time())) if current else 60
        counted = LIMITED.get(request.endpoint, (None, "requests", None))[1]
        message = f"Too many {counted}: the limit is {exc.limit.limit}. Try again in {wait} seconds."
        return error_response(429, message, "rate_limit_error", "rate_limited", {"Retry-After": str(wait)})

    return limiter
