"""Notes of turns that fell out of memory (WEBBOT_MEMORY_SUMMARY=on): the model writes a few short lines of the
facts in them, kept on the last message they cover; they ride with the pinned messages (`head.py`).

Off by default: a small model invents facts (SmolLM2-135M does; bench/notes_quality.py
counts how many planted facts a note keeps and how many lines it makes up). So a
statement is kept only when it is grounded in the turns it notes: every number in it, and
all but a third of its other words (by stem or prefix, as recall matches them), occur
there; questions, headings and what the model labels as the assistant's are dropped.
A person can correct or clear any note on the page.
"""

import re

from webbot.config import MAX_NOTE_CHARS, NOTE_TOKENS
from webbot.model import recall
from webbot.model.memory import MessageTooLong
from webbot.model.stream import SamplingParams

SYSTEM = "You take short, exact notes."
INSTRUCTION = ("List the facts the user told you about themselves (names, places, pets, numbers, preferences) and "
               "anything they asked you to remember, one per line, each starting with \"- \".")
MOST_LINES = 8
UNGROUNDED_SHARE = 1 / 3  # of a sentence's words (numbers aside) that may be missing from the turns it notes
WAIT_S = 60.0
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")
_ROLE = re.compile(r"^(user|assistant)\s*:\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_QUESTION = re.compile(r"^(what|which|who|whom|whose|how|why|when|where|is|are|do|does|can)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def excerpt(messages: list[dict]) -> str:
    """The turns as the model reads them for notes."""
    return "\n\n".join(f'{"User" if m["role"] == "user" else "Assistant"}: {m["content"].strip()}' for m in messages)


def prompt(messages: list[dict]) -> str:
    """The request the model answers with notes of `messages` (the instruction after the turns: SmolLM2-135M
    mostly copied the turns out when it came first)."""
    return f"Here is part of a conversation.\n\n{excerpt(messages)}\n\n{INSTRUCTION}"


def grounded(sentence: str, source: str) -> bool:
    """Whether a sentence of notes says only what `source` says: every number in it occurs there, and all but
    UNGROUNDED_SHARE of its words (stopwords aside) do, by stem or prefix; one of no such words is not."""
    if any(number not in source for number in _NUMBER.findall(sentence)):
        return False
    words = [w for w in recall.query_words(sentence) if not _NUMBER.fullmatch(w)]
    if not words:
        return bool(_NUMBER.search(sentence))
    missing = len(words) - len(recall.found(words, source))
    return missing <= int(len(words) * UNGROUNDED_SHARE)


def _line(raw: str, source: str) -> str:
    """A line of the model's answer as a line of notes: its grounded statements ("" when none). A line the model
    labels as the assistant's, a question (by its mark or its first word), or a heading (ending in a colon) says
    nothing about the person."""
    line = " ".join(_BULLET.sub("", raw).split())
    role = _ROLE.match(line)
    if role and role.group(1).lower() == "assistant":
        return ""
    line = _ROLE.sub("", line)
    kept = [s for s in _SENTENCE_END.split(line)
            if s and not s.rstrip("\"'\u201d)").endswith(("?", ":")) and not _QUESTION.match(s)
            and grounded(s, source)]
    return " ".join(kept)


def clean(text: str, messages: list[dict], cut_off: bool = False) -> str:
    """The model's answer as notes: "- " lines of its grounded statements about the turns in `messages`, each
    once, at most MOST_LINES; "" when none is left. `cut_off`: the answer stopped at the token limit, so its last
    line is unfinished and left out."""
    source = excerpt(messages)
    kept: list[str] = []
    lines = text.splitlines()
    for raw in lines[:-1] if cut_off else lines:
        line = _line(raw, source)
        if line and line.lower() not in (k.lower() for k in kept):
            kept.append(line)
        if len(kept) == MOST_LINES:
            break
    return "\n".join(f"- {line}" for line in kept)[:MAX_NOTE_CHARS]


def _fitting_plan(bot, messages: list[dict], owner: str):
    """(the plan for notes of as many of `messages`, from the first, as fit the prompt; how many those are).
    A single message too long on its own is cut."""
    count = len(messages)
    while True:
        try:
            return bot.plan([], prompt(messages[:count]), SYSTEM, owner=owner), count
        except MessageTooLong as exc:
            if count == 1:
                first = messages[0]
                keep = int(len(first["content"]) * exc.limit / max(exc.tokens, 1) * 0.9)
                if keep < 1:
                    raise
                messages = [{**first, "content": first["content"][:keep]}]
            else:
                count = max(1, min(count - 1, int(count * exc.limit / max(exc.tokens, 1))))


def generate(bot, messages: list[dict], owner: str) -> tuple[int, str]:
    """Notes of the first turns of `messages` (as many as the prompt holds; all of them usually): (how many
    messages they cover, the notes or "" when the model wrote nothing grounded). Raises queue.Empty when the model
    took too long, and what `bot.generate` raises (EngineBusy, an upstream error)."""
    plan, count = _fitting_plan(bot, messages, owner)
    stream = bot.generate(plan, SamplingParams(max_new_tokens=NOTE_TOKENS, temperature=0.0), owner)
    text = ""
    try:
        while (piece := stream.next_piece(timeout=WAIT_S)) is not None:
            text += piece
    finally:
        stream.cancel()
    return count, clean(text, messages[:count], stream.finish_reason == "length")
