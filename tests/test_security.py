"""CSRF protection on the page's writes and the security headers, on the real app."""

import re

import pytest
from flask.testing import FlaskClient

from harness.server_process import CSRF_META


def bare_client(app) -> FlaskClient:
    """A client that sends no CSRF token unless told to (unlike the page)."""
    return FlaskClient(app, app.response_class, use_cookies=True)


def token_of(client) -> str:
    return CSRF_META.search(client.get("/").get_data(as_text=True)).group(1)


@pytest.fixture
def conversation(app):
    """A client with a conversation of one exchange, made through the page's own (token-carrying) client."""
    client = app.test_client()
    cid = client.post("/api/conversations", json={}).json["id"]
    response = client.post(f"/api/conversations/{cid}/messages", json={"content": "hello", "max_tokens": 3})
    assert response.status_code == 200 and b"event: done" in response.get_data()
    return client, cid


WRITES = [
    ("post", "/api/conversations", {"json": {}}),
    ("patch", "/api/conversations/{cid}", {"json": {"title": "renamed"}}),
    ("delete", "/api/conversations/{cid}", {}),
    ("post", "/api/conversations/{cid}/messages", {"json": {"content": "hi"}}),
    ("post", "/api/conversations/{cid}/stop", {}),
    ("post", "/api/transcriptions", {"data": {}}),
]


@pytest.mark.parametrize("method, path, kwargs", WRITES)
def test_every_page_write_without_the_token_is_refused_and_changes_nothing(app, conversation, method, path, kwargs):
    page, cid = conversation
    before = page.get(f"/api/conversations/{cid}").json
    attacker = bare_client(app)
    for name in ("webbot_owner", "webbot_visitor"):  # even with every cookie of the victim's
        attacker.set_cookie(name, page.get_cookie(name).value)
    response = getattr(attacker, method)(path.format(cid=cid), **kwargs)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "csrf_failed"
    assert "reload the page" in response.json["error"]["message"]
    assert page.get(f"/api/conversations/{cid}").json == before
    assert len(page.get("/api/conversations").json["conversations"]) == 1


def test_a_wrong_or_foreign_token_is_refused_and_the_page_token_accepted(app):
    client, other = bare_client(app), bare_client(app)
    mine = token_of(client)
    assert client.post("/api/conversations", json={}, headers={"X-CSRFToken": "forged"}).status_code == 400
    # a token from another session does not work in this one
    assert client.post("/api/conversations", json={}, headers={"X-CSRFToken": token_of(other)}).status_code == 400
    created = client.post("/api/conversations", json={}, headers={"X-CSRFToken": mine})
    assert created.status_code == 201


def test_the_api_uses_bearer_keys_not_csrf_tokens(make_app):
    app = make_app(WEBBOT_API_KEY="k")
    client = bare_client(app)
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=body).status_code == 401
    ok = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})
    assert ok.status_code == 200 and ok.json["usage"]["completion_tokens"] == 2


def test_security_headers_on_pages_api_and_errors(client):
    for path in ("/", "/api/conversations", "/v1/models", "/no-such-page", "/healthz"):
        response = client.get(path)
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "'unsafe-inline'" not in policy and "object-src 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["X-Frame-Options"] == "DENY"


def test_the_page_has_no_inline_script(client):
    html = client.get("/").get_data(as_text=True)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handlers would be blocked by the CSP"


def test_too_many_messages_get_429_with_retry_after_and_nothing_is_stored(make_app):
    app = make_app(WEBBOT_RATE_MESSAGES="2/minute")
    page = app.test_client()
    cid = page.post("/api/conversations", json={}).json["id"]
    for n in range(2):
        sent = page.post(f"/api/conversations/{cid}/messages", json={"content": f"m{n}", "max_tokens": 2})
        assert sent.status_code == 200 and b"event: done" in sent.get_data()
        sent.close()  # as a browser does at the end of the stream; the conversation is free again
    refused = page.post(f"/api/conversations/{cid}/messages", json={"content": "one more", "max_tokens": 2})
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 61
    message = refused.json["error"]["message"]
    assert message.startswith("Too many messages: the limit is 2 per 1 minute. Try again in ") and refused.json[
        "error"]["code"] == "rate_limited"
    assert [m["content"] for m in page.get(f"/api/conversations/{cid}").json["messages"] if m["role"] == "user"] == [
        "m0", "m1"]
    other = app.test_client()  # another browser session has its own allowance
    other_cid = other.post("/api/conversations", json={}).json["id"]
    assert other.post(f"/api/conversations/{other_cid}/messages", json={"content": "hi", "max_tokens": 2}
                      ).status_code == 200
    # API clients without a session count per address, against the same limit
    api = bare_client(app)
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert [api.post("/v1/chat/completions", json=body).status_code for _ in range(3)] == [200, 200, 429]


def test_the_automatic_title_never_spends_the_persons_message_allowance(make_app):
    page = make_app(WEBBOT_RATE_MESSAGES="2/minute").test_client()
    cid = page.post("/api/conversations", json={}).json["id"]
    first = page.post(f"/api/conversations/{cid}/messages", json={"content": "Hi!", "max_tokens": 8})
    assert first.status_code == 200 and b"event: done" in first.get_data()  # the whole reply, stored
    assert page.post(f"/api/conversations/{cid}/title").status_code == 200  # the page's request after the reply
    second = page.post(f"/api/conversations/{cid}/messages", json={"content": "And then?", "max_tokens": 2})
    assert second.status_code == 200, second.json  # it was a 429: the title had spent the second message


def test_too_many_transcriptions_get_429(make_app):
    app = make_app(WEBBOT_RATE_TRANSCRIPTIONS="1/minute")
    page = app.test_client()
    assert page.post("/api/transcriptions", data={}).status_code == 415  # counted, though it had no file
    refused = page.post("/api/transcriptions", data={})
    assert refused.status_code == 429 and refused.json["error"]["message"].startswith("Too many recordings")


def test_a_malformed_rate_setting_stops_startup_with_a_sentence(make_app):
    with pytest.raises(ValueError, match="WEBBOT_RATE_MESSAGES must be a rate such as 30/minute"):
        make_app(WEBBOT_RATE_MESSAGES="lots")
    make_app(WEBBOT_RATE_MESSAGES="off")  # switched off


def test_the_number_of_conversations_per_person_is_limited(make_app):
    page = make_app(WEBBOT_MAX_CONVERSATIONS=2).test_client()
    assert [page.post("/api/conversations", json={}).status_code for _ in range(2)] == [201, 201]
    refused = page.post("/api/conversations", json={})
    assert refused.status_code == 409 and "delete some to start a new one" in refused.json["error"]["message"]
    assert len(page.get("/api/conversations").json["conversations"]) == 2
    first = page.get("/api/conversations").json["conversations"][0]["id"]
    assert page.delete(f"/api/conversations/{first}").status_code == 204
    assert page.post("/api/conversations", json={}).status_code == 201
