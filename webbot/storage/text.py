"""Which text can be stored: every database here keeps UTF-8 text without NUL characters.

PostgreSQL refuses NUL in text, and an unpaired UTF-16 surrogate (what JSON's "\\ud800"
decodes to) cannot be encoded as UTF-8 at all. Requests carrying either are refused with
a sentence before anything is stored.
"""

import re

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> str | None:
    """A description of the first character in `text` that no database can keep ("a NUL character (\\u0000)",
    "an unpaired surrogate (\\ud800)"), or None when all of it can be kept."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    return "a NUL character (\\u0000)" if char == "\x00" else f"an unpaired surrogate (\\u{ord(char):04x})"
