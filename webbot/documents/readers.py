"""Taking the text out of one file, run as a child process (`python -m webbot.documents.readers KIND MAX_PAGES`).

The file comes on stdin and its sections go to stdout as JSON: `{"pages": n, "sections":
[{"label", "text"}]}` (a PDF's label is its page number, a DOCX's, Markdown's or HTML's the
heading the text sits under), or `{"refused": code, "detail": ...}` for a file that cannot
be read. The parent (`extraction.py`) sets the limits first: the process caps its own
address space and CPU time before it reads a byte, so a hostile file can exhaust neither the
server's memory nor its time. Nothing in a file is ever run: pypdf and python-docx only parse.
"""

import io
import json
import re
import resource
import sys
import zipfile

from webbot.config import UNZIPPED_MB

HEADING_STYLE = re.compile(r"^(Heading \d|Title)$")
BLOCK_TAGS = ("p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "section",
              "article", "table", "ul", "ol", "header", "footer", "dt", "dd")


class Refused(Exception):
    """A file this reader will not read; `code` says why (see extraction.SENTENCES)."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(code)
        self.code, self.detail = code, detail


def decode_text(data: bytes) -> str:
    """Bytes of a text file as text: UTF-8 (or UTF-16 with its mark), else Windows-1252; binary is refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    if b"\x00" in data:
        raise Refused("not_text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_text(data: bytes, max_pages: int) -> dict:
    return {"pages": 0, "sections": [{"label": "", "text": decode_text(data)}]}


def read_markdown(data: bytes, max_pages: int) -> dict:
    """Markdown cut at its headings, each part labelled with its heading."""
    sections, label, lines = [], "", []
    for line in decode_text(data).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and lines:
            sections.append({"label": label, "text": "\n".join(lines)})
            lines = []
        if heading:
            label = heading.group(1)
        lines.append(line)
    sections.append({"label": label, "text": "\n".join(lines)})
    return {"pages": 0, "sections": sections}


def read_html(data: bytes, max_pages: int) -> dict:
    """An HTML page's visible text (scripts, styles and templates dropped), a line per block, cut at headings."""
    import lxml.html
    from lxml import etree

    try:
        root = lxml.html.document_fromstring(data)
    except (etree.ParserError, ValueError):
        raise Refused("corrupt") from None
    etree.strip_elements(root, "script", "style", "noscript", "template", etree.Comment, with_tail=False)
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag in BLOCK_TAGS:
            element.tail = "\n" + (element.tail or "")
    text = root.text_content()
    # Cut at the headings' lines, now that every block ends a line.
    heads = [" ".join(h.text_content().split()) for h in root.iter("h1", "h2", "h3", "h4", "h5", "h6")]
    sections, label, lines = [], "", []
    for line in (" ".join(raw.split()) for raw in text.splitlines()):
        if heads and line == heads[0]:
            heads.pop(0)
            if lines:
                sections.append({"label": label, "text": "\n".join(lines)})
            label, lines = line, []
        if line:
            lines.append(line)
    sections.append({"label": label, "text": "\n".join(lines)})
    return {"pages": 0, "sections": sections}


def read_pdf(data: bytes, max_pages: int) -> dict:
    """A PDF's text layer, a section per page labelled with its number."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:  # many PDFs are "encrypted" with an empty password only to stop editing; those can be read
                if not reader.decrypt(""):
                    raise Refused("encrypted")
            except (DependencyError, FileNotDecryptedError, NotImplementedError):
                raise Refused("encrypted") from None
        count = len(reader.pages)
        if count > max_pages:
            raise Refused("too_many_pages", str(count))
        sections = [{"label": f"p. {number}", "text": page.extract_text() or ""}
                    for number, page in enumerate(reader.pages, 1)]
    except Refused:
        raise
    except FileNotDecryptedError:
        raise Refused("encrypted") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError):
        raise Refused("corrupt") from None
    if not any(section["text"].strip() for section in sections):
        raise Refused("no_text_layer")
    return {"pages": count, "sections": sections}


def read_docx(data: bytes, max_pages: int) -> dict:
    """A DOCX's paragraphs and tables in order, cut at its headings. Its zip is measured first: one that would
    unpack to more than UNZIPPED_MB is a zip bomb, refused unread."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if sum(member.file_size for member in archive.infolist()) > UNZIPPED_MB * 1_000_000:
                raise Refused("zip_bomb")
    except zipfile.BadZipFile:
        raise Refused("corrupt") from None
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        sections, label, lines = [], "", []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                lines.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
                continue
            style = block.style.name if block.style is not None else ""
            if HEADING_STYLE.match(style or "") and block.text.strip():
                if lines:
                    sections.append({"label": label, "text": "\n".join(lines)})
                label, lines = block.text.strip(), []
            lines.append(block.text)
        sections.append({"label": label, "text": "\n".join(lines)})
    except (KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise Refused("corrupt", type(exc).__name__) from None
    return {"pages": 0, "sections": sections}


READERS = {"text": read_text, "markdown": read_markdown, "html": read_html, "pdf": read_pdf, "docx": read_docx}


def main(argv: list[str]) -> int:
    kind, max_pages, memory_mb, seconds = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 1024 * 1024,) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    data = sys.stdin.buffer.read()
    try:
        result = READERS[kind](data, max_pages)
    except Refused as exc:
        result = {"refused": exc.code, "detail": exc.detail}
    except MemoryError:
        result = {"refused": "too_big_to_read", "detail": ""}
    except Exception as exc:  # any other failure of a parser on a malformed file is that file's fault
        result = {"refused": "corrupt", "detail": type(exc).__name__}
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
