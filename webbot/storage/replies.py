"""Which conversations have a reply being written, so Stop finds it and a second send gets 409.

`LocalReplies` keeps them in this process (one server). `RedisReplies` (WEBBOT_REDIS_URL)
shares them between replicas: a key per conversation says a reply is running and which
replica runs it, kept alive while it streams and gone when it ends (or when its replica
dies, after KEY_TTL_S). Stop on any replica sets a stop key; the replica that writes the
reply sees it within POLL_S and cancels the generation. A page whose connection dropped
marks the conversation as still watched (`seen`) while it polls for the reply, so the
writer keeps going until nobody has looked for a while. No Flask imports.
"""

import logging
import secrets
import threading
import time

log = logging.getLogger(__name__)

KEY_TTL_S = 30  # a crashed replica's claims expire after this
REFRESH_S = 10  # a live replica renews its claims this often
POLL_S = 0.2  # how often a replica looks for stop requests for the replies it writes
STOP_TTL_S = 60
# Delete the claim only when it is still ours (a late release must not drop another replica's claim).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1], KEYS[2]) end return 0"


class LocalReplies:
    """The reply being generated for each conversation, in this process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._streams = {}
        self._seen: dict[str, float] = {}

    def seen(self, conversation_id: str, for_s: float) -> None:
        """Someone is looking at this conversation's reply; it counts as watched for `for_s` seconds."""
        with self._lock:
            self._seen[conversation_id] = time.monotonic() + for_s
            if len(self._seen) > 10_000:
                now = time.monotonic()
                self._seen = {k: v for k, v in self._seen.items() if v > now}

    def watched(self, conversation_id: str) -> bool:
        """Whether someone looked at this conversation's reply recently (see `seen`)."""
        with self._lock:
            return self._seen.get(conversation_id, 0.0) > time.monotonic()

    def claim(self, conversation_id: str, stream) -> bool:
        """Register a reply; False when the conversation already has one running."""
        with self._lock:
            if conversation_id in self._streams:
                return False
            self._streams[conversation_id] = stream
            return True

    def release(self, conversation_id: str, stream) -> None:
        """Forget a finished reply."""
        with self._lock:
            if self._streams.get(conversation_id) is stream:
                del self._streams[conversation_id]

    def get(self, conversation_id: str):
        """The running reply of a conversation (something with `cancel()`), or None."""
        with self._lock:
            return self._streams.get(conversation_id)

    def live(self) -> set[str]:
        """Conversations with a reply running anywhere (here: in this process)."""
        with self._lock:
            return set(self._streams)


class _StopElsewhere:
    """A reply written by another replica: cancelling it asks that replica to stop."""

    def __init__(self, redis, conversation_id: str):
        self.redis, self.conversation_id = redis, conversation_id

    def cancel(self) -> None:
        self.redis.set(RedisReplies.stop_key(self.conversation_id), 1, ex=STOP_TTL_S)


class RedisReplies(LocalReplies):
    """Replies in progress shared through Redis by every replica."""

    def __init__(self, redis):
        super().__init__()
        self.redis = redis
        self.token = secrets.token_hex(8)  # this replica
        self._release = redis.register_script(_RELEASE)
        self._watcher: threading.Thread | None = None

    @staticmethod
    def key(conversation_id: str) -> str:
        return f"webbot:reply:{conversation_id}"

    @staticmethod
    def stop_key(conversation_id: str) -> str:
        return f"webbot:stop:{conversation_id}"

    def seen(self, conversation_id: str, for_s: float) -> None:
        self.redis.set(f"webbot:seen:{conversation_id}", 1, px=max(1, int(for_s * 1000)))

    def watched(self, conversation_id: str) -> bool:
        try:
            return bool(self.redis.exists(f"webbot:seen:{conversation_id}"))
        except Exception:  # Redis is down: keep writing; the reply is stored either way
            return True

    def claim(self, conversation_id: str, stream) -> bool:
        self.redis.delete(self.stop_key(conversation_id))  # an old stop must not end the new reply
        if not self.redis.set(self.key(conversation_id), self.token, nx=True, ex=KEY_TTL_S):
            return False
        if not super().claim(conversation_id, stream):
            return False
        self._watch()
        return True

    def release(self, conversation_id: str, stream) -> None:
        mine = super().get(conversation_id) is stream
        super().release(conversation_id, stream)
        if mine:
            try:
                self._release(keys=[self.key(conversation_id), self.stop_key(conversation_id)], args=[self.token])
            except Exception:  # Redis is down: the claim expires by itself after KEY_TTL_S
                log.warning("could not release the reply claim of %s in Redis", conversation_id, exc_info=True)

    def get(self, conversation_id: str):
        here = super().get(conversation_id)
        if here is not None:
            return here
        if self.redis.exists(self.key(conversation_id)):
            return _StopElsewhere(self.redis, conversation_id)
        return None

    def live(self) -> set[str]:
        prefix = self.key("")
        return {key.decode().removeprefix(prefix) if isinstance(key, bytes) else key.removeprefix(prefix)
                for key in self.redis.scan_iter(match=prefix + "*")}

    def _watch(self) -> None:
        """Start the thread that renews this replica's claims and carries out stop requests."""
        with self._lock:
            if self._watcher is not None:
                return
            self._watcher = threading.Thread(target=self._run, daemon=True, name="reply-watcher")
        self._watcher.start()

    def _run(self) -> None:
        renewed = time.monotonic()
        while True:
            time.sleep(POLL_S)
            with self._lock:
                running = dict(self._streams)
            if not running:
                continue
            try:
                ids = list(running)
                pipe = self.redis.pipeline(transaction=False)
                for conversation_id in ids:
                    pipe.exists(self.stop_key(conversation_id))
                stops = pipe.execute()
                for conversation_id, stop in zip(ids, stops, strict=True):
                    if stop:
                        running[conversation_id].cancel()
                if time.monotonic() - renewed >= REFRESH_S:
                    pipe = self.redis.pipeline(transaction=False)
                    for conversation_id in ids:
                        pipe.expire(self.key(conversation_id), KEY_TTL_S)
                    pipe.execute()
                    renewed = time.monotonic()
            except Exception:
                log.warning("could not reach Redis to check for stop requests", exc_info=True)
                time.sleep(1)
