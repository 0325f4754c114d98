"""Whose conversations (and whose cached prompts) a request concerns: its owner id.

A signed-in user owns theirs as `user:ID`; a browser without an account owns its own
through its signed owner cookie (`visitors.py`); a /v1 call without a personal key
belongs to its address. Every read and write of a conversation names the owner, so
someone else's conversation behaves exactly like one that does not exist.
"""

from flask import request
from flask_login import current_user

from webbot.web.visitors import browser_owner


def current_owner() -> str:
    """Whose conversations this request sees: the signed-in user's, else this browser's (its owner cookie,
    made on its first request)."""
    if current_user and current_user.is_authenticated:
        return user_owner(current_user.id)
    return browser_owner()


def user_owner(user_id: int) -> str:
    """The owner id of a signed-in user's conversations (browsers without an account have random hex ids)."""
    return f"user:{user_id}"


def address_owner() -> str:
    """The owner of what a client without a key of its own sends to /v1: its address."""
    return f"address:{request.remote_addr}"
