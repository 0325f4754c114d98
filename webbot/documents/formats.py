"""Which files can be attached, told by their name's ending (the browser's content type is only a hint).

Each kind names the reader in `readers.py` that takes its text out. Anything else is
refused with the list of what is known, before a byte of it is parsed.
"""

from pathlib import PurePosixPath

TEXT_ENDINGS = (
    "txt", "text", "log", "csv", "tsv", "json", "jsonl", "yaml", "yml", "toml", "ini", "cfg", "conf", "xml", "sql",
    "py", "js", "mjs", "ts", "tsx", "jsx", "java", "kt", "c", "h", "cc", "cpp", "hpp", "cs", "go", "rs", "rb", "php",
    "swift", "scala", "sh", "bash", "zsh", "ps1", "r", "lua", "pl", "css", "scss", "tex", "rst", "srt", "vtt", "diff",
    "patch",
)
KINDS = {"pdf": "pdf", "docx": "docx", "html": "html", "htm": "html", "md": "markdown", "markdown": "markdown",
         **{ending: "text" for ending in TEXT_ENDINGS}}
MEDIA_TYPES = {"pdf": "application/pdf",
               "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
               "html": "text/html", "markdown": "text/markdown", "text": "text/plain"}
# A file named without an ending is taken by its content type, when that is one of these.
KIND_OF_MEDIA_TYPE = {"application/pdf": "pdf", MEDIA_TYPES["docx"]: "docx", "text/html": "html",
                      "text/markdown": "markdown", "text/plain": "text", "text/csv": "text", "application/json": "text"}
KNOWN = "PDF, DOCX, HTML, Markdown, plain text, CSV, JSON and source code"


def kind_of(filename: str, media_type: str | None = None) -> str | None:
    """The reader for a file: pdf, docx, html, markdown or text; None for a kind no reader knows."""
    ending = PurePosixPath(filename.lower()).suffix.lstrip(".")
    if ending:
        return KINDS.get(ending)
    return KIND_OF_MEDIA_TYPE.get((media_type or "").split(";")[0].strip().lower())
