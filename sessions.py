"""Server-side sessions (Flask-Session): files in the data dir for one server, Redis for several replicas.

With WEBBOT_REDIS_URL set, every replica reads and writes the same sessions, so a load
balancer may send any request anywhere. When Redis cannot be reached, a request that
carries a session answers 503 with a sentence (before any view runs, so nothing is
half-done) instead of a 500, and the app carries on by itself once Redis is back.
"""

import logging
from datetime import timedelta
from pathlib import Path

from cachelib import FileSystemCache
from flask import Flask, request
from flask_session import Session
from flask_session.redis import RedisSessionInterface

from validation import BadInput

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0  # a Redis that is down fails a request in seconds
_DOWN = "webbot.session_store_down"


def redis_client(url: str):
    """A Redis client with short timeouts, shared by sessions, reply claims and health checks."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
                                health_check_interval=30)


class TolerantRedisSessions(RedisSessionInterface):
    """Flask-Session's Redis sessions, turning an unreachable Redis into a flag the app answers with 503."""

    def open_session(self, app, request):
        import redis

        try:
            return super().open_session(app, request)
        except redis.RedisError as exc:
            log.warning("session store unreachable: %s", exc)
            request.environ[_DOWN] = True
            return self.make_null_session(app)

    def save_session(self, app, session, response):
        import redis

        try:
            super().save_session(app, session, response)
        except redis.RedisError as exc:
            log.warning("could not save a session: %s", exc)


def init_sessions(app: Flask, data_dir: Path, redis=None) -> None:
    """Sessions in Redis when a client is given, else in files under the data dir."""
    app.config.update(
        # Session ids are 32 random bytes (Flask-Session's default), so they need no signature.
        SESSION_PERMANENT=True, PERMANENT_SESSION_LIFETIME=timedelta(days=90),
        SESSION_COOKIE_NAME="webbot_session", SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
    )
    if redis is None:
        app.config.setdefault("SESSION_TYPE", "cachelib")
        app.config.setdefault("SESSION_CACHELIB", FileSystemCache(str(data_dir / "sessions"), threshold=100_000))
        Session(app)
        return
    app.session_interface = TolerantRedisSessions(app, client=redis, key_prefix="webbot:session:")

    @app.before_request
    def refuse_without_sessions():
        if request.environ.get(_DOWN):
            raise BadInput(503, "The session store (Redis) cannot be reached, so this server cannot tell who you "
                                "are; try again in a few seconds.", "session_store_unavailable",
                           {"Retry-After": "5"})
