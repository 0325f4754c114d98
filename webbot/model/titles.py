"""A conversation's title, written by the model from the first exchange.

Until then a conversation is named after its first message (`store.title_from`). After
the first reply the page asks for a generated title; it replaces the provisional one only
if nobody renamed the conversation meanwhile. A model that writes nothing usable leaves
the provisional title in place.
"""

import queue
import re

from webbot.model.stream import SamplingParams

INSTRUCTION = ("Write a short title, at most six words, for the conversation below. Answer with the title "
               "only: no quotes, no full stop.")
EXCERPT_CHARS = 600
TITLE_TOKENS = 16
WAIT_S = 60.0


def prompt(user: str, assistant: str) -> str:
    """The request the model answers with a title."""
    return (f"{INSTRUCTION}\n\nUser: {user[:EXCERPT_CHARS]}\n\nAssistant: {assistant[:EXCERPT_CHARS]}\n\nTitle:")


def clean(text: str, most: int = 60) -> str:
    """The first line of the model's answer, without quotes, a 'Title:' label or a trailing full stop."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    line = re.sub(r"^\s*(title\s*:)\s*", "", line, flags=re.IGNORECASE)
    line = " ".join(line.strip().strip("\"'“”*#`").rstrip(".").split())
    return line if len(line) <= most else line[:most - 1].rstrip() + "…"


def generate(bot, user: str, assistant: str, owner: str) -> str:
    """A title for `owner`'s first exchange ('' when the model gave nothing usable or took too long)."""
    plan = bot.plan([], prompt(user, assistant), "You name conversations.", owner=owner)
    stream = bot.generate(plan, SamplingParams(max_new_tokens=TITLE_TOKENS, temperature=0.0), owner)
    text = ""
    try:
        while (piece := stream.next_piece(timeout=WAIT_S)) is not None:
            text += piece
    except queue.Empty:
        return ""
    finally:
        stream.cancel()
    return clean(text)
