"""Voice against a real `python app.py` process: the official `openai` client's
`audio.transcriptions.create` unchanged, and the whole path from a spoken question to
the real SmolLM2 model's answer. Speech from espeak-ng, Whisper tiny.en via faster-whisper.
"""

import re
import time

import pytest
import requests

from harness.audio import convert, generate_audio, speak
from harness.server_process import PageSession

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def client(smollm2_server):
    from openai import OpenAI

    return OpenAI(base_url=smollm2_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def question_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("voice") / "question.webm"
    path.write_bytes(convert(speak(QUESTION), "-c:a", "libopus", fmt="webm"))
    return path


@pytest.mark.slow
def test_openai_client_transcribes_in_each_format(client, question_file):
    with open(question_file, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert result.text == QUESTION
    with open(question_file, "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert text.strip() == QUESTION
    with open(question_file, "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     language="en")
    assert verbose.language == "english" and 1.5 < verbose.duration < 2.5
    assert verbose.segments[0].text == QUESTION


def test_openai_client_sees_bad_audio_as_a_400_with_the_sentence(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("notes.webm", b"plain text, not audio\n" * 10))
    assert "holds no audio" in str(caught.value)


def test_spoken_question_to_answer_mentions_paris(client):
    clip = convert(speak(QUESTION, voice="en-gb"), "-ar", "48000", "-ac", "2", "-c:a", "aac",
                   "-movflags", "frag_keyframe+empty_moov", fmt="mp4")  # as Safari records
    heard = client.audio.transcriptions.create(model="whisper-1", file=("question.m4a", clip)).text
    assert re.sub(r"\W", "", heard.lower()) == "whatisthecapitaloffrance", heard
    stream = client.chat.completions.create(model="any", messages=[{"role": "user", "content": heard}],
                                            stream=True, temperature=0, max_tokens=60)
    answer = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "Paris" in answer, answer


def test_page_route_on_the_real_server(smollm2_server, question_file):
    with PageSession() as browser:
        response = browser.post(smollm2_server.url + "/api/transcriptions",
                                files={"file": ("recording.webm", question_file.read_bytes(), "audio/webm")})
        assert response.status_code == 200 and response.json()["text"] == QUESTION
        silence = generate_audio("anullsrc=r=48000:cl=mono", 2, "-c:a", "libopus", fmt="webm")
        response = browser.post(smollm2_server.url + "/api/transcriptions", files={"file": ("r.webm", silence)})
        assert response.json()["speech"] is False


def test_an_oversized_upload_gets_a_clean_413(smollm2_server):
    big = generate_audio("anoisesrc=a=0.5:r=48000", 15, fmt="wav")  # ~1.4 MB over the server's 1 MB
    response = requests.post(smollm2_server.url + "/v1/audio/transcriptions", files={"file": ("big.wav", big)},
                             timeout=60)
    assert response.status_code == 413
    assert "larger than 1 MB" in response.json()["error"]["message"]
    assert requests.get(smollm2_server.url + "/healthz", timeout=10).status_code == 200


@pytest.mark.slow
def test_speech_model_loads_at_startup_when_asked(start_server, tiny_model_dir, whisper_ct2_dir):
    server = start_server(tiny_model_dir, WEBBOT_SPEECH_LOAD="startup", WEBBOT_SPEECH_BACKEND="faster-whisper",
                          WEBBOT_WHISPER_MODEL=str(whisper_ct2_dir))
    deadline = time.monotonic() + 60
    while requests.get(server.url + "/healthz", timeout=10).json()["speech"]["status"] != "ok":
        assert time.monotonic() < deadline, "the speech model did not load at start-up"
        time.sleep(0.2)
    assert "speech model ready" in server.log_path.read_text()


@pytest.mark.slow
def test_a_missing_speech_model_is_reported_not_fatal(start_server, tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, WEBBOT_SPEECH_LOAD="startup",
                          WEBBOT_WHISPER_MODEL=str(tmp_path / "no-whisper-here"))
    deadline = time.monotonic() + 60
    while (health := requests.get(server.url + "/healthz", timeout=10).json())["speech"]["status"] != "error":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert health["status"] == "ok"  # chat still works
    clip = convert(speak(QUESTION), "-c:a", "libopus", fmt="webm")
    response = PageSession().post(server.url + "/api/transcriptions", files={"file": ("r.webm", clip)}, timeout=30)
    assert response.status_code == 503 and "could not be loaded" in response.json()["error"]["message"]
