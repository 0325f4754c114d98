"""A conversation's title, written by the model from the first exchange.

Until then a conversation is named after its first message (`store.title_from`). After
the first reply the page asks for a generated title; it replaces the provisional one only
if nobody renamed the conversation meanwhile. A model that writes nothing usable leaves
the provisional title in place, and so does one that is not about the question (it shares
no word with it), one that repeats the reply's opening, or one that is a sentence, not a title.
"""

import queue
import re

from webbot.model import recall
from webbot.model.stream import SamplingParams

INSTRUCTION = ("Write a short title, at most six words, for the conversation below. Answer with the title "
               "only: no quotes, no full stop.")
EXCERPT_CHARS = 600
TITLE_TOKENS = 16
OPENING_WORDS = 30  # the start of a reply a title must not merely repeat
MOST_WORDS = 8  # the model is asked for six
WAIT_S = 60.0


def prompt(user: str, assistant: str) -> str:
    """The request the model answers with a title."""
    return (f"{INSTRUCTION}\n\nUser: {user[:EXCERPT_CHARS]}\n\nAssistant: {assistant[:EXCERPT_CHARS]}\n\nTitle:")


def clean(text: str, most: int = 60) -> str:
    """The first line of the model's answer, without quotes, a 'Title:' or 'The title is' label, what follows a
    colon after a title of two words or more, or a trailing full stop."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    line = re.sub(r"^\s*((the\s+)?title(\s+is)?\s*:?)\s*", "", line, flags=re.IGNORECASE)
    head = line.split(": ", 1)[0]
    if head != line and len(head.split()) >= 2:
        line = head
    line = " ".join(line.strip().strip("\"'“”*#`").rstrip(".").split())
    return line if len(line) <= most else line[:most - 1].rstrip() + "…"


def acceptable(title: str, user: str, assistant: str) -> bool:
    """Whether a generated title names the question: a few words (at most MOST_WORDS) that share a word with the
    question (by stem or prefix, when it has words that say what it is about) and do not repeat a run of four or
    more words of the reply's opening."""
    words = re.findall(r"\w+", title.lower())
    if not recall.query_words(title) or len(words) > MOST_WORDS:
        return False
    if recall.query_words(user) and not recall.rank([title], user, 1):
        return False
    opening = re.findall(r"\w+", assistant.lower())[:OPENING_WORDS]
    n = len(words)
    return n < 4 or not any(opening[i:i + n] == words for i in range(len(opening) - n + 1))


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
    title = clean(text)
    return title if acceptable(title, user, assistant) else ""
