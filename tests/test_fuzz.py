"""Fuzzing: schemathesis against the /v1 API's own OpenAPI description on a real server process, and
hypothesis on the page routes' inputs. Nothing may answer 5xx (other than 503 with Retry-After), every
4xx must carry a sentence, and nothing may hang.

The /v1 run leaves out schemathesis' `positive_data_acceptance` check: the server rightly refuses some
inputs the schema cannot rule out (a last message that is not the user's, blank text, bytes that are not
audio), so "schema-valid but refused" is not a fault here. All its other checks run, among them
not_a_server_error, the status, content-type and response-schema conformance checks,
negative_data_rejection (what the schema forbids must get a 4xx) and ignored_auth (no key, no answer).
"""

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SCHEMATHESIS = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]


@pytest.mark.slow
def test_schemathesis_finds_no_fault_in_the_api(start_server, tiny_model_dir, tiny_whisper_dir, piper_voice,
                                                tmp_path):
    server = start_server(tiny_model_dir, WEBBOT_API_KEY="fuzz-key", WEBBOT_MAX_TOKENS="512",
                          WEBBOT_RATE_MESSAGES="off", WEBBOT_RATE_TRANSCRIPTIONS="off", WEBBOT_RATE_SPEECH="off",
                          WEBBOT_RATE_DOCUMENTS="off",
                          WEBBOT_TTS_VOICE=str(piper_voice),
                          WEBBOT_WHISPER_MODEL=str(tiny_whisper_dir), WEBBOT_SPEECH_BACKEND="transformers")
    report = tmp_path / "schemathesis.json"
    run = subprocess.run([*SCHEMATHESIS, "run", server.url + "/v1/openapi.json", "-H", "Authorization: Bearer fuzz-key",
                          "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "40",
                          "--seed", "1", "--request-timeout", "60", "--workers", "1", "--no-color",
                          "--generation-database", "none", "--report", "json", "--report-json-path", str(report)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "9 selected / 9 total" in run.stdout and " passed" in run.stdout
    generated = int(run.stdout.rsplit("Test cases:", 1)[1].split("generated")[0].strip())
    assert generated >= 100, run.stdout[-2000:]
    assert json.loads(report.read_text())  # the report was written


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
FIELDS = st.sampled_from(["content", "title", "max_tokens", "temperature", "top_p", "stop", "format"])
BODIES = st.dictionaries(FIELDS, JSON_VALUES, max_size=5) | JSON_VALUES
IDS = st.text(max_size=40) | st.sampled_from(["", "0" * 32, "..", "%2e%2e", "a/b"])


@pytest.fixture(scope="module")
def fuzz_app(tiny_model_dir, tmp_path_factory):
    """The real app on the tiny model with one conversation; hypothesis needs it to outlive one example."""
    from app import create_app
    from chat_bot import ChatBot
    from tests.helpers import page_client_class

    bot = ChatBot(str(tiny_model_dir), max_tokens=256).load()
    app = create_app({"TESTING": True, "WEBBOT_DATA_DIR": str(tmp_path_factory.mktemp("fuzz") / "data"),
                      "WEBBOT_CERT": "", "WEBBOT_KEY": "", "WEBBOT_RATE_MESSAGES": "off"}, bot=bot)
    app.test_client_class = page_client_class()
    client = app.test_client()
    cid = client.post("/api/conversations", json={}).json["id"]
    return app, client, cid


def check(response) -> None:
    """No 5xx but a 503 that says when to retry; a 4xx says what was wrong, in a sentence."""
    status = response.status_code
    assert status < 500 or (status == 503 and "Retry-After" in response.headers), (status, response.data[:300])
    if 400 <= status < 500:
        body = response.get_data(as_text=True)
        if response.is_json:
            message = response.json["error"]["message"]
        else:
            assert "<main class=\"error-page\">" in body or "form-error" in body, body[:300]
            message = body
        assert message.strip().endswith((".", ")")) or "</p>" in message, message[:300]


SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@SLOW
@given(body=BODIES)
def test_new_conversation_and_rename_take_any_json(fuzz_app, body):
    app, client, cid = fuzz_app
    check(client.post("/api/conversations", json=body))
    check(client.patch(f"/api/conversations/{cid}", json=body))
    assert client.get(f"/api/conversations/{cid}").status_code == 200


@SLOW
@given(body=BODIES)
def test_sending_any_json_as_a_message_never_fails_the_server(fuzz_app, body):
    app, client, cid = fuzz_app
    before = client.get(f"/api/conversations/{cid}").json["messages"]
    response = client.post(f"/api/conversations/{cid}/messages", json=body)
    check(response)
    data = response.get_data()  # reads the whole stream when it was accepted
    response.close()
    after = client.get(f"/api/conversations/{cid}").json["messages"]
    if response.status_code == 200:
        assert b"event: done" in data and len(after) == len(before) + 2
    else:
        assert after == before  # a refused message stores nothing


@SLOW
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(
    ["application/json", "text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", ""]))
def test_raw_bodies_of_any_type_get_a_4xx_or_work(fuzz_app, raw, content_type):
    app, client, cid = fuzz_app
    for method, path in [("POST", "/api/conversations"), ("POST", f"/api/conversations/{cid}/messages"),
                         ("PATCH", f"/api/conversations/{cid}"), ("POST", "/api/transcriptions")]:
        response = client.open(path, method=method, data=raw, headers={"Content-Type": content_type})
        check(response)
        response.get_data()
        response.close()


@SLOW
@given(conversation_id=IDS, kind=st.text(max_size=12))
def test_any_conversation_id_or_export_format_is_a_clean_4xx(fuzz_app, conversation_id, kind):
    app, client, cid = fuzz_app
    from urllib.parse import quote

    quoted = quote(conversation_id, safe="")
    for response in (client.get(f"/c/{quoted}", headers={"Accept": "text/html"}),
                     client.get(f"/api/conversations/{quoted}"),
                     client.get(f"/api/conversations/{quoted}/export", query_string={"format": kind}),
                     client.delete(f"/api/conversations/{quoted}"),
                     client.post(f"/api/conversations/{quoted}/stop")):
        check(response)
    export = client.get(f"/api/conversations/{cid}/export", query_string={"format": kind})
    check(export)
    assert export.status_code == (200 if kind in ("json", "markdown") else 400)


@SLOW
@given(query=st.text(max_size=60) | st.sampled_from(['"', '*', 'NEAR(a b)', 'a OR', '^x', 'col:x', "'", "(("]))
def test_any_search_text_is_a_result_list_never_a_query_error(fuzz_app, query):
    _, client, _ = fuzz_app
    response = client.get("/api/search", query_string={"q": query})
    check(response)
    assert response.status_code == 200 and isinstance(response.json["results"], list)
