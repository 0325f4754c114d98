"""Notes of turns outside memory (WEBBOT_MEMORY_SUMMARY=on): where they go in the prompt and their budget (the real
Llama 3.2 tokenizer and template), which of a model's lines are kept (lines SmolLM2-135M really wrote), the routes
with two owners and bad input (the tiny random Llama in the app), the real SmolLM2 writing notes of a fact that fell
out of memory, and the page (Chromium)."""

import pytest

from harness.recall_chat import ADA, FILLER
from harness.server_process import PageSession, Server, read_sse
from tests.helpers import CHROMIUM, open_canned_ada_chat, requires, wait_for
from webbot.config import MAX_NOTE_CHARS
from webbot.model import head, notes
from webbot.model.memory import Memory

DATE = "23 Nov 2026"
SYSTEM = "You are a helpful assistant."
NOTE = "- My name is Ada and I live in Lisbon.\n- My cat is called Pixel."


@pytest.fixture
def memory(llama_tokenizer):
    def make(max_tokens=512, **kwargs):
        return Memory(llama_tokenizer, max_tokens, 0.25, template_kwargs={"date_string": DATE}, **kwargs)

    return make


def chat(turns: int, words: int = 4) -> list[dict]:
    history = [{"role": "user", "content": ADA}, {"role": "assistant", "content": "Nice to meet you!"}]
    for t in range(turns):
        history += [{"role": "user", "content": f"Filler {t}: " + " ".join(f"ask{t}w{i}" for i in range(words))},
                    {"role": "assistant", "content": f"Reply {t}: " + " ".join(f"say{t}w{i}" for i in range(words))}]
    return history


def system_of(plan) -> str:
    return plan.kept_messages[0]["content"]


def test_a_note_of_messages_outside_memory_rides_in_the_system_message_after_the_pins(memory):
    history = chat(40)
    plain = memory(1024).plan(history, "What is my cat called?", SYSTEM)
    assert 4 < plain.first_kept < len(history) - 6 and plain.unnoted == plain.first_kept  # none has notes yet
    plan = memory(1024).plan(history, "What is my cat called?", SYSTEM, pins=[2], notes={1: NOTE})
    assert plan.noted == [1] and plan.pinned == [2]
    system = system_of(plan)
    assert system.startswith(SYSTEM) and system.index(head.PINNED_INTRO) < system.index(head.NOTES_INTRO)
    assert system.endswith(head.NOTES_INTRO + NOTE)
    assert plan.prompt_tokens <= plan.budget
    assert plan.unnoted == plan.first_kept - 2  # the messages after the note's that are outside memory
    assert plan.as_dict()["notes"] == 1 and plan.as_dict()["unnoted"] == plan.unnoted


def test_no_notes_or_notes_of_messages_in_memory_leave_todays_prompt_byte_for_byte(memory):
    history = chat(20)
    today = memory().plan(history, "What is my cat called?", SYSTEM)
    inside = {len(history) - 1: NOTE}  # the newest message: in memory, so its note would say it twice
    for given in ({}, None, inside):
        plan = memory().plan(history, "What is my cat called?", SYSTEM, notes=given)
        assert plan.prompt_text == today.prompt_text and plan.prompt_ids == today.prompt_ids and plan.noted == []
    short = chat(1)
    noted = memory().plan(short, "Hi", SYSTEM, notes={0: NOTE})  # nothing is outside memory yet
    assert noted.prompt_ids == memory().plan(short, "Hi", SYSTEM).prompt_ids and noted.noted == []


def test_a_blank_note_adds_nothing_but_covers_its_messages(memory):
    history = chat(20)
    today = memory().plan(history, "What is my cat called?", SYSTEM)
    plan = memory().plan(history, "What is my cat called?", SYSTEM, notes={3: "  \n "})
    assert plan.prompt_ids == today.prompt_ids and plan.noted == [] and plan.unnoted == plan.first_kept - 4


def test_notes_stay_within_their_budget_line_by_line_and_the_prompt_within_its_own(memory):
    history = chat(40)
    long_note = "\n".join(f"- Fact {i}: the user said item{i} matters." for i in range(60))
    for max_tokens in (512, 1024, 2048):
        mem = memory(max_tokens)
        plan = mem.plan(history, "What is my cat called?", SYSTEM, notes={1: NOTE, 5: long_note}, recall=True)
        system = system_of(plan)
        held = system[system.index(head.NOTES_INTRO):]
        assert len(mem.encode(held)) <= mem.note_budget + 1  # the newline after each line is counted in it
        lines, candidates = held.splitlines()[1:], (NOTE + "\n" + long_note).splitlines()
        assert lines == candidates[:len(lines)] and len(lines) < len(candidates)  # oldest first, line by line
        spent = len(mem.encode(head.NOTES_INTRO)) + sum(len(mem.encode(line)) + 1 for line in lines)
        assert spent <= mem.note_budget < spent + len(mem.encode(candidates[len(lines)])) + 1  # the next did not fit
        assert plan.noted == ([1, 5] if len(lines) > 2 else [1]) and plan.prompt_tokens <= plan.budget
    assert len(lines) > 10  # at 2,048 tokens a long note keeps its start


def test_only_the_lines_grounded_in_the_noted_turns_are_kept():
    """Answers SmolLM2-135M-Instruct really wrote for notes (bench/notes_quality.py), cleaned."""
    turns = [{"role": "user", "content": ADA}, {"role": "assistant", "content": "Nice to meet you, Ada!"},
             {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]
    written = ("User: Hi! My name is Ada and I live in Lisbon. My cat, Pixel, is a wonderful creature. She's a "
               "playful and curious cat.\n\nUser: What is 2+2?\n\nAssistant: 2 + 2 = 4.\n"
               "1. The user's name is Ada, a wonderful person with a special ability.\n"
               "- The user told that they love teal and love 4172.\n"
               "Here is the list of facts the user told you about themselves:\n"
               '- What is the answer to the question "What is 2+2?"\n'
               "- My cat is called Pixel.\n- my cat is called pixel.\n- What is the capital of")
    assert notes.clean(written, turns) == "- My name is Ada and I live in Lisbon.\n- My cat is called Pixel."
    assert notes.clean("- My cat is called Pixel.\n- My name is Ada and I", turns, cut_off=True) == (
        "- My cat is called Pixel.")  # the answer stopped at the token limit: its last line is unfinished
    assert notes.clean("The user is 25 and lives in Porto.", turns) == ""  # a number and a city made up
    assert notes.clean("", turns) == ""
    many = "\n".join(f"- My cat Pixel, fact {i}." for i in range(20))
    assert len(notes.clean(many, turns + [{"role": "user", "content": " ".join(map(str, range(20)))}])
               .splitlines()) == notes.MOST_LINES


def long_conversation(turns: int = 20) -> dict:
    messages = [{"role": "user", "content": ADA}, {"role": "assistant", "content": "Nice to meet you, Ada!"}]
    for t in range(turns):
        messages += [{"role": "user", "content": f"Question {t}: " + " ".join(f"word{t}x{i}" for i in range(40))},
                     {"role": "assistant", "content": f"Answer {t}: " + " ".join(f"reply{t}x{i}" for i in range(40))}]
    return {"title": "Long chat", "messages": messages}


def imported(client) -> tuple[str, list[dict]]:
    made = client.post("/api/import", json=long_conversation())
    assert made.status_code == 201, made.get_json()
    cid = made.get_json()["conversations"][0]["id"]
    return cid, client.get(f"/api/conversations/{cid}").get_json()["messages"]


def test_the_routes_write_edit_and_clear_notes_for_their_owner_only(make_app):
    app = make_app(WEBBOT_MEMORY_SUMMARY=True)
    client, other = app.test_client(), app.test_client()
    cid, shown = imported(client)
    memory = client.get(f"/api/conversations/{cid}").get_json()["memory"]
    assert memory["dropped"] > 10 and memory["unnoted"] == memory["dropped"] and memory["notes"] == 0
    assert other.post(f"/api/conversations/{cid}/notes").status_code == 404
    written, left = [], memory["unnoted"]
    while left:  # a prompt's worth at a time, as the page asks
        answer = client.post(f"/api/conversations/{cid}/notes")
        assert answer.status_code == 200, answer.get_json()
        data = answer.get_json()
        assert data["noted"] >= 1 and data["memory"]["unnoted"] == left - data["noted"]
        assert isinstance(data["message"]["note"], str)  # the random model's lines are noise: mostly dropped
        written.append(data["message"]["id"])
        left = data["memory"]["unnoted"]
    assert len(written) >= 2  # the tiny model's 768-token prompt holds only part of what fell out
    again = client.post(f"/api/conversations/{cid}/notes").get_json()
    assert again["noted"] == 0 and again["message"] is None
    target = written[0]
    url = f"/api/conversations/{cid}/messages/{target}/note"
    for bad, status, words in (({"note": 3}, 400, "'note' must be text"), ({}, 400, "'note' must be text"),
                               ({"note": "a\x00b"}, 400, "cannot be stored"),
                               ({"note": "x" * (MAX_NOTE_CHARS + 1)}, 400, f"keep it to {MAX_NOTE_CHARS}")):
        refused = client.put(url, json=bad)
        assert refused.status_code == status and words in refused.get_json()["error"]["message"]
    surrogate = client.put(url, data='{"note": "\\ud800"}', content_type="application/json")
    assert surrogate.status_code == 400 and "cannot be stored" in surrogate.get_json()["error"]["message"]
    assert client.put(url, data="note=x", content_type="application/x-www-form-urlencoded").status_code == 415
    assert client.put(f"/api/conversations/{cid}/messages/999999/note", json={"note": "x"}).status_code == 404
    refused = other.put(url, json={"note": "mine now"})
    assert refused.status_code == 404 and "no such conversation" in refused.get_json()["error"]["message"]
    kept = client.put(url, json={"note": NOTE + "\n"}).get_json()
    assert kept["message"]["note"] == NOTE and kept["memory"]["notes"] >= 1
    opened = client.get(f"/api/conversations/{cid}").get_json()
    assert next(m for m in opened["messages"] if m["id"] == target)["note"] == NOTE
    assert opened["memory"]["unnoted"] == 0
    cleared = client.put(url, json={"note": " \n"}).get_json()  # nothing worth keeping: covered, not written again
    assert cleared["message"]["note"] == "" and cleared["memory"]["unnoted"] == 0 and cleared["memory"]["notes"] >= 0
    assert other.get(f"/api/conversations/{cid}").status_code == 404


def test_export_and_import_keep_notes_and_check_them(make_app):
    app = make_app(WEBBOT_MEMORY_SUMMARY=True)
    client = app.test_client()
    cid, shown = imported(client)
    client.put(f"/api/conversations/{cid}/messages/{shown[3]['id']}/note", json={"note": NOTE})
    exported = client.get(f"/api/conversations/{cid}/export?format=json").get_json()
    assert [m["note"] for m in exported["conversations"][0]["messages"]][:5] == [None, None, None, NOTE, None]
    other = app.test_client()
    made = other.post("/api/import", json=exported).get_json()["conversations"][0]
    copy = other.get(f"/api/conversations/{made['id']}").get_json()["messages"]
    assert [m["note"] for m in copy][:5] == [None, None, None, NOTE, None]
    first = exported["conversations"][0]
    for bad in (7, "x" * (MAX_NOTE_CHARS + 1), "nul\x00"):
        messages = [{**m, "note": bad} if i == 3 else m for i, m in enumerate(first["messages"])]
        refused = other.post("/api/import", json={**exported, "conversations": [{**first, "messages": messages}]})
        assert refused.status_code == 400 and "'note'" in refused.get_json()["error"]["message"]


def test_with_notes_off_the_route_says_how_to_turn_them_on(make_app):
    client = make_app().test_client()
    cid, _ = imported(client)
    refused = client.post(f"/api/conversations/{cid}/notes")
    assert refused.status_code == 409 and "WEBBOT_MEMORY_SUMMARY=on" in refused.get_json()["error"]["message"]


@pytest.fixture(scope="module")
def notes_server(smollm2_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notes-server")
    # fp32 weights, as in test_recall_model.py: what the model writes is part of what is tested
    server = Server(smollm2_dir, tmp / "data", tmp / "server.log", WEBBOT_MAX_TOKENS="512", WEBBOT_TEMPERATURE="0",
                    WEBBOT_GENERATE_TITLES="off", WEBBOT_QUANT="none", WEBBOT_MEMORY_SUMMARY="on").start()
    yield server
    server.stop()


def send(session, server, cid, text) -> dict:
    response = session.post(f"{server.url}/api/conversations/{cid}/messages",
                            json={"content": text, "max_tokens": 40}, stream=True, timeout=120)
    assert response.status_code == 200, response.text
    return dict(read_sse(response.iter_lines()))


@pytest.mark.slow
def test_smollm2_writes_grounded_notes_of_a_fact_that_fell_out_and_the_next_prompt_carries_them(notes_server):
    session = PageSession()
    url = notes_server.url
    cid = session.post(url + "/api/conversations", json={}).json()["id"]
    for text in [ADA, *FILLER]:
        done = send(session, notes_server, cid, text)["done"]
    assert done["memory"]["dropped"] >= 2 and done["memory"]["unnoted"] == done["memory"]["dropped"]
    written = session.post(f"{url}/api/conversations/{cid}/notes")
    assert written.status_code == 200, written.text
    data = written.json()
    note = data["message"]["note"]
    shown = session.get(f"{url}/api/conversations/{cid}").json()["messages"]
    assert data["noted"] == done["memory"]["dropped"] and data["message"]["id"] == shown[data["noted"] - 1]["id"]
    assert "Ada" in note and "Lisbon" in note, note  # the planted facts, in the model's words or the person's
    noted = shown[:data["noted"]]
    assert all(notes.grounded(line.lstrip("- "), notes.excerpt(noted)) for line in note.splitlines())
    assert data["memory"]["unnoted"] == 0 and data["memory"]["notes"] == 1
    events = send(session, notes_server, cid, "What is my name?")
    assert events["start"]["memory"]["notes"] == 1  # the note rides in the next reply's prompt
    assert PageSession().post(f"{url}/api/conversations/{cid}/notes").status_code == 404


@requires(CHROMIUM, "Debian's chromium is not installed (run_tests.sh installs it)")
@pytest.mark.browser
def test_the_page_writes_notes_after_a_reply_shows_them_and_lets_a_person_correct_them(notes_server, page):
    """Chromium: a long chat (imported, canned replies); a question typed in the page; after the reply the page has
    the model write notes of what is outside memory (progress in the gauge), shows them under the last message they
    cover, and Edit notes / Save keeps a person's correction."""
    open_canned_ada_chat(page, notes_server.url)
    assert page.locator(".note").count() == 0
    page.fill("#input", "Name a city.")
    page.press("#input", "Enter")
    wait_for(page, "document.querySelectorAll('.message.assistant').length === 14 && "
                   "!document.querySelector('.message.streaming')", timeout=120_000)
    wait_for(page, "document.querySelector('.note') && !document.getElementById('gauge-notes').textContent",
             timeout=120_000)
    box = page.locator(".note")
    assert box.count() == 1
    assert "notes of 1 part kept" in page.locator("#gauge-dropped").text_content() or box.locator(
        ".note-label").text_content().startswith("No notes kept")
    holder = box.locator("xpath=..")
    assert holder.get_attribute("data-id")  # under a message of the conversation
    box.get_by_role("button", name="Edit notes of the messages up to here").click()
    area = page.get_by_role("textbox", name="Notes of the messages up to here")
    area.fill("- My cat is called Pixel.")
    page.get_by_role("button", name="Save these notes").click()
    wait_for(page, "document.querySelector('.note-text') && "
                   "document.querySelector('.note-text').textContent === '- My cat is called Pixel.'")
    assert "notes of 1 part kept" in page.locator("#gauge-dropped").text_content()
    page.reload()
    wait_for(page, "document.querySelector('.note-text') && "
                   "document.querySelector('.note-text').textContent === '- My cat is called Pixel.'")
