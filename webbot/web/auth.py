"""Who may use the app, chosen by WEBBOT_AUTH.

- `open`: anyone who can reach the server; each browser keeps its own conversations.
- `password`: one shared password (WEBBOT_PASSWORD), for a household; each browser still
  keeps its own conversations. Changing the password signs every browser out.
- `accounts`: people sign in with their own name and password (Flask-Login); each user's
  conversations are theirs alone. WEBBOT_SIGNUP=open lets strangers make accounts; the
  default `closed` leaves that to `flask --app app users create` and the admin page.

A gate before every page route sends signed-out browsers to /signin, and the page's JSON
routes answer 401 with a sentence. The /v1 API and /metrics never use the browser
session: they take `Authorization: Bearer <key>` with WEBBOT_API_KEY, or a user's own key
(accounts), or the shared password (password).
"""

import hashlib
import hmac
from urllib.parse import urlsplit

from flask import Flask, current_app, g, redirect, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user

from webbot import config as settings
from webbot.web.errors import ApiError, error_response
from webbot.web.owners import address_owner, user_owner
from webbot.web.services import services

# Reachable signed out: the sign-in pages, static files, the health check; /v1 and /metrics check keys instead.
PUBLIC_ENDPOINTS = {"static", "pages.healthz", "pages.metrics", "pages.openapi_description", "auth.signin",
                    "auth.signup", "auth.signout"}


class Account(UserMixin):
    """A signed-in user as Flask-Login sees them. The id carries the session version, so a
    password change or a disabled account ends every session made before it."""

    def __init__(self, row: dict):
        self.row = row
        self.id = row["id"]
        self.name = row["name"]
        self.is_admin = bool(row["is_admin"])

    def get_id(self) -> str:
        return f"{self.id}:{self.row['session_version']}"


def password_fingerprint(app: Flask) -> str:
    """What a browser signed in with the shared password holds: changes when the password does."""
    return hmac.new(app.secret_key, app.config["WEBBOT_PASSWORD"].encode(), hashlib.sha256).hexdigest()


def signed_in() -> bool:
    """Whether this browser may use the pages under the configured mode."""
    mode = current_app.config["WEBBOT_AUTH"]
    if mode == "open":
        return True
    if mode == "password":
        return hmac.compare_digest(session.get("household", ""), password_fingerprint(current_app))
    return current_user.is_authenticated


def safe_next(target: str | None) -> str:
    """A same-site path to go to after signing in; anything else (another host, //evil, control characters or
    backslashes that browsers read as slashes) becomes /."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if "\\" in target or any(ord(char) < 33 or ord(char) == 127 for char in target):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def init_auth(app: Flask, users) -> LoginManager:
    """Flask-Login around the users store, and the gate in front of every page route."""
    mode, signup = app.config["WEBBOT_AUTH"], app.config["WEBBOT_SIGNUP"]
    if mode not in settings.AUTH_MODES:
        raise ValueError(f"WEBBOT_AUTH must be one of {', '.join(settings.AUTH_MODES)}, not {mode!r}")
    if signup not in settings.SIGNUPS:
        raise ValueError(f"WEBBOT_SIGNUP must be one of {', '.join(settings.SIGNUPS)}, not {signup!r}")
    if mode == "password" and not app.config["WEBBOT_PASSWORD"]:
        raise ValueError("WEBBOT_AUTH=password needs the shared password in WEBBOT_PASSWORD.")
    manager = LoginManager(app)
    manager.login_view = "auth.signin"

    @manager.user_loader
    def load_user(ident: str):
        if mode != "accounts":
            return None
        user_id, _, version = ident.partition(":")
        row = users.get(int(user_id)) if user_id.isdigit() else None
        if row is None or row["disabled"] or str(row["session_version"]) != version:
            return None  # deleted, disabled or signed out elsewhere: out at once
        return Account(row)

    @app.before_request
    def gate():
        if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS or request.blueprint == "api":
            return None
        if signed_in():
            return None
        if request.path.startswith("/api/") or request.method != "GET":
            return error_response(401, "You are signed out; sign in again (reload the page).", "authentication_error",
                                  "signed_out")
        target = request.full_path if request.query_string else request.path
        return redirect(url_for("auth.signin", next=target))

    @app.context_processor
    def auth_context():
        return {"auth_mode": mode, "signup_open": mode == "accounts" and signup == "open"}

    return manager


def bearer_token() -> str:
    """The key in `Authorization: Bearer <key>`, or ''."""
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


def _server_key(token: str) -> bool:
    key = current_app.config["WEBBOT_API_KEY"]
    return bool(key) and hmac.compare_digest(token.encode(), key.encode())


def check_api_key() -> None:
    """Let a /v1 request through, or raise a 401 that says which key to send.

    Sets `g.api_owner`, whose cached prompts the request may reuse: the user of a personal
    key, the server's key, or else (the shared password, or no key in open mode) the
    client's address. Wrong keys count against the address (`key_guard`): past the limit
    every key from there gets a 429 until the window moves, the right one too, so guessing
    learns nothing more.
    """
    config = current_app.config
    mode, key = config["WEBBOT_AUTH"], config["WEBBOT_API_KEY"]
    guard = current_app.extensions["webbot_key_guard"]
    token = bearer_token()
    if mode == "open" and not key:
        g.api_owner = address_owner()
        return
    if token:
        guard.check()
        if _server_key(token):
            g.api_owner = "key:server"
            return
        if mode == "password" and hmac.compare_digest(token.encode(), config["WEBBOT_PASSWORD"].encode()):
            g.api_owner = address_owner()
            return
        if mode == "accounts":
            user = services().users.user_for_key(token)
            if user is not None:
                g.api_user = user
                g.api_owner = user_owner(user["id"])
                return
        guard.failed()
    accepted = {
        "open": "your WEBBOT_API_KEY",
        "password": "the server's password or its WEBBOT_API_KEY",
        "accounts": "a key made on your account page (or the server's WEBBOT_API_KEY)",
    }[mode]
    raise ApiError(401, f"Missing or wrong API key; send the header Authorization: Bearer <{accepted}>.",
                   "invalid_api_key", {"WWW-Authenticate": "Bearer"})


def check_metrics_key() -> None:
    """Let a /metrics scrape through with the server's WEBBOT_API_KEY, its WEBBOT_METRICS_KEY (a key for a
    scraper that opens nothing else) or an admin's key; nobody else.

    Without any of them configured, /metrics does not exist (404 with a sentence).
    """
    config = current_app.config
    scrape_key = config["WEBBOT_METRICS_KEY"]
    if not config["WEBBOT_API_KEY"] and not scrape_key and config["WEBBOT_AUTH"] != "accounts":
        raise ApiError(404, "Metrics are off on this server: set WEBBOT_METRICS_KEY (or WEBBOT_API_KEY) and scrape "
                            "/metrics with the header Authorization: Bearer <that key>.", "metrics_off")
    token = bearer_token()
    if token:
        guard = current_app.extensions["webbot_key_guard"]
        guard.check()
        if _server_key(token) or (scrape_key and hmac.compare_digest(token.encode(), scrape_key.encode())):
            return
        if config["WEBBOT_AUTH"] == "accounts":
            user = services().users.user_for_key(token)
            if user is not None:
                if user["is_admin"]:
                    return
                raise ApiError(403, "Only the server's WEBBOT_METRICS_KEY or WEBBOT_API_KEY, or an admin's key, may "
                                    "read /metrics.", "not_admin")
        guard.failed()
    raise ApiError(401, "Missing or wrong API key; scrape /metrics with the header Authorization: Bearer <the "
                        "server's WEBBOT_METRICS_KEY or WEBBOT_API_KEY, or an admin's key>.", "invalid_api_key",
                   {"WWW-Authenticate": "Bearer"})
