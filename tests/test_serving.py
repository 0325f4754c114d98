"""Serving many users from the real server process: /metrics, the bounded queue, disconnects."""

import time

import pytest
import requests

from harness.server_process import PageSession, read_sse
from tests.helpers import scrape, until_line, value


def chat_stream(server, messages: list[dict], max_tokens: int, **kw) -> requests.Response:
    return requests.post(server.url + "/v1/chat/completions", stream=True, timeout=60,
                         json={"model": "x", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                               "stream": True, **kw})


def stream_text(response: requests.Response) -> str:
    text = ""
    for _, data in read_sse(response.iter_lines()):
        if data != "[DONE]" and data["choices"]:
            text += data["choices"][0]["delta"].get("content") or ""
    return text


@pytest.fixture
def tiny_server(start_server, tiny_model_dir):
    return start_server(tiny_model_dir, WEBBOT_MAX_TOKENS="2048")


@pytest.mark.slow
def test_metrics_parse_and_move_with_each_reply(tiny_server):
    before = scrape(tiny_server)
    assert value(before, "webbot_generated_tokens_total") == 0
    assert value(before, "webbot_active_streams") == 0 and value(before, "webbot_queue_depth") == 0
    assert value(before, "webbot_kv_cache_budget_bytes") == 2048 * 1024 * 1024  # the CPU default

    # Two turns of one conversation through the stateless API: the client sends the history back.
    messages = [{"role": "user", "content": "Tell me about the tides."}]
    first = stream_text(chat_stream(tiny_server, messages, 20))
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And the moon?"}]
    stream_text(chat_stream(tiny_server, messages, 20))

    after = scrape(tiny_server)
    assert value(after, "webbot_generated_tokens_total") == 40
    assert value(after, "webbot_replies_total", reason="length") == 2
    assert value(after, "webbot_time_to_first_token_seconds_count") == 2
    assert value(after, "webbot_time_per_output_token_seconds_count") == 38
    assert value(after, "webbot_time_to_first_token_seconds_sum") > 0
    reused = value(after, "webbot_prompt_tokens_total", source="reused")
    computed = value(after, "webbot_prompt_tokens_total", source="computed")
    assert reused > 40 and computed > 40  # the second turn reused the first turn's prompt
    assert value(after, "webbot_kv_cache_bytes") > 0
    assert value(after, "webbot_active_streams") == 0 and value(after, "webbot_kv_cache_evictions_total") == 0


@pytest.mark.slow
def test_metrics_need_the_api_key_when_one_is_set(start_server, tiny_model_dir):
    server = start_server(tiny_model_dir, WEBBOT_API_KEY="s3cret")
    refused = requests.get(server.url + "/metrics", timeout=10)
    assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
    assert value(scrape(server, Authorization="Bearer s3cret"), "webbot_active_streams") == 0


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after_on_the_api_and_the_page(start_server, tiny_model_dir):
    server = start_server(tiny_model_dir, WEBBOT_MAX_TOKENS="65536", WEBBOT_MAX_BATCH="1", WEBBOT_MAX_WAITING="1")
    running = chat_stream(server, [{"role": "user", "content": "Go on forever."}], 100_000)
    lines = running.iter_lines()
    until_line(lines, b"data: {")  # the first token is out: the only slot is taken
    waiting = chat_stream(server, [{"role": "user", "content": "Me next."}], 3)  # fills the queue

    refused = requests.post(server.url + "/v1/chat/completions", timeout=30,
                            json={"model": "x", "messages": [{"role": "user", "content": "And me?"}]})
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert "busy" in refused.json()["error"]["message"] and refused.json()["error"]["code"] == "busy"

    page = PageSession()
    cid = page.post(server.url + "/api/conversations", json={}).json()["id"]
    refused = page.post(f"{server.url}/api/conversations/{cid}/messages", json={"content": "hello"}, timeout=30)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert "try again" in refused.json()["error"]["message"]
    assert page.get(f"{server.url}/api/conversations/{cid}").json()["messages"] == []  # nothing half-stored
    samples = scrape(server)
    assert value(samples, "webbot_rejected_requests_total") == 2 and value(samples, "webbot_queue_depth") == 1

    running.close()  # the first user leaves; the queued reply runs and completes
    assert len(stream_text(waiting)) > 0
    assert value(scrape(server), "webbot_replies_total", reason="cancelled") == 1


@pytest.mark.slow
def test_a_disconnected_stream_frees_its_slot_within_a_second(start_server, tiny_model_dir):
    # A reply budget of 16k tokens keeps the tiny model writing for many seconds, however slow the client.
    tiny_server = start_server(tiny_model_dir, WEBBOT_MAX_TOKENS="65536")
    response = chat_stream(tiny_server, [{"role": "user", "content": "Go on forever."}], 100_000)
    # Read through one iterator kept alive: leaving a `for` loop over iter_lines() closes the generator,
    # which closes the connection, and the server (rightly) cancels the reply at once.
    lines = response.iter_lines()
    until_line(lines, b"data: {", count=5)
    assert value(scrape(tiny_server), "webbot_active_streams") == 1
    response.close()
    closed = time.monotonic()
    while value(scrape(tiny_server), "webbot_active_streams") != 0:
        assert time.monotonic() - closed < 1.0, "the stream still runs a second after its client left"
        time.sleep(0.02)
    assert value(scrape(tiny_server), "webbot_replies_total", reason="cancelled") == 1


@pytest.mark.slow
def test_concurrent_api_streams_equal_sequential_ones(tiny_server):
    """Several clients at once through the real server: each gets exactly what it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    questions = [f"Question {n}: what is {n} + {n}?" for n in range(4)]
    alone = [stream_text(chat_stream(tiny_server, [{"role": "user", "content": q}], 24)) for q in questions]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda q: stream_text(chat_stream(tiny_server, [{"role": "user", "content": q}],
                                                                   24)), questions))
    assert together == alone and all(alone)
