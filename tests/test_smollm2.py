"""A real instruct model (SmolLM2-135M-Instruct) answers through the page's stream and the openai client.

The server is a real `python app.py` process on a free port; greedy decoding keeps the
answers repeatable.
"""

import openai
import pytest

from harness.server_process import PageSession, read_sse

QUESTION = "What is the capital of France?"


@pytest.mark.slow
def test_page_stream_answers_paris(smollm2_server):
    session = PageSession()
    health = session.get(smollm2_server.url + "/healthz").json()
    assert health["status"] == "ok" and health["model"] == "smollm2"
    assert health["speech"] == {"model": "whisper-tiny-en-ct2", "backend": "faster-whisper", "status": "not loaded"}
    cid = session.post(smollm2_server.url + "/api/conversations", json={}).json()["id"]
    response = session.post(f"{smollm2_server.url}/api/conversations/{cid}/messages",
                            json={"content": QUESTION, "temperature": 0}, stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    events = read_sse(response.iter_lines())
    tokens = [d["text"] for e, d in events if e == "token"]
    assert len(tokens) >= 2  # streamed piece by piece (each saved before it is sent), not in one block
    done = events[-1][1]
    assert events[-1][0] == "done" and done["finish_reason"] == "stop"  # ended at <|im_end|>
    assert "Paris" in "".join(tokens) and "Paris" in done["message"]["html"]
    assert "<|im_end|>" not in done["message"]["content"]


def test_openai_client_answers_paris_streamed_and_not(smollm2_server):
    client = openai.OpenAI(base_url=smollm2_server.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=40)
    assert "Paris" in reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=40,
                                            stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "Paris" in text and text == reply.choices[0].message.content


def test_memory_carries_earlier_turns(smollm2_server):
    client = openai.OpenAI(base_url=smollm2_server.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=30, messages=[
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "Repeat the city you just named, one word."}])
    assert "Paris" in reply.choices[0].message.content
