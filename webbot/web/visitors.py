"""Who a browser is before it signs in, with no state on the server: a durable owner cookie and a visitor cookie.

- The owner cookie (`webbot_owner`) names whose conversations a browser sees in the
  `open` and `password` modes: a random id, signed with the app's secret key, kept for
  400 days (the longest browsers keep a cookie). The database knows the id (conversations
  carry it), so clearing or losing the session store loses nobody's conversations, and
  signing out of the shared password and in again brings them back.
- A visitor who has not signed in keeps their session (the page's CSRF token) in a
  signed cookie (`webbot_visitor`, Flask's own cookie sessions). Only a signed-in browser
  (an account, or the household password) has a session stored on the server
  (Flask-Session: files in the data dir, or Redis), under a new random id made at sign-in.
  So anonymous traffic writes nothing on the server and cannot push anyone out.
- Sessions stored by earlier versions for visitors move into the cookies on their next
  request: their owner into the owner cookie, the rest into the visitor cookie.
"""

import uuid

from flask import current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface, SessionInterface
from flask_session.base import ServerSideSession
from itsdangerous import BadSignature, URLSafeSerializer

OWNER_COOKIE = "webbot_owner"
OWNER_MAX_AGE_S = 400 * 24 * 3600
VISITOR_COOKIE = "webbot_visitor"
SIGNED_IN_KEYS = ("_user_id", "household")  # what Flask-Login and the household password put in a session


def _owner_signer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.secret_key, salt="webbot-owner")


def known_owner() -> str | None:
    """This browser's owner id if it has one already (from its cookie, or a session stored before the cookie)."""
    if "owner" in g:
        return g.owner
    value = request.cookies.get(OWNER_COOKIE)
    if value:
        try:
            owner = _owner_signer().loads(value)
        except BadSignature:
            owner = None
        if isinstance(owner, str) and owner:
            return owner
    legacy = session.get("owner")
    return legacy if isinstance(legacy, str) and legacy else None


def browser_owner() -> str:
    """This browser's owner id; a new one is made on its first request. The cookie goes out with the response."""
    if "owner" in g:
        return g.owner
    owner = known_owner()
    if owner is None or request.cookies.get(OWNER_COOKIE) is None or "owner" in session:
        owner = owner or uuid.uuid4().hex
        session.pop("owner", None)  # a session from before the cookie: the cookie holds it from now on
        g.owner_cookie_due = True
    g.owner = owner
    return owner


def set_owner_cookie(response):
    """After a request that made (or moved) the owner id: send the signed owner cookie."""
    if g.get("owner_cookie_due"):
        response.set_cookie(OWNER_COOKIE, _owner_signer().dumps(g.owner), max_age=OWNER_MAX_AGE_S, httponly=True,
                            samesite="Lax", secure=current_app.config["SESSION_COOKIE_SECURE"], path="/")
    return response


class VisitorCookies(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, under the visitor cookie's own name."""

    salt = "webbot-visitor"

    def get_cookie_name(self, app) -> str:
        return VISITOR_COOKIE


class SplitSessions(SessionInterface):
    """A visitor's session in a signed cookie; a signed-in browser's on the server (`server`, Flask-Session)."""

    def __init__(self, server):
        self.server = server
        self.visitor = VisitorCookies()

    def open_session(self, app, request):
        if request.cookies.get(app.config["SESSION_COOKIE_NAME"]):
            stored = self.server.open_session(app, request)
            if stored:  # found on the server: signed in (or a visitor's session from an earlier version)
                return stored
        session = self.visitor.open_session(app, request)
        if session is not None and not session.permanent:
            session.permanent = True  # the CSRF token lives as long as a tab may stay open
        return session

    def save_session(self, app, session, response) -> None:
        signed_in = any(key in session for key in SIGNED_IN_KEYS)
        if isinstance(session, ServerSideSession):
            if signed_in or not session:  # still signed in, or signed out (cleared): the server's to write
                self.server.save_session(app, session, response)
                return
            # A visitor's session stored by an earlier version: into the visitor cookie, off the server.
            self.server._delete_session(self.server._get_store_id(session.sid))
            response.delete_cookie(app.config["SESSION_COOKIE_NAME"], path=self.get_cookie_path(app))
            moved = self.visitor.session_class(dict(session))
            moved.permanent = True
            self.visitor.save_session(app, moved, response)
            return
        if signed_in:  # just signed in: from now on on the server, under a new random id
            stored = self.server.session_class(dict(session), sid=self.server._generate_sid(self.server.sid_length),
                                               permanent=True)
            stored.modified = True
            self.server.save_session(app, stored, response)
            response.delete_cookie(VISITOR_COOKIE, path=self.get_cookie_path(app))
            return
        if request.cookies.get(app.config["SESSION_COOKIE_NAME"]):  # a server session that is gone (expired)
            response.delete_cookie(app.config["SESSION_COOKIE_NAME"], path=self.get_cookie_path(app))
        self.visitor.save_session(app, session, response)

    def regenerate(self, session) -> None:
        """A new session id at sign-in; a visitor's cookie session gets its new id when it moves to the server."""
        if isinstance(session, ServerSideSession):
            self.server.regenerate(session)
