"""Attached documents as the model reads them: a small document whole, inside the message it came with, and
the passages of a large one (or of a whole one that has left the window) picked for each question.

Passages are ranked against the question with the same full-text ranking as recall
(`recall.py`), so one mechanism serves both sources; they go into the new message's turn,
right before its text, so the cached history before it stays valid.
"""

from dataclasses import dataclass

from webbot.config import DOCUMENT_SHARE

PASSAGES_MOST = 6  # passages ranked for one reply at most (as many as fit the document budget go in)


@dataclass(frozen=True)
class Passage:
    """A passage of an attached document, a candidate for one reply's prompt."""

    document: str  # the document's id
    source: str  # where it is, for citing: "report.pdf p. 7"
    text: str
    in_history: int | None = None  # the history index of the message holding its document whole; None: not whole
    fresh: bool = False  # its document came with the new message (its opening is the fallback when nothing matches)


def fits_whole(tokens: int, budget: int) -> bool:
    """Whether a document of `tokens` goes into its message whole (else it is read in passages)."""
    return tokens <= int(budget * DOCUMENT_SHARE)


def whole_block(name: str, text: str) -> str:
    """A document, whole, as the start of the message it was attached to."""
    return f'Here is the document "{name}":\n\n{text.strip()}\n\n(End of "{name}".)'


def with_documents(message: str, documents: list[tuple[str, str]]) -> str:
    """A message with the (name, text) documents that go in whole ahead of its own words."""
    if not documents:
        return message
    return "\n\n".join(whole_block(name, text) for name, text in documents) + "\n\n" + message


def passage_block(passages: list[Passage]) -> str:
    """Passages picked for a question, each introduced by where it comes from."""
    return "\n\n".join(f'From {passage.source}:\n"{passage.text.strip()}"' for passage in passages)
