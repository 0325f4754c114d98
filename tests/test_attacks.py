"""Attacks on a server published to a household or a team, each reproduced against the version before the
hardening issue, on the real app around the tiny real Llama (real Llama 3.2 tokenizer and template).

Two people (or browsers, or addresses) in every test: the one attacking, and the one who must not notice.
"""

import json
import math
import re
import shutil
import threading
import time

import pytest
from flask.testing import FlaskClient

from chat_bot import ChatBot
from harness.server_process import read_sse
from webbot.web.services import services

V1 = "/v1/chat/completions"


def new_conversation(client) -> str:
    response = client.post("/api/conversations", json={})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.json["id"]


def send(client, cid: str, content: str, **extra) -> list:
    with client.post(f"/api/conversations/{cid}/messages",
                     json={"content": content, "max_tokens": 4, "temperature": 0, **extra}) as response:
        assert response.status_code == 200, response.get_data(as_text=True)
        return read_sse(response.get_data(as_text=True).splitlines(keepends=True))


def bare_client(app, address: str = "127.0.0.1") -> FlaskClient:
    """A client with no cookies and no CSRF token (an API client, a script), at a given address."""
    client = FlaskClient(app, app.response_class, use_cookies=True)
    client.environ_base["REMOTE_ADDR"] = address
    return client


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def titles(client) -> list[str]:
    return [c["title"] for c in client.get("/api/conversations").json["conversations"]]


# 1. The shared prefix cache

@pytest.fixture
def own_bot(tiny_model_dir):
    """A fresh bot: its prefix cache holds only what the test puts there."""
    return ChatBot(str(tiny_model_dir), max_tokens=1024).load()


def test_nobody_learns_another_persons_words_from_the_prefix_cache(make_app, own_bot):
    app = make_app(bot=own_bot, WEBBOT_RATE_MESSAGES="off")
    victim = app.test_client()
    cid = new_conversation(victim)
    send(victim, cid, "My bank PIN is 4 7 1 9")
    system = app.config["WEBBOT_SYSTEM_PROMPT"]  # the server's own prompt: its head is public
    cached = {}
    for digit in range(10):  # each guess from a fresh address: an owner with nothing cached of its own
        guess = bare_client(app, f"198.51.100.{digit + 1}").post(V1, json={
            "model": "x", "max_tokens": 1, "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": f"My bank PIN is {digit} zzqx"}]})
        assert guess.status_code == 200, guess.get_data(as_text=True)
        cached[digit] = guess.json["usage"]["prompt_tokens_details"]["cached_tokens"]
    head = own_bot.plan([], "x", system).public_tokens
    assert head > 10 and set(cached.values()) == {head}, cached  # the template and system prompt, nothing more
    # Without the server's system prompt nothing at all is shared.
    other = bare_client(app, "198.51.100.99").post(V1, json={
        "model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "My bank PIN is 4 7 1 9"}]})
    assert other.json["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # The owner still gets their own cache: the next turn reads only its new message.
    again = victim.post(f"/api/conversations/{cid}/messages", json={"content": "And my card?", "max_tokens": 2})
    done = [data for event, data in read_sse(again.get_data(as_text=True).splitlines(keepends=True))
            if event == "done"][0]
    assert done["usage"]["prompt_tokens_details"]["cached_tokens"] > head + 8


def test_a_v1_client_reuses_only_its_own_history(make_app, own_bot):
    app = make_app(bot=own_bot, WEBBOT_API_KEY="server-key", WEBBOT_RATE_MESSAGES="off")
    body = {"model": "x", "max_tokens": 3, "temperature": 0, "messages": [
        {"role": "user", "content": "Remember the word pelican."}]}
    first = bare_client(app).post(V1, json=body, headers=bearer("server-key")).json
    history = body["messages"] + [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                                  {"role": "user", "content": "Which word?"}]
    second = bare_client(app).post(V1, json={**body, "messages": history}, headers=bearer("server-key")).json
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 1


def test_metrics_answer_only_to_the_servers_key_or_an_admins(make_app, tmp_path):
    open_app = make_app(data_dir=tmp_path / "open")
    nobody = bare_client(open_app).get("/metrics")
    assert nobody.status_code == 404 and "set WEBBOT_METRICS_KEY" in nobody.json["error"]["message"]
    scraper = make_app(data_dir=tmp_path / "scraper", WEBBOT_METRICS_KEY="scrape-key")
    assert bare_client(scraper).get("/metrics", headers=bearer("scrape-key")).status_code == 200
    assert bare_client(scraper).get("/v1/models").status_code == 200  # open mode: /v1 needs no key here
    assert bare_client(scraper).get("/metrics").status_code == 401
    keyed = make_app(data_dir=tmp_path / "keyed", WEBBOT_API_KEY="ops-key")
    assert bare_client(keyed).get("/metrics").status_code == 401
    assert bare_client(keyed).get("/metrics", headers=bearer("guess")).status_code == 401
    scraped = bare_client(keyed).get("/metrics", headers=bearer("ops-key"))
    assert scraped.status_code == 200 and b"webbot_prompt_tokens_total" in scraped.data

    accounts = make_app(data_dir=tmp_path / "accounts", WEBBOT_AUTH="accounts", WEBBOT_METRICS_KEY="scrape-key")
    assert bare_client(accounts).get("/metrics", headers=bearer("scrape-key")).status_code == 200
    assert bare_client(accounts).get("/v1/models", headers=bearer("scrape-key")).status_code == 401  # nothing else
    users = services(accounts).users
    admin, person = users.create("ada", "ada-password", admin=True), users.create("bob", "bob-password")
    admin_key, _ = users.create_key(admin["id"], "scraper")
    person_key, _ = users.create_key(person["id"], "laptop")
    assert bare_client(accounts).get("/v1/models", headers=bearer(person_key)).status_code == 200
    refused = bare_client(accounts).get("/metrics", headers=bearer(person_key))
    assert refused.status_code == 403 and "admin" in refused.json["error"]["message"]
    assert bare_client(accounts).get("/metrics", headers=bearer(admin_key)).status_code == 200


# 2. Sessions: anonymous traffic must not evict real people

def session_files(app) -> list:
    """Sessions stored on the server (cachelib's listing, without its own bookkeeping file)."""
    return list(app.session_interface.server.cache._list_dir())


def test_anonymous_visitors_leave_nothing_on_the_server_and_evict_nobody(make_app, tmp_path):
    data = tmp_path / "data"
    app = make_app(data_dir=data, WEBBOT_MAX_SESSIONS=20, WEBBOT_RATE_MESSAGES="off")
    victim = app.test_client()
    cid = new_conversation(victim)
    send(victim, cid, "keep this")
    slowest = 0.0
    for n in range(300):
        bare_client(app, f"203.0.113.{n % 250 + 1}").get("/")  # a visitor with no cookie
        if n % 10 == 0:  # and now and then one that writes
            writer = app.test_client()
            assert writer.post("/api/conversations", json={"title": f"flood {n}"}).status_code == 201
        if n % 25 == 0:
            started = time.monotonic()
            assert victim.get("/api/conversations").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
    assert session_files(app) == []  # 330 visitors, nothing stored for any of them
    assert titles(victim) == ["keep this"]
    assert [m["content"] for m in victim.get(f"/api/conversations/{cid}").json["messages"]][0] == "keep this"
    assert slowest < 1.0, f"a request of the victim's took {slowest:.2f} s"


def test_a_lost_session_store_loses_no_conversation(make_app, tmp_path):
    data = tmp_path / "data"
    app = make_app(data_dir=data)
    person = app.test_client()
    cid = new_conversation(person)
    send(person, cid, "still mine")
    shutil.rmtree(data / "sessions", ignore_errors=True)  # an admin clears it, or a disk is replaced
    assert titles(person) == ["still mine"]
    assert person.post(f"/api/conversations/{cid}/messages", json={"content": "more", "max_tokens": 2}
                       ).status_code == 200  # the page's token still works: it lives in the visitor cookie


FORM_TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
PAGE_TOKEN = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def sign_in_household(client, password: str = "household-pass", **kwargs):
    token = FORM_TOKEN.search(client.get("/signin", **kwargs).get_data(as_text=True)).group(1)
    return client.post("/signin", data={"csrf_token": token, "password": password}, **kwargs)


def test_signed_in_sessions_past_the_cap_sign_out_the_oldest_but_lose_no_conversation(make_app, tmp_path):
    data = tmp_path / "data"
    app = make_app(data_dir=data, WEBBOT_AUTH="password", WEBBOT_PASSWORD="household-pass",
                   WEBBOT_MAX_SESSIONS=5, WEBBOT_RATE_SIGNIN="off")
    victim = FlaskClient(app, app.response_class, use_cookies=True)
    assert sign_in_household(victim).status_code == 302
    victim.environ_base["HTTP_X_CSRFTOKEN"] = PAGE_TOKEN.search(victim.get("/").get_data(as_text=True)).group(1)
    cid = new_conversation(victim)
    send(victim, cid, "household note")
    time.sleep(1.1)  # stored sessions expire by the second: the victim's is now the least recently used
    for _ in range(12):  # other browsers sign in, past the cap of 5 stored sessions
        assert sign_in_household(FlaskClient(app, app.response_class, use_cookies=True)).status_code == 302
    assert len(session_files(app)) <= 6
    assert victim.get("/api/conversations").status_code == 401  # the oldest session was let go: signed out
    victim.environ_base.pop("HTTP_X_CSRFTOKEN")
    assert sign_in_household(victim).status_code == 302
    assert titles(victim) == ["household note"]  # signing in again brings everything back


def test_a_session_stored_by_the_previous_version_keeps_its_conversations(make_app, tmp_path):
    data = tmp_path / "data"
    app = make_app(data_dir=data)
    store = services(app).store
    old = store.create_conversation("0123456789abcdef0123456789abcdef", "made before the upgrade")
    server_side = app.session_interface.server
    server_side.cache.set("session:oldsid", {"_permanent": True, "owner": "0123456789abcdef0123456789abcdef"},
                          timeout=3600)
    returning = FlaskClient(app, app.response_class, use_cookies=True)
    returning.set_cookie("webbot_session", "oldsid")
    assert titles(returning) == ["made before the upgrade"]
    assert returning.get_cookie("webbot_owner") is not None  # the owner moved into the durable cookie
    assert session_files(app) == []  # and off the server
    fresh = FlaskClient(app, app.response_class, use_cookies=True)
    fresh.set_cookie("webbot_owner", returning.get_cookie("webbot_owner").value)
    assert [c["id"] for c in fresh.get("/api/conversations").json["conversations"]] == [old["id"]]


def test_a_forged_owner_cookie_opens_nothing(make_app):
    app = make_app()
    victim = app.test_client()
    cid = new_conversation(victim)
    from itsdangerous import URLSafeSerializer

    owner = URLSafeSerializer(app.secret_key, salt="webbot-owner").loads(victim.get_cookie("webbot_owner").value)
    forger = bare_client(app)
    forger.set_cookie("webbot_owner", URLSafeSerializer("not the key", salt="webbot-owner").dumps(owner))
    assert forger.get("/api/conversations").json["conversations"] == []
    assert forger.get(f"/api/conversations/{cid}").status_code == 404


# 3. Guessing the shared password (or a key) through /v1

@pytest.mark.parametrize("mode", ["password", "accounts", "open"])
def test_wrong_bearer_keys_are_limited_per_address(make_app, tmp_path, mode):
    app = make_app(data_dir=tmp_path / mode, WEBBOT_AUTH=mode, WEBBOT_PASSWORD="household-pass",
                   WEBBOT_API_KEY="server-key", WEBBOT_RATE_SIGNIN="5/minute")
    right = "household-pass" if mode == "password" else "server-key"
    guesser = bare_client(app, "198.51.100.7")
    codes = [guesser.get("/v1/models", headers=bearer(f"guess-{n}")).status_code for n in range(4)]
    codes.append(guesser.get("/metrics", headers=bearer("guess-4")).status_code)  # /metrics counts too
    assert codes == [401] * 5
    blocked = guesser.get("/v1/models", headers=bearer(right))  # the right key too, so guessing learns nothing
    assert blocked.status_code == 429 and 0 < int(blocked.headers["Retry-After"]) <= 61
    assert blocked.json["error"]["message"].startswith("Too many wrong API keys from your address")
    assert blocked.json["error"]["type"] == "rate_limit_error"
    assert guesser.post(V1, json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
                        headers=bearer(right)).status_code == 429
    elsewhere = bare_client(app, "198.51.100.8")  # another address is not held back
    assert elsewhere.get("/v1/models", headers=bearer(right)).status_code == 200
    assert bare_client(app, "198.51.100.9").get("/v1/models").status_code == 401  # no key: not a guess


# 5. Big /v1 histories

def test_a_v1_request_over_the_text_cap_is_413_with_a_sentence(make_app):
    app = make_app(WEBBOT_MAX_REQUEST_CHARS=20_000)
    turns = [{"role": "user", "content": "x " * 3000}, {"role": "assistant", "content": "y " * 3000}] * 2
    big = bare_client(app).post(V1, json={"model": "x", "max_tokens": 1,
                                          "messages": turns + [{"role": "user", "content": "hi"}]})
    assert big.status_code == 413
    assert "more than 20000 characters in all" in big.json["error"]["message"]
    assert "send only the newest ones" in big.json["error"]["message"]
    fits = bare_client(app).post(V1, json={"model": "x", "max_tokens": 1,
                                           "messages": turns[:2] + [{"role": "user", "content": "hi"}]})
    assert fits.status_code == 200


class SlowTokenizer:
    """The real Llama 3.2 tokenizer, made to wait on an event while it encodes a text holding SLOW."""

    def __init__(self, tokenizer):
        self.inner, self.release, self.entered = tokenizer, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, text, **kwargs):
        if "SLOW" in text:
            self.entered.set()
            assert self.release.wait(30)
        return self.inner(text, **kwargs)

    def apply_chat_template(self, messages, **kwargs):
        if any("SLOW" in m["content"] for m in messages):
            self.entered.set()
            assert self.release.wait(30)
        return self.inner.apply_chat_template(messages, **kwargs)


def test_one_big_history_being_counted_holds_up_nobody_else(llama_tokenizer):
    from webbot.model.memory import Memory

    slow = SlowTokenizer(llama_tokenizer)
    memory = Memory(slow, max_tokens=4096)
    stuck = threading.Thread(target=memory.plan, args=([{"role": "user", "content": "SLOW " * 500},
                                                        {"role": "assistant", "content": "ok"}], "next"))
    stuck.start()
    assert slow.entered.wait(10)
    started = time.monotonic()
    done = threading.Thread(target=memory.plan, args=([{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "hello"}], "again"))
    done.start()
    done.join(5)
    others_waited = done.is_alive()
    slow.release.set()
    stuck.join(10)
    assert not others_waited, "planning one conversation waited for another's tokenising"
    assert time.monotonic() - started < 5


def test_the_turn_count_cache_keeps_no_text_and_stays_bounded(llama_tokenizer, monkeypatch):
    from webbot.model import memory as memory_module

    monkeypatch.setattr(memory_module, "TURN_COST_ENTRIES", 8)
    memory = memory_module.Memory(llama_tokenizer, max_tokens=8192)
    history = []
    for n in range(20):
        history += [{"role": "user", "content": f"question {n} " + "lorem ipsum " * 400},
                    {"role": "assistant", "content": f"answer {n}"}]
    memory.plan(history, "last")
    keys = list(memory._turn_costs)
    assert len(keys) == 8 and all(isinstance(k, bytes) and len(k) == 20 for k in keys)


# 6. Smaller bugs

def test_an_export_over_2_mb_imports_back_whole(app, client):
    big = "All work and no play makes Jack a dull boy. " * 13_000  # 572 kB a message, under the import's limit
    exported = {"format": "webbot-conversations/1", "conversations": [
        {"title": f"Long chat {n}", "messages": [
            {"id": 1, "role": "user", "content": big}, {"id": 2, "parent": 1, "role": "assistant", "content": big},
            {"id": 3, "parent": 2, "role": "user", "content": big}]}
        for n in range(3)]}
    body = json.dumps(exported)
    assert len(body) > 4_000_000
    response = client.post("/api/import", data=body, content_type="application/json")
    assert response.status_code == 201, response.get_data(as_text=True)[:300]
    assert response.json["imported"] == 3
    for conversation in response.json["conversations"]:
        stored = client.get(f"/api/conversations/{conversation['id']}").json["messages"]
        assert [m["content"] for m in stored] == [big, big, big]


UNSTORABLE_BODIES = [
    ("post", "/api/conversations/{cid}/messages", {"content": "a\x00b"}, "a NUL character"),
    ("post", "/api/conversations/{cid}/messages", {"content": "a\ud800b"}, "an unpaired surrogate (\\ud800)"),
    ("patch", "/api/conversations/{cid}", {"title": "t\x00"}, "a NUL character"),
    ("patch", "/api/conversations/{cid}", {"title": "t\udfff"}, "an unpaired surrogate"),
    ("patch", "/api/conversations/{cid}", {"settings": {"system_prompt": "be \ud800 brief"}}, "unpaired surrogate"),
    ("put", "/api/settings", {"system_prompt": "x\x00"}, "a NUL character"),
    ("post", "/api/conversations", {"title": "new\x00"}, "a NUL character"),
    ("post", "/api/import", {"conversations": [{"title": "t\ud800", "messages": []}]}, "unpaired surrogate"),
    ("post", "/api/import", {"conversations": [{"messages": [{"role": "user", "content": "\x00"}]}]}, "NUL"),
    ("post", "/api/import", {"conversations": [{"created_at": math.nan, "messages": []}]}, "is not a time"),
    ("post", "/api/import", {"conversations": [{"messages": [
        {"role": "user", "content": "hi", "created_at": math.inf}]}]}, "is not a time"),
]


@pytest.mark.parametrize("method, path, body, words", UNSTORABLE_BODIES)
def test_text_no_database_can_keep_is_a_400_and_changes_nothing(client, method, path, body, words):
    cid = new_conversation(client)
    send(client, cid, "kept")
    before = client.get(f"/api/conversations/{cid}").json
    listed, saved = titles(client), client.get("/api/settings").json["saved"]
    response = getattr(client, method)(path.format(cid=cid), data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert words in response.json["error"]["message"], response.json
    assert client.get(f"/api/conversations/{cid}").json == before
    assert titles(client) == listed and client.get("/api/settings").json["saved"] == saved


@pytest.mark.parametrize("body", [
    {"model": "x", "messages": [{"role": "user", "content": "hi \ud800"}]},
    {"model": "x", "messages": [{"role": "system", "content": "\x00"}, {"role": "user", "content": "hi"}]},
    {"model": "x", "messages": [{"role": "user", "content": "hi"}], "stop": ["\udc00"]},
    {"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": [1]},
])
def test_bad_text_and_shapes_on_v1_are_400(app, body):
    response = bare_client(app).post(V1, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"]["message"].endswith(".")


@pytest.mark.parametrize("path", ["/api/conversations", V1, "/api/import", "/api/settings"])
def test_json_nested_100000_deep_is_a_400(client, path):
    deep = "[" * 100_000 + "]" * 100_000
    method = client.put if path == "/api/settings" else client.post
    response = method(path, data=deep, content_type="application/json")
    assert response.status_code == 400 and "nested too deeply" in response.json["error"]["message"]


def test_a_system_prompt_saved_with_a_surrogate_by_an_older_version_breaks_nothing(app, client):
    cid = new_conversation(client)
    owner = client.get("/api/conversations").json["conversations"][0]["owner"]
    services(app).store.save_preferences(owner, {"system_prompt": "be brief \ud800"})
    assert client.get(f"/api/conversations/{cid}").status_code == 200
    assert [event for event, _ in send(client, cid, "hello")][-1] == "done"


def test_sign_in_never_redirects_to_a_header_with_line_breaks(make_app):
    app = make_app(WEBBOT_AUTH="password", WEBBOT_PASSWORD="household-pass", WEBBOT_RATE_SIGNIN="off")
    for target in ("/\r\n//evil.example", "/x\nSet-Cookie: a=b", "/\\evil.example", "/a\tb"):
        client = FlaskClient(app, app.response_class, use_cookies=True)
        answer = sign_in_household(client, query_string={"next": target})
        assert answer.status_code == 302 and answer.headers["Location"] == "/", (target, answer.status_code)


def test_restoring_a_deleted_conversation_keeps_to_the_limit(make_app):
    page = make_app(WEBBOT_MAX_CONVERSATIONS=2).test_client()
    first = new_conversation(page)
    new_conversation(page)
    assert page.delete(f"/api/conversations/{first}").status_code == 204
    new_conversation(page)  # room again: the deleted one no longer counts
    refused = page.post(f"/api/conversations/{first}/restore")
    assert refused.status_code == 409 and "delete some" in refused.json["error"]["message"]
    assert len(titles(page)) == 2
    assert page.post("/api/conversations/nope/restore").status_code == 404  # an unknown id is still a 404


def test_ffmpeg_and_ffprobe_may_open_nothing_but_their_stdin(tmp_path, monkeypatch):
    """Both run with -protocol_whitelist pipe (seen by wrappers on PATH that log their arguments), and a
    playlist or concat file inside an upload that points at a local file is refused."""
    import os
    import subprocess

    from webbot.voice import uploads

    log = tmp_path / "argv.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ffmpeg", "ffprobe"):
        real = shutil.which(tool)
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    secret = tmp_path / "secret.wav"
    secret.write_bytes(subprocess.run(["espeak-ng", "--stdout", "the secret"], capture_output=True,
                                      check=True).stdout)
    clip = secret.read_bytes()
    assert uploads.probe(clip).codec and uploads.decode(clip, 30).size > 0
    lines = log.read_text().splitlines()
    assert {line.split()[0] for line in lines} == {"ffmpeg", "ffprobe"}
    assert all("-protocol_whitelist pipe" in line for line in lines), lines
    playlists = [
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\nfile://{secret}\n#EXT-X-ENDLIST\n",
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\nhttp://127.0.0.1:9/x.wav\n#EXT-X-ENDLIST\n",
        f"ffconcat version 1.0\nfile {secret}\n",
    ]
    for playlist in playlists:
        with pytest.raises(uploads.AudioError) as refused:
            uploads.probe(playlist.encode())
        assert refused.value.status == 400
