"""Errors as the clients see them: `ApiError` for every refusal with a sentence, and the handlers that turn
errors into responses.

Errors are OpenAI-style JSON (`{"error": {"message", "type", "code"}}`) for API clients
and the page's own routes, and an HTML page for browsers asking for pages. A 500 is
always a bug: every refusal the app means is an ApiError with a status and a sentence
that says what to change; a database or Redis that is down is a 503 that says so.
"""

import logging

from flask import Flask, jsonify, render_template, request
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from webbot.model.stream import EngineFailed, ReplyFailed
from webbot.model.upstream import UpstreamError
from webbot.storage.errors import StorageUnavailable

log = logging.getLogger(__name__)
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               429: "rate_limit_error"}  # OpenAI's error types; any other 4xx is an invalid_request_error


class ApiError(Exception):
    """A refusal the app means: HTTP status, a sentence for the person, a machine-readable code, headers."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


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


def register_error_handlers(app: Flask) -> None:
    """Every error the app can meet, as a response with a sentence."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        sentences = {
            404: "Nothing is here; check the address.",
            405: f"{request.method} is not allowed here.",
            413: f"The request is too large; send at most "
                 f"{(request.max_content_length or app.config['WEBBOT_MAX_REQUEST_BYTES']) // 1024} KB.",
        }
        default = sentences.get(exc.code, exc.description)
        message = exc.description if exc.description and exc.description != type(exc).description else default
        kind = "not_found_error" if exc.code == 404 else "invalid_request_error"
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(exc.code, message, kind, headers=headers)

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.message, ERROR_TYPES.get(exc.status, "invalid_request_error"),
                              exc.code, exc.headers)

    @app.errorhandler(UpstreamError)
    def upstream_failed(exc: UpstreamError):
        headers = {"Retry-After": "5"} if exc.status == 503 else {}
        return error_response(exc.status, exc.sentence, "upstream_error", exc.code, headers)

    @app.errorhandler(ReplyFailed)
    def reply_failed(exc: ReplyFailed):  # a GPU that failed (at submit, or for a reply read whole) or no usable token
        headers = {"Retry-After": "60"} if isinstance(exc, EngineFailed) else {}  # a fresh process is on its way
        return error_response(503, str(exc), "server_error", "model_failed", headers)

    @app.errorhandler(StorageUnavailable)
    def database_down(exc: StorageUnavailable):
        log.warning("database unreachable on %s %s: %s", request.method, request.path, exc.__cause__ or exc)
        return error_response(503, "The database cannot be reached right now, so nothing was changed; try again "
                                   "in a few seconds.", "server_error", "database_unavailable", {"Retry-After": "5"})

    @app.errorhandler(RedisError)
    def redis_down(exc: Exception):
        log.warning("Redis unreachable on %s %s: %s", request.method, request.path, exc)
        return error_response(503, "Redis (sessions, and which replica writes which reply) cannot be reached right "
                                   "now; try again in a few seconds.", "server_error", "session_store_unavailable",
                              {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def server_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Something went wrong on the server; the error is in its log.", "server_error")
