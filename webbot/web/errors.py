"""Helpers shared by the page routes and the API: whose conversations a request sees, and error responses.

Errors are OpenAI-style JSON (`{"error": {"message", "type", "code"}}`) for API clients
and the page's own routes, and an HTML page for browsers asking for pages.
"""

from flask import jsonify, render_template, request
from flask_login import current_user

from webbot.web.visitors import browser_owner


def current_owner() -> str:
    """Whose conversations this request sees: the signed-in user's, else this browser's (its owner cookie,
    made on its first request)."""
    if current_user and current_user.is_authenticated:
        return user_owner(current_user.id)
    return browser_owner()


def address_owner() -> str:
    """The owner of what a client without a key of its own sends to /v1: its address."""
    return f"address:{request.remote_addr}"


def user_owner(user_id: int) -> str:
    """The owner id of a signed-in user's conversations (anonymous browsers have random hex ids)."""
    return f"user:{user_id}"


def wants_json() -> bool:
    """API clients get JSON errors; browsers asking for pages get HTML."""
    if request.path.startswith(("/api/", "/v1/", "/healthz", "/metrics")):
        return True
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "application/json"


def error_response(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                   headers: dict | None = None):
    """An error as JSON or as a page, by what the client asked for."""
    if wants_json():
        body = jsonify(error={"message": message, "type": kind, "code": code})
    else:
        body = render_template("error.html", status=status, message=message)
    return body, status, headers or {}
