"""Memory beyond the window with the real SmolLM2-135M-Instruct at a 512-token context, greedy: a fact said at
the start comes back after it fell out of memory, on the page's routes and through /v1; pins; the settings
switch; two owners; export and import. The prompt arithmetic is in test_recall.py."""

import openai
import pytest

from chat_bot import ChatBot
from harness.recall_chat import ADA, FILLER, LOCKER
from harness.server_process import PageSession, Server, read_sse
from tests.helpers import open_canned_ada_chat, wait_for
from webbot.config import DEFAULT_SYSTEM_PROMPT
from webbot.model.memory import recall_block
from webbot.model.stream import SamplingParams

REPLY_TOKENS = 40  # short filler replies keep the test quick; 13 turns still push the first out of 384 tokens


@pytest.fixture(scope="module")
def recall_server(smollm2_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recall-server")
    # fp32 weights: with int8 ones (the CPU default) this 135M model, given the same recalled message, answers
    # "Ada is a cat." instead of naming Pixel; recall's part (what is recalled, and where) is the same either way,
    # and the int8 model's closeness to fp32 is measured in test_quant.py and bench/bench_quant.py.
    server = Server(smollm2_dir, tmp / "data", tmp / "server.log", WEBBOT_MAX_TOKENS="512", WEBBOT_TEMPERATURE="0",
                    WEBBOT_GENERATE_TITLES="off", WEBBOT_QUANT="none").start()
    yield server
    server.stop()


def send(session, server, cid, text, **body) -> dict:
    """Send a message from the page's route; the `start` and `done` events."""
    response = session.post(f"{server.url}/api/conversations/{cid}/messages",
                            json={"content": text, "max_tokens": REPLY_TOKENS, **body}, stream=True, timeout=120)
    assert response.status_code == 200, response.text
    events = dict(read_sse(response.iter_lines()))
    assert "done" in events, events
    return events


def long_chat(session, server, first: str) -> str:
    cid = session.post(server.url + "/api/conversations", json={}).json()["id"]
    for text in [first, *FILLER]:
        send(session, server, cid, text)
    return cid


@pytest.fixture(scope="module")
def ada_chat(recall_server):
    session = PageSession()
    return session, long_chat(session, recall_server, ADA)


@pytest.mark.slow
def test_the_page_recalls_a_fact_that_fell_out_of_memory(recall_server, ada_chat):
    session, cid = ada_chat
    opened = session.get(f"{recall_server.url}/api/conversations/{cid}").json()
    assert opened["memory"]["dropped"] >= 2  # the Ada message is outside memory now
    ada_id = opened["messages"][0]["id"]
    for question, answer in (("What is my cat called?", "Pixel"), ("Which city do I live in?", "Lisbon")):
        events = send(session, recall_server, cid, question)
        assert events["start"]["memory"]["recalled"] >= 1
        assert ada_id in events["start"]["reply"]["recalled"]
        done = events["done"]
        assert answer in done["message"]["content"], done["message"]["content"]
        assert ada_id in done["message"]["recalled"] and done["memory"]["recalled"] >= 1
    stored = session.get(f"{recall_server.url}/api/conversations/{cid}").json()
    assert ada_id in stored["messages"][-1]["recalled"]  # kept with the reply, after a reload too


@pytest.mark.slow
def test_without_recall_the_same_question_misses(recall_server, ada_chat):
    """The control: the switch off, the same model and question do not find the name (so the pass above is
    recall's doing)."""
    session, cid = ada_chat
    session.patch(f"{recall_server.url}/api/conversations/{cid}", json={"settings": {"recall": False}})
    try:
        events = send(session, recall_server, cid, "What is my cat called?")
        assert events["start"]["memory"]["recalled"] == 0 and events["done"]["message"]["recalled"] == []
        assert "Pixel" not in events["done"]["message"]["content"]
    finally:
        session.patch(f"{recall_server.url}/api/conversations/{cid}", json={"settings": None})


@pytest.mark.slow
def test_a_number_comes_back_too(recall_server):
    session = PageSession()
    cid = long_chat(session, recall_server, LOCKER)
    for question, answer in (("What is my locker number?", "4172"),):
        done = send(session, recall_server, cid, question)["done"]
        assert answer in done["message"]["content"].lower(), done["message"]["content"]


@pytest.mark.slow
def test_v1_recalls_from_the_messages_the_client_sent(recall_server, ada_chat):
    """An OpenAI client that keeps the page's conversation (and the server's system prompt) and sends it whole
    gets the same recall as the page: /v1 ranks the part of the messages that no longer fits."""
    session, cid = ada_chat
    shown = session.get(f"{recall_server.url}/api/conversations/{cid}").json()["messages"]
    history = [{"role": m["role"], "content": m["content"]} for m in shown[:2 * (1 + len(FILLER))]]
    asked = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *history,
             {"role": "user", "content": "What is my cat called?"}]
    client = openai.OpenAI(base_url=recall_server.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=REPLY_TOKENS, messages=asked)
    assert "Pixel" in reply.choices[0].message.content, reply.choices[0].message.content
    assert reply.usage.prompt_tokens <= 384  # the whole history would not fit: its first message was outside


@pytest.mark.slow
def test_a_pinned_message_is_kept_in_mind_and_only_its_owner_can_pin(recall_server, ada_chat):
    session, cid = ada_chat
    url = recall_server.url
    shown = session.get(f"{url}/api/conversations/{cid}").json()["messages"]
    ada_id = shown[0]["id"]
    other = PageSession()
    for body in ({"pinned": True}, {"pinned": False}):
        refused = other.post(f"{url}/api/conversations/{cid}/messages/{ada_id}/pin", json=body)
        assert refused.status_code == 404 and "no such conversation" in refused.json()["error"]["message"]
    unknown = session.post(f"{url}/api/conversations/{cid}/messages/999999/pin", json={"pinned": True})
    assert unknown.status_code == 404 and "no such message" in unknown.json()["error"]["message"]
    for bad in ({}, {"pinned": "yes"}, {"pinned": None}):
        refused = session.post(f"{url}/api/conversations/{cid}/messages/{ada_id}/pin", json=bad)
        assert refused.status_code == 400 and "'pinned' must be true or false" in refused.json()["error"]["message"]
    pinned = session.post(f"{url}/api/conversations/{cid}/messages/{ada_id}/pin", json={"pinned": True})
    assert pinned.status_code == 200 and pinned.json()["message"]["pinned"] is True
    assert pinned.json()["memory"]["pinned"] == 1
    try:
        events = send(session, recall_server, cid, "What is my cat called?")
        assert events["start"]["memory"]["pinned"] == 1
        # A pinned message that matches is recalled next to the question as well. Whether the answer uses it is
        # the model's part: SmolLM2-135M reads a pin in the system message poorly (1 of 5 planted facts answered
        # from pins alone, bench/recall_forms.py), so this test checks where the pin goes, not the answer.
        assert ada_id in events["done"]["message"]["recalled"]
        opened = session.get(f"{url}/api/conversations/{cid}").json()
        assert opened["messages"][0]["pinned"] is True and opened["memory"]["pinned"] == 1
        assert other.get(f"{url}/api/conversations/{cid}").status_code == 404
    finally:
        session.post(f"{url}/api/conversations/{cid}/messages/{ada_id}/pin", json={"pinned": False})


@pytest.mark.slow
def test_a_pin_that_does_not_fit_is_refused_and_changes_nothing(recall_server):
    session = PageSession()
    url = recall_server.url
    long_text = "Remember all of this: " + " ".join(f"item{i}" for i in range(40))
    cid = session.post(url + "/api/conversations", json={}).json()["id"]
    message_id = send(session, recall_server, cid, long_text, max_tokens=4)["start"]["user"]["id"]
    refused = session.post(f"{url}/api/conversations/{cid}/messages/{message_id}/pin", json={"pinned": True})
    assert refused.status_code == 413
    sentence = refused.json()["error"]["message"]
    assert "pinned messages share" in sentence and "Unpin another" in sentence
    assert session.get(f"{url}/api/conversations/{cid}").json()["messages"][0]["pinned"] is False


@pytest.mark.slow
def test_export_and_import_keep_pins_and_what_was_recalled(recall_server, ada_chat):
    session, cid = ada_chat
    url = recall_server.url
    shown = session.get(f"{url}/api/conversations/{cid}").json()["messages"]
    session.post(f"{url}/api/conversations/{cid}/messages/{shown[2]['id']}/pin", json={"pinned": True})
    try:
        exported = session.get(f"{url}/api/conversations/{cid}/export?format=json").json()
    finally:
        session.post(f"{url}/api/conversations/{cid}/messages/{shown[2]['id']}/pin", json={"pinned": False})
    other = PageSession()
    made = other.post(f"{url}/api/import", json=exported).json()["conversations"][0]
    copy = other.get(f"{url}/api/conversations/{made['id']}").json()["messages"]
    assert [m["pinned"] for m in copy] == [i == 2 for i in range(len(copy))]
    recalled = [(i, m["recalled"]) for i, m in enumerate(shown) if m["recalled"]]
    assert recalled  # the tests above left replies that recalled the first message
    for index, ids in recalled:
        assert copy[index]["recalled"] == [copy[shown.index(next(m for m in shown if m["id"] == old))]["id"]
                                           for old in ids]
    first = exported["conversations"][0]
    messages = [{**m, "recalled": [123456]} for m in first["messages"]]
    bad = {**exported, "conversations": [{**first, "messages": messages}]}
    refused = other.post(f"{url}/api/import", json=bad)
    assert refused.status_code == 400 and "'recalled'" in refused.json()["error"]["message"]


@pytest.mark.slow
def test_greedy_replies_are_the_same_with_kv_reuse_on_or_off_when_recall_is_active(smollm2_dir):
    """And with reuse on, the turn after a recall reuses at least everything before that recall's block."""
    replies = {}
    for reuse in (True, False):
        # fp32 weights: int8's two products (the kernel for a few rows, dequantised blocks for a chunk) agree
        # after bf16 rounding on AVX2 machines but not on every CPU (one with AVX-512 changed the last reply), and
        # which product a token meets depends on what was reused
        bot = ChatBot(str(smollm2_dir), max_tokens=512, kv_reuse=reuse, quant="none").load()
        try:
            history, outputs, previous, previous_history = [], [], None, []
            for text in [ADA, *FILLER, "What is my cat called?", "Which city do I live in?", "Name a colour."]:
                plan = bot.plan(history, text, recall=True, owner="someone")
                stream = bot.generate(plan, SamplingParams(temperature=0.0, max_new_tokens=16), "someone")
                reply = "".join(stream)
                outputs.append((plan.recalled, reply))
                cached = stream.usage()["prompt_tokens_details"]["cached_tokens"]
                if reuse and previous is not None and previous.recalled and plan.first_kept == previous.first_kept:
                    block = recall_block([previous_history[i] for i in previous.recalled])
                    before_block = len(bot.memory.encode(previous.prompt_text[:previous.prompt_text.index(block)]))
                    assert cached >= before_block - 1, (cached, before_block)
                if not reuse:
                    assert cached == 0
                previous, previous_history = plan, list(history)
                history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
            replies[reuse] = outputs
        finally:
            bot.close()
    assert replies[True] == replies[False]
    assert replies[True][-3][0] and replies[True][-2][0]  # recall was active on the last questions


@pytest.mark.browser
def test_the_page_says_what_was_recalled_and_shows_it(recall_server, page):
    """Chromium: a long chat (imported, with short canned replies), then a question typed in the page; the gauge
    says how many messages are outside memory and how many were recalled, the reply lists what it recalled, and
    the link scrolls to that message."""
    open_canned_ada_chat(page, recall_server.url)
    gauge = page.locator("#gauge-dropped")
    assert "outside memory" in gauge.text_content() and "recalled" not in gauge.text_content()
    page.fill("#input", "What is my cat called?")
    page.press("#input", "Enter")
    wait_for(page, "document.querySelectorAll('.message.assistant').length === 14 && "
                   "!document.querySelector('.message.streaming')", timeout=120_000)
    assert "1 recalled for this reply" in gauge.text_content() and "outside memory" in gauge.text_content()
    reply = page.locator(".message.assistant").last  # (what it says is tested on the model's own history above)
    link = reply.locator(".recalled-link")
    assert link.count() == 1 and "My name is Ada" in link.text_content()
    assert "Recalled 1 earlier message" in reply.locator(".recalled-label").text_content()
    page.locator(".messages").evaluate("box => { box.scrollTop = box.scrollHeight; }")
    link.click()
    first = page.locator(".message").first
    wait_for(page, "document.querySelector('.message').classList.contains('highlight')")
    box, view = first.bounding_box(), page.locator(".messages").bounding_box()
    assert view["y"] <= box["y"] + box["height"] and box["y"] <= view["y"] + view["height"]  # scrolled into view
    page.reload()  # the list is stored with the reply
    wait_for(page, "document.querySelectorAll('.message.assistant .recalled-link').length === 1")
    pin = page.locator(".message.user").first.locator(".pin")
    pin.click()
    wait_for(page, "document.querySelector('.message.user').classList.contains('pinned')")
    assert pin.get_attribute("aria-pressed") == "true" and pin.text_content() == "Unpin"
    assert "1 pinned" in gauge.text_content()
