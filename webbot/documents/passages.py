"""A document's text cut into passages for search: at most PASSAGE_CHARS each, broken at blank lines where it
can, and each named for citing ("report.pdf p. 7", "guide.docx, Setup", "server.log lines 120-161")."""

from webbot.config import PASSAGE_CHARS


def _source(name: str, label: str, first: int, last: int) -> str:
    if label.startswith("p. "):
        return f"{name} {label}"
    if label:
        return f"{name}, {label}"
    return f"{name} line {first}" if first == last else f"{name} lines {first}-{last}"


def _pieces(line: str, most: int) -> list[str]:
    """A line longer than `most` cut at spaces (or anywhere, when it has none)."""
    pieces = []
    while len(line) > most:
        cut = line.rfind(" ", most // 2, most)
        cut = most if cut < 0 else cut
        pieces.append(line[:cut])
        line = line[cut:].lstrip()
    return pieces + [line]


def cut(name: str, sections: list[dict], most: int = PASSAGE_CHARS) -> list[dict]:
    """Passages `{"source", "text"}` of a document's sections, in order; blank ones are left out."""
    passages = []
    line_number = 0
    for section in sections:
        chunk, size, first = [], 0, line_number + 1
        for raw in section["text"].splitlines() or [""]:
            line_number += 1
            for line in _pieces(raw.rstrip(), most):
                at_break = not line.strip() and size > most * 0.6
                if chunk and (size + len(line) + 1 > most or at_break):
                    text = "\n".join(chunk).strip()
                    if text:
                        passages.append({"source": _source(name, section["label"], first, line_number - 1),
                                         "text": text})
                    chunk, size, first = [], 0, line_number
                chunk.append(line)
                size += len(line) + 1
        text = "\n".join(chunk).strip()
        if text:
            passages.append({"source": _source(name, section["label"], first, line_number), "text": text})
    return passages
