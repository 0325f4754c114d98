"""Protections for a server exposed to strangers: CSRF tokens on the page's writes, security headers.

Every state-changing page route needs the page's CSRF token (Flask-WTF), which the page
sends in the `X-CSRFToken` header; the `/v1` API is exempt because it authenticates with
bearer keys, not cookies. Every response carries a Content-Security-Policy that allows
only the app's own scripts (none inline), styles and connections, plus nosniff, a strict
referrer policy and a ban on framing.
"""

from flask import Flask
from flask_wtf.csrf import CSRFError, CSRFProtect

from webbot.web.errors import error_response

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "media-src 'self' blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def init_security(app: Flask, api_blueprint) -> CSRFProtect:
    """CSRF protection for the page routes (not the API) and security headers on every response."""
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid as long as the session: a tab left open works
    # Over HTTPS Flask-WTF would also demand a same-origin Referer. The token (secret, bound to
    # the session) is the protection; a Referer rule only breaks clients and proxies that strip it.
    app.config.setdefault("WTF_CSRF_SSL_STRICT", False)
    csrf = CSRFProtect(app)
    csrf.exempt(api_blueprint)

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError):
        return error_response(400, "The page's security token is missing or has expired; reload the page and try "
                                   "again.", "invalid_request_error", "csrf_failed")

    @app.after_request
    def security_headers(response):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return csrf
