"""Documents in the conversation: reading each format (in the limited child process), the bad files and their
sentences, passages and where they go in the prompt (real Llama 3.2 tokenizer and template), and the routes of
the page and /v1 with two owners. The answers of a real model are in test_documents_model.py."""

import base64
import io
import json

import pytest

from harness import documents as docs
from webbot.documents.extraction import DocumentRefused, extract
from webbot.documents.passages import cut
from webbot.model.attached import Passage, fits_whole, passage_block
from webbot.model.memory import Memory

SYSTEM = "You are a helpful assistant."


@pytest.mark.parametrize("name, data, where", [
    ("notes.txt", docs.text_document(60).encode(), "notes.txt lines"),
    ("notes.md", ("# Intro\n\n" + "\n\n".join(docs.filler(10)) + "\n## Vault\n\n" + docs.PLANTED + "\n").encode(),
     "notes.md, Vault"),
    ("page.html", f"<html><head><script>alert(1)</script><style>p{{}}</style></head><body><h1>Intro</h1>"
                  f"<p>{docs.filler(3)[0]}</p><h2>Vault</h2><p>{docs.PLANTED}</p></body></html>".encode(),
     "page.html, Vault"),
    ("report.pdf", docs.pdf(20), "report.pdf p. 13"),
    ("guide.docx", docs.docx(), "guide.docx, Section 5"),
])
def test_each_format_is_read_and_the_planted_fact_is_cited_where_it_is(name, data, where):
    document = extract(data, name)
    assert docs.PLANTED in document.text and "alert(1)" not in document.text
    holding = [p["source"] for p in document.passages if docs.ANSWER in p["text"]]
    assert len(holding) == 1 and holding[0].startswith(where), holding
    assert all(len(p["text"]) <= 1200 for p in document.passages)
    if name.endswith(".pdf"):
        assert document.pages == 20 and len(document.passages) == 20
    if name.endswith(".docx"):
        assert "Lanterns | 14" in document.text  # tables too


@pytest.mark.parametrize("name, data, code, words", [
    ("scan.pdf", docs.image_pdf(), "no_text_layer", "it may be a scan"),
    ("locked.pdf", docs.encrypted_pdf(), "encrypted", "protected with a password"),
    ("bomb.docx", docs.zip_bomb_docx(), "zip_bomb", "would unpack to more than"),
    ("broken.pdf", b"%PDF-1.7 this is not really a pdf", "corrupt", "damaged"),
    ("broken.docx", b"PK\x03\x04 not a zip at all", "corrupt", "damaged"),
    ("program.exe", b"MZ\x90\x00", "unsupported", "attach PDF, DOCX"),
    ("binary.txt", b"\x00\x01\x02ELF", "not_text", "not text"),
    ("blank.md", b"  \n\n  ", "empty", "holds no text"),
])
def test_a_file_that_cannot_be_read_is_refused_with_a_sentence(name, data, code, words):
    with pytest.raises(DocumentRefused) as refused:
        extract(data, name)
    assert refused.value.code == code and words in refused.value.sentence


def test_the_reader_is_stopped_at_its_memory_and_cpu_limits(monkeypatch):
    """The limits are real: the child process that reads a file is refused memory past its cap and killed past its
    CPU time (here set low enough for an ordinary file to hit them)."""
    from webbot.documents import extraction

    monkeypatch.setattr(extraction, "EXTRACT_MEMORY_MB", 96)
    assert extract(docs.pdf(3), "small.pdf").pages == 3  # an ordinary file fits
    with pytest.raises(DocumentRefused) as refused:
        extract(b"word " * 8_000_000, "huge.txt")  # 40 MB of text, its copies past 96 MB
    assert refused.value.code == "too_big_to_read" and "more than 96 MB" in refused.value.sentence
    monkeypatch.setattr(extraction, "EXTRACT_MEMORY_MB", 1536)
    monkeypatch.setattr(extraction, "EXTRACT_SECONDS", 1)
    with pytest.raises(DocumentRefused) as refused:
        # 3,000 pages take about 3 s of CPU on an AVX-512 EPYC, where 1,000 were read inside the 1 s limit
        extract(docs.pdf(3000, None, paragraphs_per_page=1), "long.pdf", max_pages=4000)
    assert refused.value.code == "too_slow"


def test_too_many_pages_names_the_count_and_the_limit():
    with pytest.raises(DocumentRefused) as refused:
        extract(docs.pdf(6, None), "long.pdf", max_pages=5)
    assert refused.value.code == "too_many_pages" and "6 pages; the limit is 5" in refused.value.sentence


def test_passages_break_at_blank_lines_and_cut_a_long_line():
    text = "\n\n".join(["word " * 100] * 5) + "\n" + "x" * 3000
    passages = cut("a.txt", [{"label": "", "text": text}], most=600)
    assert all(len(p["text"]) <= 600 for p in passages)
    assert "".join(p["text"] for p in passages).replace("\n", "").replace(" ", "") == \
        text.replace("\n", "").replace(" ", "")  # nothing lost
    assert passages[0]["source"].startswith("a.txt line")


@pytest.fixture
def memory(llama_tokenizer):
    return Memory(llama_tokenizer, 1024, 0.25, template_kwargs={"date_string": "2 Dec 2026"})


def big_document_passages(fresh=True) -> list[Passage]:
    document = extract(docs.pdf(20), "report.pdf")
    return [Passage("d1", p["source"], p["text"], None, fresh) for p in document.passages]


def test_the_passage_that_answers_goes_right_before_the_question_within_the_document_budget(memory):
    passages = big_document_passages()
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"}]
    plan = memory.plan(history, docs.QUESTION, SYSTEM, passages=passages)
    chosen = [passages[i].source for i in plan.sources]
    assert chosen[0] == "report.pdf p. 13" and plan.prompt_tokens <= plan.budget
    last = plan.kept_messages[-1]["content"]
    assert last.startswith('From report.pdf p. 13:') and last.endswith(docs.QUESTION)
    assert docs.PLANTED in last
    block = passage_block([passages[i] for i in plan.sources])
    assert len(memory.encode(block)) <= memory.document_budget
    # the history before it is the same prompt text as without documents: its cached keys stay valid
    plain = memory.plan(history, docs.QUESTION, SYSTEM)
    head = plain.prompt_text[:plain.prompt_text.index("Hi! How can I help?")]
    assert plan.prompt_text.startswith(head)


def test_with_no_matching_words_a_new_documents_opening_is_read(memory):
    passages = big_document_passages()
    plan = memory.plan([], "Summarise this, please.", SYSTEM, passages=passages)
    assert plan.sources and plan.sources[0] == 0
    assert not memory.plan([], "Summarise this, please.", SYSTEM, passages=big_document_passages(False)).sources


def test_a_whole_document_counts_as_passages_only_once_its_message_left_the_window(memory):
    small = docs.text_document(3)
    assert fits_whole(len(memory.encode(small)), memory.budget)
    history = [{"role": "user", "content": f"Here it is:\n{small}"}, {"role": "assistant", "content": "Thanks."}]
    passages = [Passage("d1", "notes.txt lines 1-9", small, in_history=0)]
    inside = memory.plan(history, docs.QUESTION, SYSTEM, passages=passages)
    assert inside.first_kept == 0 and inside.sources == []  # it is in the history already
    long_history = history + [m for t in range(40) for m in (
        {"role": "user", "content": f"Turn {t}: " + " ".join(f"w{t}x{i}" for i in range(30))},
        {"role": "assistant", "content": f"Answer {t}."})]
    outside = memory.plan(long_history, docs.QUESTION, SYSTEM, passages=passages)
    assert outside.first_kept > 0 and outside.sources == [0]
    assert docs.ANSWER in outside.kept_messages[-1]["content"]


# ---- routes, with the tiny model (real tokenizer) -------------------------------------------------------

def upload(client, cid, name, data, **kwargs):
    return client.post(f"/api/conversations/{cid}/documents", data={"file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data", **kwargs)


def new_chat(client):
    return client.post("/api/conversations", json={}).get_json()["id"]


def send(client, cid, text, documents=()):
    answer = client.post(f"/api/conversations/{cid}/messages",
                         json={"content": text, "documents": list(documents), "max_tokens": 3})
    return answer.status_code, answer.get_data(as_text=True)


def test_attach_send_keep_download_and_nobody_else_sees_it(app):
    alice, bob = app.test_client(), app.test_client()
    cid = new_chat(alice)
    pdf = docs.pdf(20)
    made = upload(alice, cid, "report.pdf", pdf)
    assert made.status_code == 201, made.get_json()
    document = made.get_json()
    assert document["pages"] == 20 and document["tokens"] > 3000 and document["name"] == "report.pdf"
    assert alice.get(f"/api/conversations/{cid}").get_json()["drafts"][0]["id"] == document["id"]
    url = f"/api/conversations/{cid}/documents/{document['id']}"
    # Bob, with the ids, gets 404 everywhere and changes nothing
    bob_cid = new_chat(bob)
    assert bob.get(url).status_code == 404
    assert bob.delete(url).status_code == 404
    assert bob.get(f"/api/conversations/{bob_cid}/documents/{document['id']}").status_code == 404
    status, text = send(bob, bob_cid, "what does it say?", [document["id"]])
    assert status == 404 and "attach it again" in text
    assert upload(bob, cid, "x.txt", b"mine now").status_code == 404
    # Alice sends it
    status, text = send(alice, cid, docs.QUESTION, [document["id"]])
    assert status == 200 and "event: done" in text
    shown = alice.get(f"/api/conversations/{cid}").get_json()
    assert shown["drafts"] == [] and shown["messages"][0]["documents"][0]["id"] == document["id"]
    assert [s["source"] for s in shown["messages"][1]["sources"]][0] == "report.pdf p. 13"
    downloaded = alice.get(url)
    assert downloaded.status_code == 200 and downloaded.data == pdf
    assert downloaded.headers["Content-Disposition"].startswith("attachment")
    assert downloaded.headers["Content-Type"] == "application/octet-stream"
    assert "sandbox" in downloaded.headers["Content-Security-Policy"]
    assert alice.delete(url).status_code == 404  # a sent file stays with its message
    # a later question in the same conversation still reaches it
    status, text = send(alice, cid, "Who keeps the Aurora vault password?")
    assert status == 200
    assert alice.get(f"/api/conversations/{cid}").get_json()["messages"][3]["sources"]


def test_a_small_document_goes_whole_into_its_message(app):
    client = app.test_client()
    cid = new_chat(client)
    small = upload(client, cid, "notes.txt", docs.text_document(2).encode()).get_json()
    status, text = send(client, cid, "Read this.", [small["id"]])
    assert status == 200
    start = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
    assert start["memory"]["used"] > small["tokens"] and start["reply"]["sources"] == []


def test_delete_with_the_conversation_and_back_with_undo(app):
    client = app.test_client()
    cid = new_chat(client)
    document = upload(client, cid, "notes.txt", b"The vault password is PELICAN.\n").get_json()
    url = f"/api/conversations/{cid}/documents/{document['id']}"
    assert client.delete(f"/api/conversations/{cid}").status_code == 204
    assert client.get(url).status_code == 404
    assert client.post(f"/api/conversations/{cid}/restore").status_code == 200
    assert client.get(url).status_code == 200
    store = app.extensions["webbot"].store
    client.delete(f"/api/conversations/{cid}")
    store.purge_deleted(float("inf"))
    with store.engine.connect() as db:
        from sqlalchemy import text
        assert db.execute(text("SELECT count(*) FROM documents")).scalar_one() == 0


def test_removing_a_draft(app):
    client = app.test_client()
    cid = new_chat(client)
    document = upload(client, cid, "notes.txt", b"draft text\n").get_json()
    assert client.delete(f"/api/conversations/{cid}/documents/{document['id']}").status_code == 204
    assert client.get(f"/api/conversations/{cid}").get_json()["drafts"] == []
    status, text = send(client, cid, "hello", [document["id"]])
    assert status == 404


@pytest.mark.parametrize("name, data, status, words", [
    ("scan.pdf", docs.image_pdf(), 400, "it may be a scan"),
    ("locked.pdf", docs.encrypted_pdf(), 400, "protected with a password"),
    ("bomb.docx", docs.zip_bomb_docx(), 400, "would unpack"),
    ("program.exe", b"MZ", 415, "attach PDF, DOCX"),
    ("empty.txt", b"", 400, "is empty"),
])
def test_bad_files_get_a_4xx_with_a_sentence_and_store_nothing(app, name, data, status, words):
    client = app.test_client()
    cid = new_chat(client)
    answer = upload(client, cid, name, data)
    assert answer.status_code == status and words in answer.get_json()["error"]["message"]
    assert name in answer.get_json()["error"]["message"] or status == 413
    assert client.get(f"/api/conversations/{cid}").get_json()["drafts"] == []


def test_size_quota_and_request_shape_limits(make_app):
    app = make_app(WEBBOT_MAX_DOCUMENT_BYTES=50_000, WEBBOT_DOCUMENT_QUOTA_BYTES=60_000)
    client = app.test_client()
    cid = new_chat(client)
    big = upload(client, cid, "big.txt", b"word " * 20_000)
    assert big.status_code == 413 and "the limit is 0.05 MB" in big.get_json()["error"]["message"]
    assert upload(client, cid, "a.txt", b"one two three " * 2500).status_code == 201
    over = upload(client, cid, "b.txt", b"four five six " * 2500)
    assert over.status_code == 413 and "each person may keep 0.06 MB" in over.get_json()["error"]["message"]
    not_multipart = client.post(f"/api/conversations/{cid}/documents", json={"file": "x"})
    assert not_multipart.status_code == 415
    missing = client.post(f"/api/conversations/{cid}/documents", data={"other": "x"},
                          content_type="multipart/form-data")
    assert missing.status_code == 400 and "named 'file'" in missing.get_json()["error"]["message"]
    for bad in ("not a list", [1, 2], ["x"] * 11):
        answer = client.post(f"/api/conversations/{cid}/messages", json={"content": "hi", "documents": bad})
        assert answer.status_code == 400 and "'documents'" in answer.get_json()["error"]["message"]
    unknown = client.get(f"/api/conversations/{cid}/documents/nope")
    assert unknown.status_code == 404


# ---- /v1 --------------------------------------------------------------------------------------------------

def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def completion(client, content, address="10.0.0.1"):
    return client.post("/v1/chat/completions", environ_base={"REMOTE_ADDR": address},
                       json={"model": "x", "max_tokens": 3, "messages": [{"role": "user", "content": content}]})


def test_v1_file_parts_inline_and_by_id_are_owner_only(app):
    client = app.test_client()
    inline = completion(client, [{"type": "text", "text": docs.QUESTION},
                                 {"type": "file", "file": {"filename": "report.pdf",
                                                           "file_data": data_url(docs.pdf(20), "application/pdf")}}])
    assert inline.status_code == 200, inline.get_json()
    assert inline.get_json()["usage"]["prompt_tokens"] > 200  # the passage went in
    alone = completion(client, [{"type": "file", "file": {"filename": "n.txt",
                                                          "file_data": data_url(b"Just a note.", "text/plain")}}])
    assert alone.status_code == 200  # a file alone is a message
    guide = docs.docx()
    made = client.post("/v1/files", environ_base={"REMOTE_ADDR": "10.0.0.1"},
                       data={"purpose": "user_data", "file": (io.BytesIO(guide), "guide.docx")},
                       content_type="multipart/form-data")
    assert made.status_code == 200 and made.get_json()["object"] == "file"
    file_id = made.get_json()["id"]
    by_id = completion(client, [{"type": "text", "text": docs.QUESTION},
                                {"type": "file", "file": {"file_id": file_id}}])
    assert by_id.status_code == 200
    other = completion(client, [{"type": "text", "text": "hi"}, {"type": "file", "file": {"file_id": file_id}}],
                       address="10.0.0.2")
    assert other.status_code == 404 and "upload it with POST /v1/files" in other.get_json()["error"]["message"]
    for method, path in (("GET", f"/v1/files/{file_id}"), ("GET", f"/v1/files/{file_id}/content"),
                         ("DELETE", f"/v1/files/{file_id}")):
        assert client.open(path, method=method, environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 404
    assert client.get("/v1/files", environ_base={"REMOTE_ADDR": "10.0.0.2"}).get_json()["data"] == []
    mine = client.get("/v1/files", environ_base={"REMOTE_ADDR": "10.0.0.1"}).get_json()["data"]
    assert [f["id"] for f in mine] == [file_id]
    content = client.get(f"/v1/files/{file_id}/content", environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert content.data == guide
    gone = client.delete(f"/v1/files/{file_id}", environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert gone.get_json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 404


@pytest.mark.parametrize("part, status, words", [
    ({"filename": "a.pdf", "file_data": "not a data url"}, 400, "must be a data URL"),
    ({"filename": "a.pdf", "file_data": "data:application/pdf;base64,@@@"}, 400, "not valid base64"),
    ({"filename": "scan.pdf", "file_data": data_url(docs.image_pdf(), "application/pdf")}, 400, "it may be a scan"),
    ({"filename": "a.exe", "file_data": data_url(b"MZ", "application/octet-stream")}, 415, "attach PDF"),
    ({"file_id": "file-nope"}, 404, "upload it with POST /v1/files"),
])
def test_v1_bad_file_parts_get_a_sentence(app, part, status, words):
    answer = completion(app.test_client(), [{"type": "text", "text": "hi"}, {"type": "file", "file": part}])
    assert answer.status_code == status and words in answer.get_json()["error"]["message"]


def test_v1_files_refuses_a_wrong_purpose(app):
    answer = app.test_client().post("/v1/files", data={"purpose": "fine-tune", "file": (io.BytesIO(b"x"), "a.txt")},
                                    content_type="multipart/form-data")
    assert answer.status_code == 400 and "'purpose' must be user_data" in answer.get_json()["error"]["message"]


def test_export_and_import_keep_the_files_and_what_the_replies_read(app):
    alice, bob = app.test_client(), app.test_client()
    cid = new_chat(alice)
    pdf = docs.pdf(20)
    document = upload(alice, cid, "report.pdf", pdf).get_json()
    assert send(alice, cid, docs.QUESTION, [document["id"]])[0] == 200
    exported = alice.get(f"/api/conversations/{cid}/export").get_json()
    conversation = exported["conversations"][0]
    assert conversation["documents"][0]["name"] == "report.pdf"
    assert base64.b64decode(conversation["documents"][0]["data"]) == pdf
    assert conversation["messages"][1]["sources"][0]["source"] == "report.pdf p. 13"
    markdown = alice.get(f"/api/conversations/{cid}/export?format=markdown").get_data(as_text=True)
    assert "*Attached: report.pdf*" in markdown
    # Bob imports Alice's file: his own copy, new ids, the same bytes and citations
    made = bob.post("/api/import", json=exported)
    assert made.status_code == 201, made.get_json()
    new_cid = made.get_json()["conversations"][0]["id"]
    shown = bob.get(f"/api/conversations/{new_cid}").get_json()
    copy = shown["messages"][0]["documents"][0]
    assert copy["name"] == "report.pdf" and copy["pages"] == 20 and copy["id"] != document["id"]
    assert shown["messages"][1]["sources"] == [{"document": copy["id"], "source": "report.pdf p. 13"}]
    assert bob.get(f"/api/conversations/{new_cid}/documents/{copy['id']}").data == pdf
    assert alice.get(f"/api/conversations/{new_cid}/documents/{copy['id']}").status_code == 404
    # a file in an import is read like an upload: a bad one is refused, by name, and nothing is stored
    conversation["documents"][0]["data"] = base64.b64encode(docs.image_pdf()).decode()
    refused = bob.post("/api/import", json=exported)
    assert refused.status_code == 400 and "report.pdf" in refused.get_json()["error"]["message"]
    conversation["documents"][0]["data"] = "@@not base64"
    refused = bob.post("/api/import", json=exported)
    assert refused.status_code == 400 and "not base64" in refused.get_json()["error"]["message"]
    assert len(bob.get("/api/conversations").get_json()["conversations"]) == 1


def test_files_on_postgresql(make_app, pg_url):
    app = make_app(WEBBOT_DATABASE_URL=pg_url)
    alice, bob = app.test_client(), app.test_client()
    cid = new_chat(alice)
    pdf = docs.pdf(20)
    document = upload(alice, cid, "report.pdf", pdf).get_json()
    status, _ = send(alice, cid, docs.QUESTION, [document["id"]])
    assert status == 200
    shown = alice.get(f"/api/conversations/{cid}").get_json()
    assert shown["messages"][1]["sources"][0]["source"] == "report.pdf p. 13"
    url = f"/api/conversations/{cid}/documents/{document['id']}"
    assert alice.get(url).data == pdf and bob.get(url).status_code == 404
    alice.delete(f"/api/conversations/{cid}")
    app.extensions["webbot"].store.purge_deleted(float("inf"))
    assert app.extensions["webbot"].documents.used_bytes(shown["conversation"]["owner"]) == 0
