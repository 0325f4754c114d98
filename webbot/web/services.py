"""The collaborators every request may use, built once by `app.create_app` and reached through one accessor.

Nothing here is a module global: tests build many apps in one process, each with its own
bot, database and sessions, and `services()` finds the current app's.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:  # the types only; importing them here would pull in SQLAlchemy and the speech stack
    from redis import Redis

    from speech import Transcriber
    from webbot.model.bot import Bot
    from webbot.storage.conversations import Store
    from webbot.storage.documents import DocumentStore
    from webbot.storage.replies import LocalReplies
    from webbot.storage.users import Users
    from webbot.voice.speaker import Speaker

EXTENSION = "webbot"


@dataclass
class Services:
    """The app's collaborators."""

    bot: "Bot"  # the model: ChatBot in this process, or RemoteBot in front of a model server
    transcriber: "Transcriber"  # Whisper
    speaker: "Speaker"  # Piper: spoken replies
    store: "Store"  # conversations and messages
    users: "Users"  # accounts and API keys
    documents: "DocumentStore"  # attached files
    replies: "LocalReplies"  # which conversation has a reply being written, here or (RedisReplies) on any replica
    redis: "Redis | None"  # the shared Redis, when WEBBOT_REDIS_URL is set


def install(app: Flask, services: Services) -> Services:
    """Make `services` the app's collaborators."""
    app.extensions[EXTENSION] = services
    return services


def services(app: Flask | None = None) -> Services:
    """The current app's collaborators (or `app`'s)."""
    return (app or current_app).extensions[EXTENSION]
