"""Server-side sessions (Flask-Session) for signed-in browsers: files in the data dir for one server, Redis for
several replicas. Visitors who have not signed in keep theirs in a signed cookie (`visitors.py`).

Stored sessions expire: Redis by itself, files by a sweep every SWEEP_S. At most
WEBBOT_MAX_SESSIONS files are kept; past that the least recently used are removed, which
signs their browsers out (no session owns conversations, so nothing is lost). With
WEBBOT_REDIS_URL set, every replica reads and writes the same sessions, so a load
balancer may send any request anywhere. When Redis cannot be reached, a request that
carries a session answers 503 with a sentence (before any view runs, so nothing is
half-done) instead of a 500, and the app carries on by itself once Redis is back.
"""

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

from cachelib import FileSystemCache
from flask import Flask, request
from flask_session import Session
from flask_session.redis import RedisSessionInterface

from webbot.web.errors import ApiError
from webbot.web.visitors import SplitSessions, set_owner_cookie

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0  # a Redis that is down fails a request in seconds
SESSION_LIFETIME = timedelta(days=90)
SWEEP_S = 3600.0  # how often expired session files are removed
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


class ExpiringFiles:
    """Removes expired session files every SWEEP_S, from whichever request comes along (in a thread)."""

    def __init__(self, cache: FileSystemCache):
        self.cache = cache
        self.next_sweep = 0.0
        self._lock = threading.Lock()

    def sweep(self) -> None:
        """Remove the expired files now."""
        # cachelib's own pass over the files, which it otherwise runs only when over its threshold
        self.cache._remove_expired(time.time())

    def maybe_sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self.next_sweep:
                return
            self.next_sweep = now + SWEEP_S
        threading.Thread(target=self.sweep, name="session-sweep", daemon=True).start()


def init_sessions(app: Flask, data_dir: Path, redis=None) -> None:
    """Signed-in sessions in Redis when a client is given, else in files under the data dir; visitors' in cookies."""
    app.config.update(
        # Session ids are 32 random bytes (Flask-Session's default), so they need no signature.
        SESSION_PERMANENT=True, PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        SESSION_COOKIE_NAME="webbot_session", SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
    )
    app.after_request(set_owner_cookie)
    if redis is None:
        cache = FileSystemCache(str(data_dir / "sessions"), threshold=app.config["WEBBOT_MAX_SESSIONS"])
        app.config.update(SESSION_TYPE="cachelib", SESSION_CACHELIB=cache)
        Session(app)
        app.session_interface = SplitSessions(app.session_interface)
        files = app.extensions["webbot_session_files"] = ExpiringFiles(cache)
        app.before_request(files.maybe_sweep)
        return
    app.session_interface = SplitSessions(TolerantRedisSessions(app, client=redis, key_prefix="webbot:session:"))

    @app.before_request
    def refuse_without_sessions():
        if request.environ.get(_DOWN):
            raise ApiError(503, "The session store (Redis) cannot be reached, so this server cannot tell who you "
                                "are; try again in a few seconds.", "session_store_unavailable",
                           {"Retry-After": "5"})
