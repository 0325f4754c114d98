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

from validation import BadInput
from web import error_response

MODES = ("open", "password", "accounts")
SIGNUPS = ("closed", "open")
# Reachable signed out: the sign-in pages, static files, the health check; /v1 and /metrics check keys instead.
PUBLIC_ENDPOINTS = {"static", "healthz", "metrics", "openapi_description", "auth.signin", "auth.signup", "auth.signout"}


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
    """A same-site path to go to after signing in; anything else (another host, //evil) becomes /."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def init_auth(app: Flask, users) -> LoginManager:
    """Flask-Login around the users store, and the gate in front of every page route."""
    mode, signup = app.config["WEBBOT_AUTH"], app.config["WEBBOT_SIGNUP"]
    if mode not in MODES:
        raise ValueError(f"WEBBOT_AUTH must be one of {', '.join(MODES)}, not {mode!r}")
    if signup not in SIGNUPS:
        raise ValueError(f"WEBBOT_SIGNUP must be one of {', '.join(SIGNUPS)}, not {signup!r}")
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


def check_api_key() -> None:
    """Let a /v1 (or /metrics) request through, or raise a 401 that says which key to send."""
    config = current_app.config
    mode, key = config["WEBBOT_AUTH"], config["WEBBOT_API_KEY"]
    if mode == "open" and not key:
        return
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if token:
        if key and hmac.compare_digest(token.encode(), key.encode()):
            return
        if mode == "password" and hmac.compare_digest(token.encode(), config["WEBBOT_PASSWORD"].encode()):
            return
        if mode == "accounts":
            user = current_app.extensions["webbot"].users.user_for_key(token)
            if user is not None:
                g.api_user = user
                return
    accepted = {
        "open": "your WEBBOT_API_KEY",
        "password": "the server's password or its WEBBOT_API_KEY",
        "accounts": "a key made on your account page (or the server's WEBBOT_API_KEY)",
    }[mode]
    raise BadInput(401, f"Missing or wrong API key; send the header Authorization: Bearer <{accepted}>.",
                   "invalid_api_key", {"WWW-Authenticate": "Bearer"})
