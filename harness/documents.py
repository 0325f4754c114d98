"""Documents for tests and benchmarks, made at run time: filler prose with one planted fact deep inside, as
text, a PDF (reportlab), a DOCX (python-docx), and the bad files (encrypted, image-only, a zip bomb)."""

import io
import random
import zipfile

PLANTED = "The secret password of the Aurora vault is PELICAN."
QUESTION = "What is the secret password of the Aurora vault?"
ANSWER = "PELICAN"

SUBJECTS = ["The committee", "Our supplier", "The night shift", "The river survey", "A visiting engineer",
            "The finance team", "The warehouse crew", "The harbour office", "The school board", "The orchard"]
VERBS = ["reviewed", "postponed", "measured", "painted", "repaired", "counted", "discussed", "delivered",
         "inspected", "ordered"]
OBJECTS = ["the northern bridge", "twelve crates of tiles", "the old water tower", "the spring timetable",
           "three green tractors", "the library roof", "the western fence", "a batch of copper pipes",
           "the festival tents", "the parking meters"]
WHEN = ["in March", "before lunch", "last winter", "on a rainy Monday", "after the storm", "during the fair",
        "at dawn", "within a week", "twice a year", "by Friday"]


def filler(paragraphs: int, seed: int = 7) -> list[str]:
    """Paragraphs of varied, plain sentences that say nothing about the planted fact."""
    rng = random.Random(seed)
    return [" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(WHEN)}."
                     for _ in range(6)) for _ in range(paragraphs)]


def text_document(paragraphs: int = 60, at: float = 0.6) -> str:
    """Filler text with PLANTED in a paragraph `at` of the way through."""
    parts = filler(paragraphs)
    parts.insert(int(len(parts) * at), PLANTED)
    return "\n\n".join(parts) + "\n"


def pdf(pages: int = 20, planted_page: int | None = 13, paragraphs_per_page: int = 3) -> bytes:
    """A PDF with a text layer: `pages` pages of filler, PLANTED on `planted_page` (1-based)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    page_canvas = canvas.Canvas(out, pagesize=A4)
    prose = filler(pages * paragraphs_per_page)
    for number in range(1, pages + 1):
        lines = []
        for paragraph in prose[(number - 1) * paragraphs_per_page:number * paragraphs_per_page]:
            lines.extend(_wrap(paragraph, 90) + [""])
        if number == planted_page:
            lines[len(lines) // 2:len(lines) // 2] = [PLANTED, ""]
        y = 800
        for line in lines:
            page_canvas.drawString(40, y, line)
            y -= 14
        page_canvas.showPage()
    page_canvas.save()
    return out.getvalue()


def image_pdf(pages: int = 2) -> bytes:
    """A PDF of drawings only, like a scan: no text layer."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    page_canvas = canvas.Canvas(out, pagesize=A4)
    for _ in range(pages):
        page_canvas.rect(50, 50, 400, 600, fill=1)
        page_canvas.showPage()
    page_canvas.save()
    return out.getvalue()


def encrypted_pdf() -> bytes:
    """A PDF that opens only with a password."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf(2, None))))
    writer.encrypt(user_password="open sesame", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx(sections: int = 8, planted_section: int = 5) -> bytes:
    """A DOCX with headed sections of filler and a table, PLANTED in section `planted_section`."""
    import docx as python_docx

    document = python_docx.Document()
    prose = iter(filler(sections * 3, seed=11))
    for number in range(1, sections + 1):
        document.add_heading(f"Section {number}", level=1)
        for index in range(3):
            document.add_paragraph(next(prose))
            if number == planted_section and index == 1:
                document.add_paragraph(PLANTED)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Item", "Count"
    table.cell(1, 0).text, table.cell(1, 1).text = "Lanterns", "14"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bomb_docx(unpacked_mb: int = 300) -> bytes:
    """A small file that claims to be a DOCX and unpacks to `unpacked_mb` MB of zeros."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/bomb.bin", "w", force_zip64=True) as member:
            block = b"\0" * 1_000_000
            for _ in range(unpacked_mb):
                member.write(block)
    return out.getvalue()


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines
