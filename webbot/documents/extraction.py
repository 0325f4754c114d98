"""Reading an attached file: its kind, its text (taken out by `readers.py` in a child process with limits on
memory and CPU time) and its passages. A file that cannot be read raises `DocumentRefused` with a sentence
that says what to do instead; the web layer gives it a status by its `code`."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

from webbot.config import EXTRACT_MEMORY_MB, EXTRACT_SECONDS, PROJECT, UNZIPPED_MB
from webbot.documents import formats, passages

SENTENCES = {
    "unsupported": f"This kind of file cannot be read here; attach {formats.KNOWN}.",
    "not_text": "This file is not text (it holds binary data); attach it in one of the known formats: "
                f"{formats.KNOWN}.",
    "corrupt": "This file is damaged or not what its name says, so it cannot be read; open it on your computer, "
               "save it again and attach the new copy.",
    "encrypted": "This PDF is protected with a password; save a copy without the protection and attach that.",
    "no_text_layer": "This PDF holds only images, no text; it may be a scan. Run it through OCR (text recognition) "
                     "first, or paste the text you need.",
    "zip_bomb": f"This DOCX would unpack to more than {UNZIPPED_MB} MB, which is not a real document; attach the "
                "document saved normally.",
    "too_big_to_read": "This file needs more than {memory} MB of memory to read; split it into smaller files.",
    "too_slow": "Reading this file took longer than {seconds} seconds; split it into smaller files.",
    "empty": "This file holds no text; attach one with something in it.",
}


class DocumentRefused(ValueError):
    """A file that is not read: `code` says why (a key of SENTENCES, or too_many_pages), `sentence` what to do."""

    def __init__(self, code: str, sentence: str):
        super().__init__(sentence)
        self.code, self.sentence = code, sentence


@dataclass
class Document:
    """What an attached file says: its text whole and in passages."""

    name: str
    kind: str
    media_type: str
    pages: int  # a PDF's pages; 0 for other kinds
    text: str = field(repr=False)
    passages: list[dict] = field(repr=False)


def _refused(code: str) -> DocumentRefused:
    sentence = SENTENCES.get(code, SENTENCES["corrupt"])
    return DocumentRefused(code, sentence.format(memory=EXTRACT_MEMORY_MB, seconds=EXTRACT_SECONDS))


def _run_reader(kind: str, data: bytes, max_pages: int) -> dict:
    command = [sys.executable, "-m", "webbot.documents.readers", kind, str(max_pages), str(EXTRACT_MEMORY_MB),
               str(EXTRACT_SECONDS)]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(PROJECT), "LANG": "C.UTF-8"}
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=EXTRACT_SECONDS + 5, env=env,
                              cwd=PROJECT, check=False)
    except subprocess.TimeoutExpired:
        raise _refused("too_slow") from None
    if done.returncode != 0 or not done.stdout:
        # killed by its CPU limit (SIGXCPU) or its memory limit (a MemoryError it could not even report)
        raise _refused("too_slow" if done.returncode in (-24, 152) else "too_big_to_read")
    return json.loads(done.stdout)


def extract(data: bytes, filename: str, media_type: str | None = None,
            max_pages: int = 1000) -> Document:
    """The text of one file named `filename`; raises DocumentRefused."""
    kind = formats.kind_of(filename, media_type)
    if kind is None:
        raise _refused("unsupported")
    result = _run_reader(kind, data, max_pages)
    if "refused" in result:
        code = result["refused"]
        if code == "too_many_pages":
            raise DocumentRefused(code, f"This PDF has {result['detail']} pages; the limit is {max_pages}. "
                                        "Split it and attach the part you need.")
        raise _refused(code)
    sections = result["sections"]
    text = "\n\n".join(section["text"].strip() for section in sections if section["text"].strip())
    if not text:
        raise _refused("empty")
    return Document(filename, kind, formats.MEDIA_TYPES[kind], result["pages"], text,
                    passages.cut(filename, sections))
