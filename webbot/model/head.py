"""The system message of a prompt: the system prompt, then the pinned messages, then the notes of turns outside
memory, each kind within its own share of the prompt budget, oldest first (a pin whole, a note line by line).

Everything here sits ahead of the history, so it changes the cached prefix only when the
pins or the notes change (a note is written once a chunk of turns has left the window,
which moves the prefix anyway).
"""

PINNED_INTRO = "Pinned in this conversation, to keep in mind:\n"
NOTES_INTRO = "Notes of earlier parts of this conversation:\n"


def one_line(message: dict) -> str:
    """A message's text on one line, as the system message and the recalled block quote it."""
    return " ".join(message["content"].split())


def pin_line(message: dict) -> str:
    """A pinned message as a line of the system message."""
    return f'{"The user" if message["role"] == "user" else "You"} said: "{one_line(message)}"'


def note_text(note: str) -> str:
    """A note as the system message holds it: its non-blank lines."""
    return "\n".join(line.strip() for line in note.splitlines() if line.strip())


def _fitting(entries: list[tuple[int, str]], intro: str, budget: int, count) -> list[tuple[int, str]]:
    """The entries (index, text), in order, that fit `budget` tokens beside `intro`; `count` counts tokens."""
    kept, spent = [], count(intro)
    for index, text in entries:
        cost = count(text) + 1  # and the newline before the next
        if spent + cost <= budget:
            kept.append((index, text))
            spent += cost
    return kept


def system_message(system_prompt: str | None, history: list[dict], pins: list[int], notes: dict[int, str],
                   pin_budget: int, note_budget: int, count) -> tuple[list[dict], list[int], list[int]]:
    """The head of a prompt ([] or one system message), and the history indexes of the pins and of the notes it
    holds. `pins`: indexes of pinned messages; `notes`: history index -> the note kept on that message (blank
    notes add nothing). `count(text)` is the tokens of a text."""
    pinned = _fitting([(i, pin_line(history[i])) for i in sorted(set(pins)) if 0 <= i < len(history)],
                      PINNED_INTRO, pin_budget, count)
    noted = _fitting([(i, line) for i in sorted(notes) for line in note_text(notes[i]).splitlines()],
                     NOTES_INTRO, note_budget, count)  # line by line: a long note keeps its first lines
    parts = [system_prompt] if system_prompt else []
    if pinned:
        parts.append(PINNED_INTRO + "\n".join(text for _, text in pinned))
    if noted:
        parts.append(NOTES_INTRO + "\n".join(text for _, text in noted))
    head = [{"role": "system", "content": "\n\n".join(parts)}] if parts else []
    return head, [i for i, _ in pinned], sorted({i for i, _ in noted})
