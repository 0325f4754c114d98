"""Documents with the real SmolLM2-135M-Instruct (greedy, a 2,048-token context, so a 20-page PDF is ten times
the prompt): attached in Chromium (the button, a drop, removal, a bad file) and asked about, and sent through
/v1 with the official `openai` client's file parts and /v1/files. The planted fact must come back."""

import base64
import io
import json

import pytest
import requests

from harness import documents as docs
from tests.helpers import CHROMIUM, requires, wait_for

pytestmark = [requires(CHROMIUM, "Debian's chromium is not installed (run_tests.sh installs it)")]


def ask_and_wait(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant", timeout=60_000)
    wait_for(page, "!document.querySelector('.message.streaming') && !document.getElementById('send').hidden",
             timeout=120_000)


@pytest.mark.browser
@pytest.mark.slow
def test_attach_a_pdf_ask_about_it_and_find_it_after_a_reload(page, browser, smollm2_server):
    page.goto(smollm2_server.url)
    page.set_input_files("#attach-input", files=[{"name": "report.pdf", "mimeType": "application/pdf",
                                                  "buffer": docs.pdf(20)}])
    wait_for(page, "(document.querySelector('#attachments .chip-meta')?.textContent || '').includes('tokens')")
    assert "20 pages" in page.inner_text("#attachments")
    assert page.get_attribute("#attachments .remove-file", "aria-label") == "Remove report.pdf"
    ask_and_wait(page, docs.QUESTION)
    assert docs.ANSWER in page.inner_text(".message.assistant .body")
    assert page.inner_text(".message.assistant .sources") == "From report.pdf p. 13"
    assert page.is_hidden("#attachments")  # sent: the chip moved onto the message
    page.reload()
    link = page.wait_for_selector(".message.user .message-files a")
    assert link.inner_text() == "report.pdf" and "20 pages" in page.inner_text(".message.user .message-files")
    href = link.get_attribute("href")
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "report.pdf"
    # another browser, with the address, gets nothing
    other = browser.new_context()
    assert other.request.get(smollm2_server.url + href).status == 404
    other.close()


@pytest.mark.browser
def test_drop_a_file_remove_it_and_a_bad_file_says_why(page, smollm2_server):
    page.goto(smollm2_server.url)
    page.evaluate("""(text) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([text], "notes.txt", { type: "text/plain" }));
        const form = document.getElementById("composer");
        form.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        form.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", docs.text_document(3))
    wait_for(page, "(document.querySelector('#attachments .chip-meta')?.textContent || '').includes('tokens')")
    cid = page.url.rsplit("/", 1)[1]
    drafts = page.evaluate("async (c) => (await (await fetch(`/api/conversations/${c}`)).json()).drafts", cid)
    assert [d["name"] for d in drafts] == ["notes.txt"]
    page.reload()  # a draft comes back with its conversation
    page.wait_for_selector("#attachments .chip")
    page.click("#attachments .remove-file")
    assert page.is_hidden("#attachments")
    page.wait_for_timeout(500)  # the removal is sent after the chip goes
    drafts = page.evaluate("async (c) => (await (await fetch(`/api/conversations/${c}`)).json()).drafts", cid)
    assert drafts == []
    page.set_input_files("#attach-input", files=[{"name": "scan.pdf", "mimeType": "application/pdf",
                                                  "buffer": docs.image_pdf()}])
    wait_for(page, "!document.getElementById('notice').hidden")
    assert "it may be a scan" in page.inner_text("#notice-text")
    assert page.is_hidden("#attachments")
    page.problems[:] = [p for p in page.problems if "status of 400" not in p]  # the refusal the test asked for


@pytest.mark.slow
def test_the_openai_client_sends_files_inline_and_by_id(smollm2_server):
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=smollm2_server.url + "/v1", api_key="unused", max_retries=0)

    inline = client.chat.completions.create(model="any", temperature=0, max_tokens=40, messages=[{
        "role": "user", "content": [
            {"type": "file", "file": {"filename": "guide.docx", "file_data": "data:application/vnd.openxmlformats-"
                                      "officedocument.wordprocessingml.document;base64,"
                                      + base64.b64encode(docs.docx()).decode()}},
            {"type": "text", "text": docs.QUESTION}]}])
    assert docs.ANSWER in inline.choices[0].message.content
    uploaded = client.files.create(file=("notes.txt", io.BytesIO(docs.text_document(60).encode())),
                                   purpose="user_data")
    assert uploaded.filename == "notes.txt" and uploaded.bytes > 10_000
    by_id = client.chat.completions.create(model="any", temperature=0, max_tokens=40, messages=[{
        "role": "user", "content": [{"type": "text", "text": docs.QUESTION},
                                    {"type": "file", "file": {"file_id": uploaded.id}}]}])
    assert docs.ANSWER in by_id.choices[0].message.content
    assert [f.id for f in client.files.list().data] == [uploaded.id]
    assert client.files.content(uploaded.id).read() == docs.text_document(60).encode()
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(NotFoundError):
        client.files.retrieve(uploaded.id)
    # a stream works the same way
    stream = client.chat.completions.create(model="any", temperature=0, max_tokens=40, stream=True, messages=[{
        "role": "user", "content": [{"type": "text", "text": docs.QUESTION}, {"type": "file", "file": {
            "filename": "notes.txt", "file_data": "data:text/plain;base64,"
            + base64.b64encode(docs.text_document(60).encode()).decode()}}]}])
    assert docs.ANSWER in "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert json.loads(requests.get(smollm2_server.url + "/healthz").text)
