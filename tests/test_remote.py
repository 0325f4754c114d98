"""WEBBOT_BACKEND=openai and WEBBOT_SPEECH_URL against real OpenAI-compatible servers no one here wrote for us:
`transformers serve` (from the transformers package) on SmolLM2, and our own app in local mode serving another in
openai mode. Everything runs as real processes on loopback.
"""

import os
import signal
import subprocess
import time

import pytest
import requests
from openai import OpenAI

from harness.audio import speak
from harness.server_process import ROOT, PageSession, free_port, read_sse
from tests.helpers import scrape, until, until_line, value
from webbot.config import DEFAULT_SYSTEM_PROMPT

PARIS = "What is the capital of France?"


def ask(page: PageSession, server, content: str, **extra) -> list:
    cid = page.post(server.url + "/api/conversations", json={}, timeout=30).json()["id"]
    response = page.post(f"{server.url}/api/conversations/{cid}/messages", stream=True, timeout=120,
                         json={"content": content, "temperature": 0, **extra})
    assert response.status_code == 200, response.text
    return cid, read_sse(response.iter_lines(decode_unicode=True))


def remote_env(upstream_url: str, model_dir, served: str) -> dict:
    return {"WEBBOT_BACKEND": "openai", "WEBBOT_BACKEND_URL": upstream_url, "WEBBOT_BACKEND_MODEL": served,
            "WEBBOT_MAX_TOKENS": "2048", "WEBBOT_BACKEND_TIMEOUT": "30"}


@pytest.fixture
def transformers_serve(smollm2_dir, tmp_path):
    """`transformers serve` with SmolLM2 preloaded, on a free port."""
    port = free_port()
    (tmp_path / "hub").mkdir()
    log = open(tmp_path / "transformers-serve.log", "wb")
    process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "transformers"), "serve", str(smollm2_dir), "--port",
                                str(port), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, (tmp_path / "transformers-serve.log").read_text()
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "transformers serve did not start"
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(30)
    log.close()


@pytest.mark.slow
def test_transformers_serve_as_the_model_server(start_server, smollm2_dir, transformers_serve):
    server = start_server(smollm2_dir, **remote_env(transformers_serve, smollm2_dir, str(smollm2_dir)))
    health = requests.get(server.url + "/healthz", timeout=10).json()
    assert health["checks"]["upstream"]["status"] == "ok"

    page = PageSession()
    cid, events = ask(page, server, PARIS)
    tokens = [data["text"] for event, data in events if event == "token"]
    assert len(tokens) >= 2 and "Paris" in "".join(tokens)  # streamed piece by piece
    done = events[-1][1]
    assert events[-1][0] == "done" and done["message"]["status"] == "complete" and "Paris" in done["message"]["html"]
    stored = page.get(f"{server.url}/api/conversations/{cid}", timeout=30).json()["messages"]
    assert stored[-1]["content"] == "".join(tokens)

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="x", messages=[{"role": "user", "content": PARIS}], temperature=0)
    assert "Paris" in reply.choices[0].message.content and reply.usage.completion_tokens > 0


@pytest.fixture
def upstream(start_server, smollm2_dir, tmp_path):
    """Our own app in local mode on SmolLM2, the model server for another replica."""
    return start_server(smollm2_dir, tmp_path / "upstream", WEBBOT_MAX_TOKENS="4096")


@pytest.mark.slow
def test_our_app_serves_another_in_openai_mode_and_stop_cancels_upstream(start_server, smollm2_dir, upstream,
                                                                         tmp_path):
    # Our app takes vLLM's cache_salt (it ignores fields it does not know), so the replica may send it.
    server = start_server(smollm2_dir, tmp_path / "front", WEBBOT_BACKEND_CACHE_SALT="on",
                          **remote_env(upstream.url + "/v1", smollm2_dir, "smollm2"))
    page = PageSession()
    cid, events = ask(page, server, PARIS)
    assert events[-1][0] == "done" and "Paris" in "".join(data["text"] for event, data in events if event == "token")
    assert events[-1][1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    follow = page.post(f"{server.url}/api/conversations/{cid}/messages", stream=True, timeout=120,
                       json={"content": "And of Italy?", "temperature": 0, "max_tokens": 8})
    done = read_sse(follow.iter_lines(decode_unicode=True))[-1]
    # The model server reused the first exchange from its own cache, and with the salt on the replica says so.
    assert done[0] == "done" and done[1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 20
    gauge = events[0][1]["memory"]
    # The replica counts the prompt with the model's own tokenizer and template: exactly what the server sees.
    direct = OpenAI(base_url=upstream.url + "/v1", api_key="unused").chat.completions.create(
        model="smollm2", messages=[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                   {"role": "user", "content": PARIS}], max_tokens=1)
    assert gauge["used"] == direct.usage.prompt_tokens

    # Stop on the page cancels the request upstream: the model server's own metrics say so.
    before = value(scrape(upstream), "webbot_replies_total", reason="cancelled")
    response = page.post(f"{server.url}/api/conversations/{cid}/messages", stream=True, timeout=60,
                         json={"content": "Write a very long story about the sea.", "max_tokens": 900})
    lines = response.iter_lines(decode_unicode=True)
    until_line(lines, "event: token")
    assert value(scrape(upstream), "webbot_active_streams") == 1
    assert page.post(f"{server.url}/api/conversations/{cid}/stop", timeout=30).json() == {"stopped": True}
    stopped = time.monotonic()
    while value(scrape(upstream), "webbot_active_streams") != 0:
        assert time.monotonic() - stopped < 2, "the model server still generates 2 s after Stop"
        time.sleep(0.05)
    assert value(scrape(upstream), "webbot_replies_total", reason="cancelled") == before + 1
    assert page.get(f"{server.url}/api/conversations/{cid}", timeout=30).json()["messages"][-1]["status"] == "stopped"


@pytest.mark.slow
def test_killing_the_model_server_mid_reply_keeps_the_reply_as_interrupted(start_server, tiny_model_dir, tmp_path):
    upstream = start_server(tiny_model_dir, tmp_path / "upstream", WEBBOT_MAX_TOKENS="65536")
    server = start_server(tiny_model_dir, tmp_path / "front", **{
        **remote_env(upstream.url + "/v1", tiny_model_dir, "tiny-llama"), "WEBBOT_MAX_TOKENS": "65536"})
    page = PageSession()
    cid = page.post(server.url + "/api/conversations", json={}, timeout=30).json()["id"]
    response = page.post(f"{server.url}/api/conversations/{cid}/messages", stream=True, timeout=60,
                         json={"content": "Go on forever.", "temperature": 0})
    lines = response.iter_lines(decode_unicode=True)
    until_line(lines, "event: token", count=20)
    upstream.process.send_signal(signal.SIGKILL)
    events = read_sse(lines)
    assert events[-1][0] == "error"
    message = events[-1][1]["message"]
    assert "stopped answering in the middle of this reply" in message and "What arrived is kept" in message
    assert events[-1][1]["status"] == "interrupted"
    stored = page.get(f"{server.url}/api/conversations/{cid}", timeout=30).json()["messages"][-1]
    assert stored["status"] == "interrupted" and len(stored["content"]) > 0

    refused = page.post(f"{server.url}/api/conversations/{cid}/messages", json={"content": "Hello?"}, timeout=30)
    assert refused.status_code == 502 and "unreachable" in refused.json()["error"]["message"]
    assert len(page.get(f"{server.url}/api/conversations/{cid}", timeout=30).json()["messages"]) == 2  # none added
    api = requests.post(server.url + "/v1/chat/completions", timeout=30,
                        json={"model": "x", "messages": [{"role": "user", "content": "Hello?"}]})
    assert api.status_code == 502 and api.json()["error"]["code"] == "upstream_unreachable"
    health = requests.get(server.url + "/healthz", timeout=10)
    assert health.status_code == 503 and "unreachable" in health.json()["error"]


@pytest.mark.slow
def test_a_slow_model_server_is_a_504_not_a_hang(start_server, tiny_model_dir, tmp_path):
    """A server that accepts connections and never answers (a bare socket) times out with a sentence."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    server = start_server(tiny_model_dir, tmp_path / "front", ready=(200, 503),
                          **{**remote_env(url, tiny_model_dir, "tiny"), "WEBBOT_BACKEND_TIMEOUT": "2"})
    # The tokenizer loads; /healthz stays 503 throughout, for the silent server.
    until(lambda: requests.get(server.url + "/healthz", timeout=10).json()["checks"]["model"]["status"] == "ok", 60)
    started = time.monotonic()
    response = requests.post(server.url + "/v1/chat/completions", timeout=30,
                             json={"model": "x", "messages": [{"role": "user", "content": "Hello?"}]})
    assert response.status_code == 504 and "did not answer within 2 seconds" in response.json()["error"]["message"]
    assert time.monotonic() - started < 10
    silent.close()


@pytest.mark.slow
def test_speech_through_a_transcription_server(start_server, tiny_model_dir, whisper_ct2_dir, tmp_path):
    upstream = start_server(tiny_model_dir, tmp_path / "speech-server", WEBBOT_SPEECH_BACKEND="faster-whisper",
                            WEBBOT_WHISPER_MODEL=str(whisper_ct2_dir))
    server = start_server(tiny_model_dir, tmp_path / "front", WEBBOT_SPEECH_URL=upstream.url + "/v1",
                          WEBBOT_WHISPER_MODEL="whisper-1")
    page = PageSession()
    clip = speak(PARIS)
    heard = page.post(server.url + "/api/transcriptions", files={"file": ("q.wav", clip, "audio/wav")}, timeout=120)
    assert heard.status_code == 200, heard.text
    assert "capital of france" in heard.json()["text"].lower() and heard.json()["speech"] is True
    assert requests.get(server.url + "/healthz").json()["speech"]["backend"] == "openai"

    upstream.stop()
    down = page.post(server.url + "/api/transcriptions", files={"file": ("q.wav", clip, "audio/wav")}, timeout=60)
    assert down.status_code == 502 and "speech server" in down.json()["error"]["message"]
