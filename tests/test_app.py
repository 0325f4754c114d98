"""The Flask app in-process, around the tiny real Llama: routes, streaming, stop, persistence, bad input."""

import time

import pytest

from chat_bot import ChatBot
from harness.server_process import read_sse
from tests.helpers import until
from webbot.storage.conversations import Store
from webbot.web.services import services

XSS = ['<script>window.__xss = 1</script>', '<img src=x onerror="window.__xss = 1">',
       '[click](javascript:window.__xss=1)', '<svg onload="window.__xss = 1"></svg>']


def new_conversation(client) -> str:
    response = client.post("/api/conversations", json={})
    assert response.status_code == 201
    return response.json["id"]


def send(client, conversation_id, content, **extra):
    with client.post(f"/api/conversations/{conversation_id}/messages",
                     json={"content": content, "max_tokens": 12, "temperature": 0, **extra}) as response:
        assert response.status_code == 200, response.get_data(as_text=True)
        return read_sse(response.get_data(as_text=True).splitlines(keepends=True))


def test_healthz_reports_the_loaded_model(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {
        "status": "ok", "model": "tiny-llama",
        "checks": {"model": {"status": "ok", "model": "tiny-llama", "device": "cpu", "dtype": "float32",
                             "quant": "int8"},
                   "database": {"status": "ok", "kind": "sqlite"}, "redis": {"status": "not used"}},
        "speech": {"model": "openai/whisper-base", "backend": "transformers", "status": "not loaded"},
        "tts": {"voice": "en_US-joe-medium", "voices": ["en_US-joe-medium"], "status": "not loaded"}}


def test_healthz_is_503_while_loading_and_sending_waits(make_app, tiny_model_dir):
    app = make_app(bot=ChatBot(str(tiny_model_dir)))  # not loaded yet
    client = app.test_client()
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json["status"] == "loading"
    assert response.headers["Retry-After"]
    assert client.get("/").status_code == 200  # the page works while the model loads
    cid = new_conversation(client)
    response = client.post(f"/api/conversations/{cid}/messages", json={"content": "hi"})
    assert response.status_code == 503 and "still loading" in response.json["error"]["message"]
    assert client.get(f"/api/conversations/{cid}").json["messages"] == []


def test_healthz_reports_a_failed_load(make_app, tmp_path):
    bot = ChatBot(str(tmp_path / "no-such-model"))
    with pytest.raises(OSError):
        bot.load()
    client = make_app(bot=bot).test_client()
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json["status"] == "error" and response.json["error"]
    cid = new_conversation(client)
    response = client.post(f"/api/conversations/{cid}/messages", json={"content": "hi"})
    assert response.status_code == 503 and "could not be loaded" in response.json["error"]["message"]
    assert "WEBBOT_MODEL" in response.json["error"]["message"]


def test_a_gpu_that_fails_for_good_ends_every_reply_says_why_and_restarts_the_process(make_app, tiny_model_dir,
                                                                                      monkeypatch):
    """Issue 23, item 2: after a CUDA error such as a device-side assert, every later kernel fails, yet /healthz
    said ok and each request failed on its own. Now the reply in flight ends with the reason (stored as an
    error, its text so far kept), /healthz is 503 with it, a new message is a 503 that says it, and the process
    is asked to exit so that gunicorn or systemd starts a fresh one. No GPU here: the CUDA error is injected into
    the real tiny model's forward (the error type torch raises for it)."""
    import torch

    from tests.helpers import failing_on_pass

    bot = ChatBot(str(tiny_model_dir), max_tokens=1024).load()
    told = []
    app = make_app(bot=bot)
    bot.on_failure = told.append  # start_loading would make this exit the process
    client = app.test_client()
    stand_in = failing_on_pass(bot.engine.model, 4, torch.AcceleratorError("CUDA error: device-side assert triggered"))
    monkeypatch.setattr(bot.engine, "model", stand_in)
    cid = new_conversation(client)
    events = send(client, cid, "Tell me a story.")
    assert events[-1][0] == "error" and "GPU failed" in events[-1][1]["message"], events[-1]
    assert told and "GPU failed" in told[0] and "restarts itself" in told[0]
    stored = client.get(f"/api/conversations/{cid}").json["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"] and stored[1]["status"] == "error"
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json["checks"]["model"]["status"] == "error"
    assert "GPU failed" in health.json["error"]
    response = client.post(f"/api/conversations/{cid}/messages", json={"content": "Are you there?"})
    assert response.status_code == 503 and "GPU failed" in response.json["error"]["message"]
    assert len(client.get(f"/api/conversations/{cid}").json["messages"]) == 2  # nothing lost, nothing added
    other = make_app(bot=bot).test_client()  # another browser, and the API: the same sentence
    assert "GPU failed" in other.get("/healthz").json["error"]
    response = other.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503 and "GPU failed" in response.json["error"]["message"]
    assert stand_in.passes == 4 and len(told) == 1  # the model is never run again


def test_after_a_gpu_failure_the_process_exits_with_status_1_for_a_fresh_start(tmp_path):
    """exit_after_failure, in a child process (it ends its process): status 1 after the grace, which gunicorn
    answers with a new worker and systemd (Restart=on-failure) with a new process."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import time, app; app.exit_after_failure(None, grace_s=0.2); time.sleep(30)"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - started < 30


def test_chat_page_lists_the_sessions_conversations(client):
    cid = new_conversation(client)
    client.patch(f"/api/conversations/{cid}", json={"title": "My <b>title</b>"})
    page = client.get("/").get_data(as_text=True)
    assert "My &lt;b&gt;title&lt;/b&gt;" in page and f'data-id="{cid}"' in page
    assert client.get(f"/c/{cid}").status_code == 200


def test_send_streams_tokens_and_stores_both_messages(client):
    cid = new_conversation(client)
    events = send(client, cid, "What is the capital of France?")
    kinds = [e for e, _ in events]
    # text comes in pieces, each saved before it is sent (page_reply.py): as many as quarter seconds it took
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("token") >= 1
    start, done = events[0][1], events[-1][1]
    assert start["user"]["content"] == "What is the capital of France?"
    assert start["memory"]["budget"] == 768 and start["memory"]["dropped"] == 0
    streamed = "".join(d["text"] for e, d in events if e == "token")
    assert done["message"]["content"] == streamed and done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 12
    assert done["memory"]["used"] > start["memory"]["used"]  # the gauge now counts the reply too
    stored = client.get(f"/api/conversations/{cid}").json
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][1]["content"] == streamed and stored["messages"][1]["status"] == "length"
    assert stored["conversation"]["title"] == "What is the capital of France?"
    assert stored["generating"] is False


def test_history_is_fed_back_and_trimmed_in_the_gauge(client):
    cid = new_conversation(client)
    for n in range(8):
        send(client, cid, f"Message {n}: " + "lorem ipsum dolor " * 30)
    gauge = client.get(f"/api/conversations/{cid}").json["memory"]
    assert gauge["used"] <= gauge["budget"] == 768
    assert gauge["dropped"] > 0 and gauge["dropped"] % 2 == 0
    assert len(client.get(f"/api/conversations/{cid}").json["messages"]) == 16  # nothing lost


def test_stop_halts_generation_on_the_server(client, tiny_bot):
    cid = new_conversation(client)
    response = client.post(f"/api/conversations/{cid}/messages",
                           json={"content": "go", "max_tokens": 5000}, buffered=False)
    body = iter(response.response)
    first = [next(body) for _ in range(3)]  # start and two tokens
    assert client.post(f"/api/conversations/{cid}/stop").json == {"stopped": True}
    events = read_sse("".join(x.decode() if isinstance(x, bytes) else x for x in [*first, *body]).splitlines(True))
    response.close()
    done = events[-1][1]
    assert events[-1][0] == "done" and done["finish_reason"] == "cancelled"
    assert done["message"]["status"] == "stopped" and done["usage"]["completion_tokens"] < 5000
    stored = client.get(f"/api/conversations/{cid}").json["messages"][-1]
    assert stored["status"] == "stopped" and stored["content"] == done["message"]["content"]
    assert tiny_bot.engine.running == 0


def wait_until(condition, seconds: float) -> float:
    """Seconds until condition() held; fails after `seconds`."""
    import time

    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_closed_stream_nobody_looks_for_stops_after_the_grace_and_keeps_the_partial_reply(make_app, tiny_bot):
    app = make_app(WEBBOT_RECONNECT_GRACE_S=0.5)
    client = app.test_client()
    cid = new_conversation(client)
    response = client.post(f"/api/conversations/{cid}/messages",
                           json={"content": "go", "max_tokens": 900}, buffered=False)
    body = iter(response.response)
    next(body), next(body)
    response.close()  # what the server sees when the browser tab goes away
    active = services(app).replies
    assert wait_until(lambda: active.get(cid) is None, 5) < 2.0  # nobody polled: stopped after ~0.5 s
    assert tiny_bot.engine.running == 0
    stored = client.get(f"/api/conversations/{cid}").json
    assert stored["generating"] is False and stored["messages"][-1]["status"] == "stopped"
    assert 0 < len(stored["messages"][-1]["content"])
    assert send(client, cid, "next")[-1][0] == "done"  # the model is free again


def test_a_dropped_stream_goes_on_while_the_page_polls_and_the_whole_reply_is_stored(make_app, tiny_bot):

    client = make_app(WEBBOT_RECONNECT_GRACE_S=0.5).test_client()
    cid = new_conversation(client)
    response = client.post(f"/api/conversations/{cid}/messages",
                           json={"content": "go", "max_tokens": 300, "temperature": 0}, buffered=False)
    body = iter(response.response)
    next(body), next(body)
    response.close()  # the connection dropped; the page polls the conversation as it reconnects
    until(lambda: not client.get(f"/api/conversations/{cid}").json["generating"], 60, "the reply never ended")
    reply = client.get(f"/api/conversations/{cid}").json["messages"][-1]
    assert reply["status"] == "length"  # written to the end although nobody read the stream
    assert len(tiny_bot.memory.encode(reply["content"])) >= 290


def test_second_message_while_one_streams_is_409(client):
    cid = new_conversation(client)
    response = client.post(f"/api/conversations/{cid}/messages",
                           json={"content": "go", "max_tokens": 5000}, buffered=False)
    next(iter(response.response))
    second = client.post(f"/api/conversations/{cid}/messages", json={"content": "again"})
    assert second.status_code == 409 and "still being written" in second.json["error"]["message"]
    response.close()
    assert len(client.get(f"/api/conversations/{cid}").json["messages"]) == 2


def test_rename_and_delete(client):
    cid = new_conversation(client)
    send(client, cid, "hello")
    assert client.patch(f"/api/conversations/{cid}", json={"title": "Renamed"}).json["title"] == "Renamed"
    assert client.delete(f"/api/conversations/{cid}").status_code == 204
    assert client.get(f"/api/conversations/{cid}").status_code == 404
    assert client.get("/api/conversations").json["conversations"] == []


def test_another_session_cannot_see_or_touch_a_conversation(app, client):
    cid = new_conversation(client)
    send(client, cid, "secret")
    stranger = app.test_client()
    for method, path, body in [
        ("get", f"/api/conversations/{cid}", None),
        ("patch", f"/api/conversations/{cid}", {"title": "mine"}),
        ("delete", f"/api/conversations/{cid}", None),
        ("post", f"/api/conversations/{cid}/messages", {"content": "hi"}),
        ("post", f"/api/conversations/{cid}/stop", None),
    ]:
        response = getattr(stranger, method)(path, json=body)
        assert response.status_code == 404, (method, path)
        assert response.json["error"]["type"] == "not_found_error"
    assert stranger.get(f"/c/{cid}", headers={"Accept": "text/html"}).status_code == 404
    assert stranger.get("/api/conversations").json["conversations"] == []
    assert len(client.get(f"/api/conversations/{cid}").json["messages"]) == 2  # untouched


@pytest.mark.parametrize("body, status, words", [
    ({"content": ""}, 400, "empty"),
    ({"content": "   \n "}, 400, "empty"),
    ({"content": 42}, 400, "must be a string"),
    ({}, 400, "must be a string"),
    ({"content": "x" * 40_000}, 413, "the limit is 32000"),
    ({"content": "hi", "temperature": 9}, 400, "'temperature' must be"),
    ({"content": "hi", "max_tokens": -1}, 400, "'max_tokens' must be"),
    ({"content": "hi", "stop": 5}, 400, "'stop' must be"),
])
def test_bad_messages_get_a_4xx_sentence_and_lose_nothing(client, body, status, words):
    cid = new_conversation(client)
    send(client, cid, "kept")
    response = client.post(f"/api/conversations/{cid}/messages", json=body)
    assert response.status_code == status and words in response.json["error"]["message"]
    assert len(client.get(f"/api/conversations/{cid}").json["messages"]) == 2


def test_message_too_long_for_the_context_says_its_size(client):
    cid = new_conversation(client)
    response = client.post(f"/api/conversations/{cid}/messages", json={"content": "word " * 2000})
    assert response.status_code == 413
    message = response.json["error"]["message"]
    assert message.startswith("Your message is 2000 tokens; the limit is ") and "Shorten it" in message
    assert client.get(f"/api/conversations/{cid}").json["messages"] == []


def test_wrong_content_types_and_broken_json(client):
    cid = new_conversation(client)
    response = client.post(f"/api/conversations/{cid}/messages", data="content=hi",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and "Content-Type: application/json" in response.json["error"]["message"]
    response = client.post(f"/api/conversations/{cid}/messages", data="{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON object" in response.json["error"]["message"]
    response = client.post(f"/api/conversations/{cid}/messages", data="x" * 3_000_000, content_type="application/json")
    assert response.status_code == 413


def test_unknown_ids_and_routes_are_404_for_api_and_pages(client):
    assert client.get("/api/conversations/nope").status_code == 404
    assert client.post("/api/conversations/nope/messages", json={"content": "hi"}).status_code == 404
    page = client.get("/c/nope", headers={"Accept": "text/html"})
    assert page.status_code == 404 and b"no such conversation" in page.data
    assert client.get("/no/such/page", headers={"Accept": "text/html"}).status_code == 404
    assert client.put("/api/conversations").status_code == 405


def test_markup_in_messages_and_model_output_is_inert(app, client):
    cid = new_conversation(client)
    for payload in XSS:
        send(client, cid, payload)
    # Model output with the same payloads, stored as a reply would be.
    store: Store = services(app).store
    for payload in XSS:
        store.add_message(cid, "assistant", f"Here: {payload}\n\n```html\n{payload}\n```",
                          parent_id=store.messages(cid)[-1]["id"])
    messages = client.get(f"/api/conversations/{cid}").json["messages"]
    for message in messages:
        if message["role"] == "assistant":
            html = message["html"].lower()
            assert "<script" not in html and "<img" not in html and "<svg" not in html
            assert 'href="javascript' not in html
        else:
            assert "html" not in message  # user text is shown as text by the page, never as HTML
    assert any("&lt;script&gt;" in m.get("html", "") for m in messages)


def test_conversations_survive_an_app_restart(make_app, tmp_path, tiny_bot):
    data = tmp_path / "persist"
    first = make_app(data_dir=data)
    client = first.test_client()
    cid = new_conversation(client)
    send(client, cid, "remember me")
    cookie = client.get_cookie("webbot_owner")  # whose conversations this browser sees
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert cookie.expires is not None and cookie.expires.year >= time.gmtime().tm_year + 1  # kept for long

    second = make_app(data_dir=data)  # a new process would build exactly this
    again = second.test_client()
    again.set_cookie("webbot_owner", cookie.value)
    stored = again.get(f"/api/conversations/{cid}").json
    assert [m["content"] for m in stored["messages"]][0] == "remember me"
    assert (data / "secret_key").stat().st_mode & 0o777 == 0o600


def test_a_reply_left_streaming_by_a_crash_is_marked_interrupted_on_start(make_app, tmp_path):
    data = tmp_path / "crash"
    app = make_app(data_dir=data)
    store: Store = services(app).store
    client = app.test_client()
    cid = new_conversation(client)
    store.add_message(cid, "user", "hi")
    store.add_message(cid, "assistant", "half a rep", status="streaming")
    restarted = make_app(data_dir=data)
    messages = services(restarted).store.messages(cid)
    assert messages[-1]["status"] == "interrupted" and messages[-1]["content"] == "half a rep"


def test_streamed_html_always_matches_the_text_sent_so_far(client):
    from webbot.web.rendering import render_markdown

    cid = new_conversation(client)
    events = send(client, cid, "Write at length.", max_tokens=400)
    text, checked = "", 0
    for event, data in events:
        if event == "token":
            text += data["text"]
            if "html" in data:
                assert data["html"] == render_markdown(text)
                checked += 1
    assert checked >= 2  # the page got several Markdown renders while the reply streamed
    assert events[-1][1]["message"]["html"] == render_markdown(text)


def test_page_temperature_comes_from_the_setting(make_app):
    client = make_app(WEBBOT_TEMPERATURE=0.0).test_client()
    replies = []
    for _ in range(2):
        cid = new_conversation(client)
        with client.post(f"/api/conversations/{cid}/messages",
                         json={"content": "Same question", "max_tokens": 20}) as r:
            replies.append(read_sse(r.get_data(as_text=True).splitlines(True))[-1][1]["message"]["content"])
    assert replies[0] == replies[1] and replies[0]  # greedy: the same words twice


@pytest.mark.slow
def test_a_waiting_reply_gets_heartbeats_and_a_full_queue_gets_503(make_app, tiny_model_dir, monkeypatch):
    from webbot import config

    monkeypatch.setattr(config, "STREAM_HEARTBEAT_S", 0.05)
    bot = ChatBot(str(tiny_model_dir), max_tokens=8192, max_waiting=1, max_batch=1).load()
    app = make_app(bot=bot)
    first, second, third = app.test_client(), app.test_client(), app.test_client()
    running = first.post(f"/api/conversations/{new_conversation(first)}/messages",
                         json={"content": "long", "max_tokens": 4000}, buffered=False)
    next(iter(running.response))  # the model is busy with this one
    waiting = second.post(f"/api/conversations/{new_conversation(second)}/messages",
                          json={"content": "queued", "max_tokens": 3}, buffered=False)
    chunks = iter(waiting.response)
    assert b"event: start" in next(chunks)
    assert next(chunks) == b'event: queue\ndata: {"position": 1, "running": 1}\n\n'  # the page shows its place
    assert next(chunks).startswith(b": waiting")  # keeps proxies and browsers from timing out
    cid = new_conversation(third)
    refused = third.post(f"/api/conversations/{cid}/messages", json={"content": "one more"})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert "busy" in refused.json["error"]["message"]
    assert third.get(f"/api/conversations/{cid}").json["messages"] == []  # nothing half-stored
    running.close()
    rest = b"".join(chunks).decode()
    waiting.close()
    assert "event: done" in rest
