"""A reply's Markdown as it should be heard, cut into sentences for speaking one at a time.

Code blocks are not spelled out (one short sentence says there is code to read), a
link is read as its words or, for a bare address, as the site's name; math is skipped
or, when it is a single symbol or number, said as it is; headings, list items and table
rows end as sentences. No Flask, no audio: text in, text out.
"""

import re
from urllib.parse import urlsplit

from markdown_it import MarkdownIt

CODE_BLOCK = "There is code here; read it on the screen."
FORMULA = "a formula"
LONGEST_SENTENCE = 300  # characters; a longer one is cut at a comma or a space so the first sound comes soon
SHORT_CODE = 24  # inline code up to this long is read as it is (a name, a command), longer as "some code"

_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>()\]]+", re.IGNORECASE)
_DISPLAY_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]", re.DOTALL)
_INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?!\s)([^$\n]{1,200}?)(?<!\s)\$(?![\w$])|\\\((.+?)\\\)")
_SIMPLE_MATH = re.compile(r"[A-Za-z]|[0-9]+(?:\.[0-9]+)?")  # said as it is (fullmatch)
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATION = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|St|Sr|Jr|vs|etc|e\.g|i\.e|No|Fig|approx)|\b[A-Z])\.$")
_ENDS_SENTENCE = re.compile(r"[.!?…:;][\"')\]]*$")


def _site(url: str) -> str:
    """A bare address as it is said: the site's name ("a link to example.org")."""
    host = urlsplit(url).hostname or ""
    host = host.removeprefix("www.")
    return f"a link to {host}" if host else "a link"


def _math(match: re.Match) -> str:
    inner = (match.group(1) or match.group(2) or "").strip()
    return inner if _SIMPLE_MATH.fullmatch(inner) else FORMULA


def _inline(token) -> str:
    """The words of one inline token (a paragraph's, a heading's or a cell's content)."""
    words, link_text, link_href = [], None, None
    for child in token.children or []:
        if child.type == "text":
            (link_text if link_text is not None else words).append(child.content)
        elif child.type == "code_inline":
            text = child.content if len(child.content) <= SHORT_CODE else "some code"
            (link_text if link_text is not None else words).append(text)
        elif child.type in ("softbreak", "hardbreak"):
            words.append(" ")
        elif child.type == "link_open":
            link_text, link_href = [], child.attrGet("href") or ""
        elif child.type == "link_close":
            said = "".join(link_text or []).strip()
            words.append(_site(link_href) if not said or said == link_href or _URL.fullmatch(said) else said)
            link_text = None
        elif child.type == "image":
            alt = "".join(c.content for c in child.children or [] if c.type == "text").strip()
            words.append(f"an image: {alt}" if alt else "an image")
    return "".join(words)


def _sentence(text: str) -> str:
    """One block's words with its spaces folded and a full stop when it ends without one."""
    text = " ".join(text.split())
    if text and not _ENDS_SENTENCE.search(text):
        text += "."
    return text


def speakable(markdown: str) -> str:
    """The words of a Markdown reply as they would be read aloud, one block per line."""
    markdown = _DISPLAY_MATH.sub(" ", markdown)
    markdown = _INLINE_MATH.sub(_math, markdown)
    parser = MarkdownIt("commonmark").enable("table")
    blocks, row = [], None  # row: the cells of the table row being read, None outside a table
    for token in parser.parse(markdown):
        if token.type in ("fence", "code_block"):
            blocks.append(CODE_BLOCK)
        elif token.type == "inline":
            text = _URL.sub(lambda m: _site(m.group(0)), _inline(token)).strip()
            if row is not None:
                row.append(text)
            elif text:
                blocks.append(_sentence(text))
        elif token.type == "tr_open":
            row = []
        elif token.type == "tr_close":
            if any(row):
                blocks.append(_sentence(", ".join(cell for cell in row if cell)))
            row = None
        elif token.type == "html_block":
            text = re.sub(r"<[^>]*>", " ", token.content).strip()
            if text:
                blocks.append(_sentence(text))
    # a code block said once, however many follow one another
    spoken = [b for i, b in enumerate(blocks) if not (b == CODE_BLOCK and i and blocks[i - 1] == CODE_BLOCK)]
    return "\n".join(spoken)


def _split_line(line: str) -> list[str]:
    """A line cut after each full stop, question or exclamation mark that ends a sentence (not "Dr." or "e.g.")."""
    parts, start = [], 0
    for match in _SENTENCE_END.finditer(line):
        if not _ABBREVIATION.search(line[start:match.start()]):
            parts.append(line[start:match.start()].strip())
            start = match.end()
    parts.append(line[start:].strip())
    return parts


def sentences(text: str) -> list[str]:
    """Speakable text cut into sentences, each at most LONGEST_SENTENCE characters."""
    out = []
    for line in text.splitlines():
        for sentence in _split_line(line.strip()):
            while len(sentence) > LONGEST_SENTENCE:
                cut = sentence.rfind(", ", 0, LONGEST_SENTENCE)
                cut = cut + 1 if cut > LONGEST_SENTENCE // 3 else sentence.rfind(" ", 0, LONGEST_SENTENCE)
                cut = cut if cut > 0 else LONGEST_SENTENCE
                out.append(sentence[:cut].strip())
                sentence = sentence[cut:].strip()
            if sentence:
                out.append(sentence)
    return out
