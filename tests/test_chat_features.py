"""The chat page's routes behind its features, in-process on the tiny real Llama: branches (edit,
regenerate, switch), continue, settings, delete and undo, search (SQLite FTS5 and PostgreSQL), export and
import, generated titles, the migration that brought branches, and every bad input's 4xx sentence."""

import json
import time

import pytest
from sqlalchemy import text

from harness.server_process import read_sse
from webbot.storage import conversations as store_module
from webbot.storage import database
from webbot.web.services import services


def new_conversation(client, **body) -> str:
    return client.post("/api/conversations", json=body).json["id"]


def stream(client, path, **body) -> list:
    with client.post(path, json={"max_tokens": 6, **body}) as response:
        assert response.status_code == 200, response.get_data(as_text=True)
        return read_sse(response.get_data(as_text=True).splitlines(keepends=True))


def view(client, cid) -> dict:
    return client.get(f"/api/conversations/{cid}").json


def test_edit_and_regenerate_add_versions_and_switching_shows_each_branch(client):
    cid = new_conversation(client)
    stream(client, f"/api/conversations/{cid}/messages", content="first")
    stream(client, f"/api/conversations/{cid}/messages", content="second")
    shown = view(client, cid)["messages"]
    second_question, old_reply = shown[2], shown[3]

    events = stream(client, f"/api/conversations/{cid}/messages/{old_reply['id']}/regenerate")
    assert events[0][0] == "start" and events[0][1]["user"] is None and events[-1][0] == "done"
    shown = view(client, cid)["messages"]
    assert len(shown) == 4 and shown[3]["versions"] == [old_reply["id"], events[0][1]["reply_id"]]

    stream(client, f"/api/conversations/{cid}/messages/{second_question['id']}/edit", content="second, edited")
    shown = view(client, cid)["messages"]
    assert [m["content"] for m in shown if m["role"] == "user"] == ["first", "second, edited"]
    assert shown[2]["versions"][0] == second_question["id"] and len(shown[2]["versions"]) == 2

    back = client.post(f"/api/conversations/{cid}/branch", json={"message_id": second_question["id"]}).json
    assert [m["content"] for m in back["messages"] if m["role"] == "user"] == ["first", "second"]
    assert back["messages"][3]["id"] == events[0][1]["reply_id"]  # the newest reply of that branch
    stream(client, f"/api/conversations/{cid}/messages", content="third")  # goes on from the shown branch
    shown = view(client, cid)["messages"]
    assert [m["content"] for m in shown if m["role"] == "user"] == ["first", "second", "third"]


def test_continue_appends_to_a_cut_off_reply_and_the_model_sees_its_start(client, tiny_bot):
    cid = new_conversation(client)
    done = stream(client, f"/api/conversations/{cid}/messages", content="Tell a story", max_tokens=5)[-1][1]
    assert done["message"]["status"] == "length"
    reply = done["message"]
    events = stream(client, f"/api/conversations/{cid}/messages/{reply['id']}/continue", max_tokens=5)
    assert events[0][1]["reply_id"] == reply["id"]
    final = events[-1][1]["message"]
    added = "".join(d["text"] for e, d in events if e == "token")
    assert final["content"] == reply["content"] + added and added
    stored = view(client, cid)["messages"]
    assert len(stored) == 2 and stored[1]["content"] == final["content"]
    # What the model was given: the template rendered up to the reply's first words, left open.
    plan = tiny_bot.plan([], "Tell a story", None, reply["content"])
    assert plan.continuing and plan.prompt_text.endswith(reply["content"].strip())  # the template trims


@pytest.mark.parametrize("status", ["complete", "error"])
def test_only_a_cut_off_reply_with_text_can_be_continued(app, client, status):
    cid = new_conversation(client)
    stream(client, f"/api/conversations/{cid}/messages", content="hi")
    store = services(app).store
    reply = store.messages(cid)[-1]
    store.finish_message(reply["id"], reply["content"], status)
    refused = client.post(f"/api/conversations/{cid}/messages/{reply['id']}/continue", json={})
    assert refused.status_code == 409 and "regenerate it instead" in refused.json["error"]["message"]


def test_bad_inputs_get_a_4xx_sentence_and_change_nothing(client):
    cid = new_conversation(client)
    stream(client, f"/api/conversations/{cid}/messages", content="hi")
    user, reply = view(client, cid)["messages"]
    cases = [
        ("post", f"/api/conversations/{cid}/messages/{reply['id']}/edit", {"content": "x"}, 404, "no user message"),
        ("post", f"/api/conversations/{cid}/messages/{user['id']}/regenerate", {}, 404, "no assistant message"),
        ("post", f"/api/conversations/{cid}/messages/999999/continue", {}, 404, "reload the page"),
        ("post", f"/api/conversations/{cid}/messages/{user['id']}/edit", {"content": "  "}, 400, "empty"),
        ("post", f"/api/conversations/{cid}/branch", {"message_id": 999999}, 404, "no such message"),
        ("patch", f"/api/conversations/{cid}", {"pinned": "yes"}, 400, "true or false"),
        ("patch", f"/api/conversations/{cid}", {}, 400, "at least one of"),
        ("patch", f"/api/conversations/{cid}", {"settings": {"temperature": 5}}, 400, "from 0 to 2"),
        ("patch", f"/api/conversations/{cid}", {"settings": {"max_tokens": 100_000}}, 400, "from 1 to 256"),
        ("patch", f"/api/conversations/{cid}", {"settings": {"colour": "red"}}, 400, "Unknown setting 'colour'"),
        ("patch", f"/api/conversations/{cid}", {"settings": "warm"}, 400, "must be an object"),
        ("put", "/api/settings", {"top_p": 0}, 400, "Top p must be a number from 0.01 to 1"),
        ("put", "/api/settings", {"system_prompt": "x" * 9000}, 400, "at most 8000 characters"),
        ("post", "/api/conversations/nope/title", {}, 404, "no such conversation"),
        ("post", "/api/conversations/nope/restore", {}, 404, "cannot be restored"),
        ("post", "/api/import", {"conversations": []}, 400, "holds no conversations"),
        ("post", "/api/import", {"conversations": [{"messages": [{"role": "user", "content": 3}]}]}, 400,
         "message 1 of conversation 1 needs 'content'"),
        ("post", "/api/import", {"conversations": [{"messages": [{"id": 1, "parent": 7, "role": "user",
                                                                   "content": "x"}]}]}, 400, "names a parent"),
        ("post", "/api/import", [1, 2], 400, "is not an export"),
    ]
    for method, path, body, status, words in cases:
        response = getattr(client, method)(path, json=body)
        assert response.status_code == status and words in response.json["error"]["message"], (path, body,
                                                                                               response.json)
    assert client.get("/api/search?q=" + "x" * 300).status_code == 400
    assert client.post("/api/import", data="{not json", content_type="application/json").status_code == 400
    assert client.post("/api/import", data="a,b", content_type="text/csv").status_code == 415
    empty = client.post(f"/api/conversations/{new_conversation(client)}/title", json={})
    assert empty.status_code == 409 and "send a message first" in empty.json["error"]["message"]
    after = view(client, cid)
    assert [m["content"] for m in after["messages"]] == [user["content"], reply["content"]]
    assert after["conversation"]["settings"] is None and client.get("/api/settings").json["saved"] == {}
    assert len(client.get("/api/conversations").json["conversations"]) == 2  # no import landed


def test_a_reply_that_answers_no_message_cannot_be_regenerated_or_continued(client):
    imported = client.post("/api/import", json={"title": "Odd", "messages": [
        {"role": "assistant", "content": "I speak first.", "status": "length"}]}).json["conversations"][0]
    reply = view(client, imported["id"])["messages"][0]
    for action in ("regenerate", "continue"):
        refused = client.post(f"/api/conversations/{imported['id']}/messages/{reply['id']}/{action}", json={})
        assert refused.status_code == 409 and "send a new message instead" in refused.json["error"]["message"]
    assert view(client, imported["id"])["messages"] == [reply]


def test_settings_layers_reach_the_reply(client, app):
    cid = new_conversation(client)
    gauge = view(client, cid)["memory"]["used"]
    assert client.put("/api/settings", json={"system_prompt": "Answer in French, always and only in French. " * 8,
                                             "max_tokens": 7}).status_code == 200
    assert view(client, cid)["memory"]["used"] > gauge  # the longer default system prompt is counted
    done = stream(client, f"/api/conversations/{cid}/messages", content="hi", max_tokens=None)[-1][1]
    assert done["usage"]["completion_tokens"] == 7  # the person's default
    client.patch(f"/api/conversations/{cid}", json={"settings": {"max_tokens": 3}})
    done = stream(client, f"/api/conversations/{cid}/messages", content="hi", max_tokens=None)[-1][1]
    assert done["usage"]["completion_tokens"] == 3  # the conversation's own wins
    assert view(client, cid)["settings"]["system_prompt"].startswith("Answer in French")
    limits = client.get("/api/settings").json["limits"]
    assert limits["context_tokens"] == 1024 and limits["max_tokens"] == 256 and limits["prompt_tokens"] == 768


def test_a_deleted_conversation_can_be_restored_for_a_minute_then_it_is_gone(client, app, monkeypatch):
    cid = new_conversation(client, title="Keep me")
    stream(client, f"/api/conversations/{cid}/messages", content="hello")
    assert client.delete(f"/api/conversations/{cid}").status_code == 204
    assert client.get(f"/api/conversations/{cid}").status_code == 404
    assert client.get("/api/conversations").json["conversations"] == []
    assert client.post(f"/api/conversations/{cid}/restore").json["title"] == "Keep me"
    assert len(view(client, cid)["messages"]) == 2  # messages back too
    client.delete(f"/api/conversations/{cid}")
    monkeypatch.setattr(store_module, "UNDO_S", 0.0)
    time.sleep(0.01)
    client.delete(f"/api/conversations/{new_conversation(client)}")  # any delete purges the expired ones
    assert client.post(f"/api/conversations/{cid}/restore").status_code == 404
    assert services(app).store.messages(cid) == []


def test_search_matches_every_word_by_prefix_only_in_ones_own_conversations(app, client):
    cid = new_conversation(client, title="Kitchen notes")
    store = services(app).store
    store.add_message(cid, "user", "How long do I boil an egg?")
    store.add_message(cid, "assistant", "Boil the egg for nine minutes, then cool it in café water.")
    results = client.get("/api/search?q=boil nine").json["results"]
    assert len(results) == 1 and results[0]["conversation_id"] == cid
    assert "\x02nine\x03" in results[0]["snippet"] and results[0]["message_id"]
    assert client.get("/api/search?q=kitch").json["results"][0]["snippet"] == "\x02Kitchen\x03 notes"
    assert client.get("/api/search?q=cafe").json["results"]  # accents ignored
    assert client.get("/api/search?q=boil pizza").json["results"] == []
    assert client.get('/api/search?q="egg"* (boil^ NEAR').json["results"] == [] and \
        client.get('/api/search?q="egg"* (boil^').json["results"]  # query syntax is only ever words
    assert client.get("/api/search?q=").json["results"] == []
    other = app.test_client()
    assert other.get("/api/search?q=egg").json["results"] == []  # someone else's conversations stay hidden
    store.rename(_owner(app, cid), cid, "Recipes")
    assert client.get("/api/search?q=kitchen").json["results"] == []  # the index follows renames
    client.delete(f"/api/conversations/{cid}")
    assert client.get("/api/search?q=egg").json["results"] == []  # deleted ones are not found


def _owner(app, cid) -> str:
    with services(app).store.engine.connect() as db:
        return db.execute(text("SELECT owner FROM conversations WHERE id = :id"), {"id": cid}).scalar_one()


def test_search_on_postgresql(make_app, pg_url):
    app = make_app(WEBBOT_DATABASE_URL=pg_url)
    client = app.test_client()
    cid = new_conversation(client, title="Garden plans")
    services(app).store.add_message(cid, "assistant", "Plant the tomatoes after the last frost.")
    hit = client.get("/api/search?q=tomato frost").json["results"]
    assert len(hit) == 1 and "\x02tomatoes\x03" in hit[0]["snippet"]
    assert client.get("/api/search?q=gard").json["results"][0]["snippet"].startswith("\x02Garden\x03")


def test_export_and_import_keep_every_branch_and_the_shown_one(client):
    cid = new_conversation(client, title="Branchy")
    stream(client, f"/api/conversations/{cid}/messages", content="question")
    reply = view(client, cid)["messages"][1]
    stream(client, f"/api/conversations/{cid}/messages/{reply['id']}/regenerate")
    client.post(f"/api/conversations/{cid}/branch", json={"message_id": reply["id"]})  # show the first version
    exported = client.get(f"/api/conversations/{cid}/export?format=json")
    assert exported.headers["Content-Disposition"] == 'attachment; filename="Branchy.json"'
    imported = client.post("/api/import", data=exported.data, content_type="application/json")
    assert imported.status_code == 201 and imported.json["imported"] == 1
    copy = imported.json["conversations"][0]
    original, again = view(client, cid), view(client, copy["id"])
    assert copy["title"] == "Branchy" and copy["id"] != cid
    assert [(m["role"], m["content"], len(m["versions"])) for m in again["messages"]] == \
        [(m["role"], m["content"], len(m["versions"])) for m in original["messages"]]
    everything = client.get("/api/export?format=markdown")
    assert everything.data.decode().count("# Branchy") == 2
    assert client.get("/api/export?format=pdf").status_code == 400


def test_a_generated_title_replaces_the_first_message_but_never_a_chosen_one(client, app):
    cid = new_conversation(client)
    stream(client, f"/api/conversations/{cid}/messages", content="What is the capital of France?")
    assert view(client, cid)["conversation"]["title"] == "What is the capital of France?"
    titled = client.post(f"/api/conversations/{cid}/title").json["conversation"]["title"]
    assert titled == "What is the capital of France?"  # the tiny model's noise is not about it: the person's words
    renamed = new_conversation(client)
    stream(client, f"/api/conversations/{renamed}/messages", content="Hello there")
    client.patch(f"/api/conversations/{renamed}", json={"title": "Mine"})
    assert client.post(f"/api/conversations/{renamed}/title").json["conversation"]["title"] == "Mine"


@pytest.mark.parametrize("title, question, reply, ok", [
    ("I'm here to help with anything related to COVID-19", "Hi! What can you do?",
     "I'm here to help with anything related to COVID-19, from symptoms to vaccines.", False),  # issue 22's case
    ("Friendly assistant introduction", "Hi! What can you do?", "I can answer questions, write and explain.", True),
    ("The story of a dragon is a classic", "Tell me a story about a dragon.",
     "The story of a dragon is a classic example of a magical creature.", False),  # the reply's opening again
    ("Paris", "What is the capital of France?", "The capital of France is Paris.", False),  # not about the question
    ("Capital of France", "What is the capital of France?", "The capital of France is Paris.", True),
    ("Baking bread at home", "How do I bake bread?", "Mix flour, water, salt and yeast.", True),  # stems
    ("Weekend weather forecast", "How do I bake bread?", "Mix flour, water, salt and yeast.", False),
    ("", "How do I bake bread?", "Mix flour.", False),
])
def test_a_generated_title_must_be_about_the_question(title, question, reply, ok):
    from webbot.model.titles import acceptable

    assert acceptable(title, question, reply) is ok


@pytest.mark.parametrize("raw, title", [('The title is "Paris', "Paris"), ("Title: Baking bread.", "Baking bread"),
                                        ("Baking Bread: 1. Preheat your oven to 350", "Baking Bread"),
                                        ("Python: lists", "Python: lists")])
def test_a_generated_title_is_cleaned_of_labels_and_what_follows_a_colon(raw, title):
    from webbot.model.titles import clean

    assert clean(raw) == title


def test_an_edited_first_message_is_titled_again_unless_renamed(client):
    cid = new_conversation(client)
    stream(client, f"/api/conversations/{cid}/messages", content="What is the capital of France?")
    first = view(client, cid)["messages"][0]
    stream(client, f"/api/conversations/{cid}/messages/{first['id']}/edit", content="How do I bake bread?")
    assert view(client, cid)["conversation"]["title"] == "How do I bake bread?"
    assert client.post(f"/api/conversations/{cid}/title").json["conversation"]["title"] == "How do I bake bread?"
    client.patch(f"/api/conversations/{cid}", json={"title": "Kitchen"})
    first = view(client, cid)["messages"][0]
    stream(client, f"/api/conversations/{cid}/messages/{first['id']}/edit", content="And cakes?")
    assert view(client, cid)["conversation"]["title"] == "Kitchen"


def test_migrations_make_old_conversations_one_branch_searchable_and_unpinned(tmp_path):
    from alembic import command

    engine = database.connect(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:
        command.upgrade(database._alembic_config(connection), "0002")
        connection.execute(text("INSERT INTO conversations VALUES ('c1', 'me', 'Old chat', 1, 2)"))
        for n, (role, content) in enumerate([("user", "old question"), ("assistant", "old answer about comets"),
                                             ("user", "again"), ("assistant", "once more")]):
            connection.execute(text("INSERT INTO messages (conversation_id, role, content, status, created_at) "
                                    "VALUES ('c1', :role, :content, 'complete', :at)"),
                               {"role": role, "content": content, "at": n})
    database.upgrade(engine)
    assert database.current_revision(engine) == database.head_revision() == "0007"
    store = store_module.Store(engine)
    messages = store.messages("c1")
    assert [m["parent_id"] for m in messages] == [None] + [m["id"] for m in messages[:-1]]
    assert all(m["pinned"] is False and m["recalled"] == [] for m in messages)  # 0004 on messages already there
    assert all(m["note"] is None for m in messages)  # 0007: no notes yet
    conversation = store.get_conversation("me", "c1")
    assert conversation["leaf_id"] == messages[-1]["id"] and conversation["pinned"] is False
    assert store.search("me", "comet")[0]["conversation_id"] == "c1"


@pytest.mark.slow
def test_a_reply_that_waits_reports_its_place_until_it_starts(make_app, tiny_model_dir):
    from chat_bot import ChatBot

    bot = ChatBot(str(tiny_model_dir), max_tokens=8192, max_batch=1).load()
    app = make_app(bot=bot)
    first, second = app.test_client(), app.test_client()
    running = first.post(f"/api/conversations/{new_conversation(first)}/messages",
                         json={"content": "long", "max_tokens": 4000}, buffered=False)
    next(iter(running.response))
    waiting = second.post(f"/api/conversations/{new_conversation(second)}/messages",
                          json={"content": "queued", "max_tokens": 3}, buffered=False)
    chunks = iter(waiting.response)
    next(chunks)
    assert json.loads(next(chunks).decode().split("data: ", 1)[1]) == {"position": 1, "running": 1}
    running.close()
    rest = b"".join(chunks).decode()
    waiting.close()
    assert "event: done" in rest  # it started once the other reply ended, and finished


@pytest.mark.parametrize("leaf", [[1], {"id": 1}, True, 99, None])
def test_an_import_whose_shown_branch_makes_no_sense_shows_the_newest(client, leaf):
    answer = client.post("/api/import", json={"title": "Odd leaf", "leaf": leaf, "messages": [
        {"id": 1, "role": "user", "content": "one"}, {"id": 2, "parent": 1, "role": "assistant", "content": "two"}]})
    assert answer.status_code == 201, answer.json
    assert [m["content"] for m in view(client, answer.json["conversations"][0]["id"])["messages"]] == ["one", "two"]


@pytest.mark.parametrize("model_id, shown", [
    ("unsloth/Llama-3.2-1B-Instruct", "Llama 3.2 1B Instruct"),
    ("/srv/models/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/12fd25f77366fa6b3b4b768ec3050bf629380bac",
     "SmolLM2 135M Instruct"),
    ("/srv/models/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2 135M Instruct (Q4_1)"),
    ("/srv/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Llama 3.2 1B Instruct (Q4_K_M)"),
    ("/srv/models/llama32-1b-random-bf16.gguf", "llama32 1b random (bf16)"),
    ("/srv/models/my_model/", "my model"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0.5B Instruct"),
])
def test_the_page_names_the_model_in_words_not_by_its_folder(model_id, shown):
    from webbot.model.naming import display_name

    assert display_name(model_id) == shown


def test_the_model_name_setting_is_what_the_page_and_settings_say(make_app, tmp_path):
    page = make_app(WEBBOT_MODEL_NAME="Household helper").test_client()
    html = page.get("/").get_data(as_text=True)
    assert '<span class="model" title="The model answering (its id in the API: tiny-llama)">Household helper</span>' \
        in html
    limits = page.get("/api/settings").json["limits"]
    assert (limits["model"], limits["model_name"]) == ("tiny-llama", "Household helper")
    plain = make_app(data_dir=tmp_path / "other").test_client()  # unset: made from the folder's name
    assert ">tiny llama</span>" in plain.get("/").get_data(as_text=True)
    assert plain.get("/v1/models").json["data"][0]["id"] == "tiny-llama"  # the API's id is unchanged
