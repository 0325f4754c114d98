"""`python app.py` as a real process: the official openai client, disconnects, restarts, API keys."""

import json
import time

import openai
import pytest
import requests

from harness.server_process import PageSession, read_sse


@pytest.fixture
def tiny_server(start_server, tiny_model_dir):
    return start_server(tiny_model_dir, WEBBOT_MAX_TOKENS="1024")


@pytest.mark.slow
def test_openai_client_lists_the_model_and_chats(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["tiny-llama"]
    reply = client.chat.completions.create(
        model="tiny-llama", max_tokens=10, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content and reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 10 and reply.usage.prompt_tokens > 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 10

    chunks = list(client.chat.completions.create(
        model="tiny-llama", max_tokens=10, temperature=0, stream=True,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # greedy: streamed equals non-streamed
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 10
    assert len(chunks) >= 5

    chunks = list(client.chat.completions.create(
        model="tiny-llama", max_tokens=4, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hi"}]))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


@pytest.mark.slow
def test_openai_client_stop_sequences_and_errors(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "Tell me something."}]
    free = client.chat.completions.create(model="m", messages=messages, max_tokens=20, temperature=0)
    word = free.choices[0].message.content.split()[2]
    cut = client.chat.completions.create(model="m", messages=messages, max_tokens=20, temperature=0, stop=[word])
    assert cut.choices[0].message.content == free.choices[0].message.content.split(word)[0]
    assert cut.choices[0].finish_reason == "stop"

    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="m", messages=[])
    assert "non-empty list" in error.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], temperature=5)
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 2000}])
    assert error.value.status_code == 413 and error.value.body["code"] == "context_length_exceeded"


@pytest.mark.slow
def test_api_key_is_required_when_set(start_server, tiny_model_dir):
    server = start_server(tiny_model_dir, WEBBOT_API_KEY="s3cret")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()
    good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret")
    assert good.models.list().data[0].id == "tiny-llama"


@pytest.mark.slow
def test_client_disconnect_mid_stream_stops_generation_once_nobody_looks_for_the_reply(start_server,
                                                                                      tiny_model_dir):
    # A page whose connection dropped polls the conversation and keeps its reply going (tests/test_ui.py);
    # a closed tab does not, so its reply stops WEBBOT_RECONNECT_GRACE_S after the connection closed.
    tiny_server = start_server(tiny_model_dir, WEBBOT_RECONNECT_GRACE_S="1")
    session = PageSession()
    cid = session.post(tiny_server.url + "/api/conversations", json={}).json()["id"]
    response = session.post(f"{tiny_server.url}/api/conversations/{cid}/messages",
                            json={"content": "go", "max_tokens": 100_000, "temperature": 0}, stream=True, timeout=30)
    lines = response.iter_lines()
    for _ in range(8):
        next(lines)
    response.close()  # the tab is closed
    time.sleep(3)  # nobody looks meanwhile; a 100,000-token reply would still be running
    state = session.get(f"{tiny_server.url}/api/conversations/{cid}").json()
    assert not state["generating"] and state["messages"][-1]["status"] == "stopped"
    # The model is free: a new reply completes promptly.
    started = time.monotonic()
    events = read_sse(session.post(f"{tiny_server.url}/api/conversations/{cid}/messages",
                                   json={"content": "again", "max_tokens": 5}, timeout=60).iter_lines())
    assert events[-1][0] == "done" and time.monotonic() - started < 30


@pytest.mark.slow
def test_conversations_survive_a_server_restart(start_server, tiny_model_dir, tmp_path):
    data = tmp_path / "kept"
    server = start_server(tiny_model_dir, data_dir=data)
    session = PageSession()
    cid = session.post(server.url + "/api/conversations", json={}).json()["id"]
    events = read_sse(session.post(f"{server.url}/api/conversations/{cid}/messages",
                                   json={"content": "remember this", "max_tokens": 5}).iter_lines())
    reply = events[-1][1]["message"]["content"]
    server.stop()

    again = start_server(tiny_model_dir, data_dir=data)
    stored = session.get(f"{again.url}/api/conversations/{cid}").json()["messages"]
    assert [m["content"] for m in stored] == ["remember this", reply]
    assert requests.get(f"{again.url}/api/conversations/{cid}").status_code == 404  # another session


@pytest.mark.slow
def test_several_users_at_once_each_get_their_own_reply(tiny_server):
    from concurrent.futures import ThreadPoolExecutor

    def chat(n):
        session = PageSession()
        cid = session.post(tiny_server.url + "/api/conversations", json={}).json()["id"]
        events = read_sse(session.post(f"{tiny_server.url}/api/conversations/{cid}/messages",
                                       json={"content": f"user {n} here", "max_tokens": 30}, timeout=120).iter_lines())
        stored = session.get(f"{tiny_server.url}/api/conversations/{cid}").json()["messages"]
        return events[-1], stored, n

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(chat, range(6)))
    for (event, done), stored, n in results:
        assert event == "done" and done["usage"]["completion_tokens"] == 30
        assert [m["content"] for m in stored] == [f"user {n} here", done["message"]["content"]]


@pytest.mark.slow
def test_kill_9_mid_stream_loses_no_finished_message_and_keeps_the_partial_reply(start_server, tiny_model_dir,
                                                                                 tmp_path):
    import signal
    import sqlite3

    data = tmp_path / "crash"
    server = start_server(tiny_model_dir, data_dir=data, WEBBOT_MAX_TOKENS="8192")
    session = PageSession()
    cid = session.post(server.url + "/api/conversations", json={}).json()["id"]
    finished = read_sse(session.post(f"{server.url}/api/conversations/{cid}/messages",
                                     json={"content": "first", "max_tokens": 8}).iter_lines())[-1][1]["message"]
    running = session.post(f"{server.url}/api/conversations/{cid}/messages",
                           json={"content": "second", "max_tokens": 100_000}, stream=True, timeout=30)
    started, shown, event = time.monotonic(), "", None
    for line in running.iter_lines():
        if line.startswith(b"event: "):
            event = line[7:]
        elif line.startswith(b"data: ") and event == b"token":
            shown += json.loads(line[6:])["text"]  # what a page would have shown
        if time.monotonic() - started > 3:
            break
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    running.close()

    with sqlite3.connect(data / "webbot.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again = start_server(tiny_model_dir, data_dir=data)
    stored = session.get(f"{again.url}/api/conversations/{cid}").json()["messages"]
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "complete"), ("assistant", "length"), ("user", "complete"), ("assistant", "interrupted")]
    assert stored[1]["content"] == finished["content"]
    assert shown and stored[3]["content"].startswith(shown)  # every word shown before the crash was kept
