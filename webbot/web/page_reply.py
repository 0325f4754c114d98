"""One reply written for the chat page: its server-sent events, storing it while it streams, and what happens
when the page's connection drops.

Events: `start` (the stored messages and the memory gauge), `queue` (where the reply
waits while others are written), `token` (text, and now and then the Markdown so far as
sanitised HTML), then `done` or `error`. Text is saved before it is sent, at most every
PARTIAL_SAVE_S (the pieces that arrive meanwhile are sent together after the next save), so
what the page has shown is always what a crash leaves stored. When the connection drops
without a Stop, the reply goes on for as long as the page keeps looking for it (it polls
the conversation, which marks it watched for `grace_s`); nobody looking for `grace_s` means
the tab is gone, and the reply stops there, keeping what was written.
"""

import logging
import threading
import time

from webbot import config
from webbot.model.stream import ReplyFailed
from webbot.model.upstream import UpstreamError
from webbot.storage.errors import StorageUnavailable
from webbot.web.rendering import render_markdown
from webbot.web.streaming import pieces, sse

log = logging.getLogger(__name__)
HTML_EVERY_S = 0.25  # how often a streaming reply's Markdown is re-rendered for the page
QUEUE_POLL_S = 1.0  # how often a waiting reply's place in the queue is looked up
SAVE_RETRY_S, SAVE_RETRY_FOR_S = 2.0, 600.0  # a finished reply waits this long for a database that is down
ORPHAN_POLL_S = 0.25


def save_when_back(store, message_id: int, text: str, status: str) -> None:
    """Keep trying to store a finished reply (every SAVE_RETRY_S, for up to SAVE_RETRY_FOR_S) in a thread."""
    def retry():
        deadline = time.monotonic() + SAVE_RETRY_FOR_S
        while time.monotonic() < deadline:
            time.sleep(SAVE_RETRY_S)
            try:
                store.finish_message(message_id, text, status)
                log.info("reply %s saved after the database came back", message_id)
                return
            except StorageUnavailable:
                continue
        log.error("reply %s could not be saved: the database stayed unreachable", message_id)

    threading.Thread(target=retry, daemon=True, name="save-when-back").start()


def final_status(stream) -> str:
    """How a finished stream is stored."""
    if stream.finish_reason == "error":
        return "interrupted" if isinstance(stream.error, UpstreamError) else "error"
    return {"cancelled": "stopped", "length": "length"}.get(stream.finish_reason, "complete")


class PageReply:
    """Writes one streamed reply into its stored message (`reply`), after `prefix` when it continues one."""

    def __init__(self, services, conversation_id: str, reply: dict, stream, grace_s: float, prefix: str = ""):
        self.services, self.conversation_id, self.reply, self.stream = services, conversation_id, reply, stream
        self.grace_s, self.prefix = grace_s, prefix
        self.status: str | None = None  # set once, when the final text is stored
        self._lock = threading.Lock()

    @property
    def text(self) -> str:
        """The reply's whole text so far."""
        return self.prefix + self.stream.text

    def save_partial(self, text: str | None = None) -> None:
        """Store `text` (by default all so far); the reply stays 'streaming'."""
        try:
            self.services.store.finish_message(self.reply["id"], self.text if text is None else text, "streaming")
        except StorageUnavailable:  # the database is down for a moment: the final save tries again
            log.warning("could not save the partial reply %s", self.reply["id"])

    def finish(self, status: str) -> None:
        """Store the final text and status, once."""
        with self._lock:
            if self.status is not None:
                return
            self.status = status
        try:
            self.services.store.finish_message(self.reply["id"], self.text, status)
        except StorageUnavailable:  # the database is down: the reply lands when it is back
            log.warning("database unreachable; reply %s will be saved when it returns", self.reply["id"])
            save_when_back(self.services.store, self.reply["id"], self.text, status)

    def events(self, start: dict, view, gauge):
        """The event stream; `view(message)` shapes the stored message for `done`, `gauge()` counts memory."""
        yield sse(start, "start")
        bot, stream = self.services.bot, self.stream
        started = time.monotonic()
        last_html = last_save = last_beat = started - config.PARTIAL_SAVE_S
        last_place = started - QUEUE_POLL_S  # a waiting reply says its place at once
        # `sent`: what the page has (all saved); `held`: arrived, not yet saved nor sent
        sent, held, place = self.prefix, "", None
        for piece in pieces(stream, config.PARTIAL_SAVE_S):
            now = time.monotonic()
            if piece is not None:
                held += piece
            else:
                if stream.first_token_at is None and now - last_place >= QUEUE_POLL_S:
                    last_place, position_now = now, bot.queue_position(stream)
                    if position_now != place:
                        place = position_now
                        yield sse({"position": place[0], "running": place[1]}, "queue")
                if now - last_beat >= config.STREAM_HEARTBEAT_S:
                    last_beat = now
                    yield ": waiting for the model\n\n"
            if held and now - last_save >= config.PARTIAL_SAVE_S:
                sent, event, held, last_save = sent + held, {"text": held}, "", now
                self.save_partial(sent)
                if now - last_html >= HTML_EVERY_S:
                    event["html"], last_html = render_markdown(sent), now
                yield sse(event, "token")
        status = final_status(stream)
        self.finish(status)
        if held:  # stored with the final text just now
            yield sse({"text": held}, "token")
        # Free the conversation before the page hears `done`, so a reload right after it sees the reply as final.
        self.services.replies.release(self.conversation_id, stream)
        if status == "interrupted":  # the model server went away: keep what came
            yield sse({"message": f"{stream.error.sentence} What arrived is kept.", "code": stream.error.code,
                       "status": "interrupted"}, "error")
        elif status == "error":
            said = isinstance(stream.error, ReplyFailed)  # a sentence for the person (the GPU failed, say)
            yield sse({"message": str(stream.error) if said else
                       "The model failed while writing this reply; the error is in the server log."}, "error")
        else:
            yield sse({"message": view({**self.reply, "content": self.text, "status": status}),
                       "finish_reason": stream.finish_reason, "usage": stream.usage(), "memory": gauge()}, "done")

    def on_close(self) -> None:
        """The response ended: normally, or because the page's connection dropped."""
        if self.status is not None or self.stream.done or self.grace_s <= 0:
            self.stream.cancel()  # no effect once finished; halts generation when the client left early
            self._end()
            return
        self.services.replies.seen(self.conversation_id, self.grace_s)
        threading.Thread(target=self._orphaned, daemon=True, name="orphaned-reply").start()

    def _orphaned(self) -> None:
        """Go on writing while the page looks for the reply; stop when nobody has for `grace_s`."""
        last_save = time.monotonic()
        while not self.stream.done:
            if self.status is None and not self.services.replies.watched(self.conversation_id):
                log.info("nobody is waiting for reply %s any more; stopping it", self.reply["id"])
                self.stream.cancel()
                break
            if time.monotonic() - last_save >= config.PARTIAL_SAVE_S:
                last_save = time.monotonic()
                self.save_partial()
            time.sleep(ORPHAN_POLL_S)
        deadline = time.monotonic() + 10
        while not self.stream.done and time.monotonic() < deadline:  # a cancel lands before the next step
            time.sleep(0.02)
        self._end()

    def _end(self) -> None:
        self.finish(final_status(self.stream) if self.stream.done else "stopped")
        self.services.replies.release(self.conversation_id, self.stream)
