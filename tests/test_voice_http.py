"""Transcription over HTTP in the app (Flask's test client): the page's /api/transcriptions and
/v1/audio/transcriptions share one path; every bad input gets a 4xx with a sentence.

Speech is real (espeak-ng clips, Whisper tiny.en through faster-whisper).
"""

import io
import math
import threading

import pytest

from harness.audio import convert, generate_audio, speak
from speech import Transcriber

QUESTION = "What is the capital of France?"
ROUTES = ["/api/transcriptions", "/v1/audio/transcriptions"]


@pytest.fixture
def voice_client(make_app, real_transcriber):
    return make_app(transcriber=real_transcriber).test_client()


def upload(client, route, data: bytes, name="clip.webm", **fields):
    form = {"file": (io.BytesIO(data), name), **fields}
    return client.post(route, data=form, content_type="multipart/form-data")


def error_of(response) -> dict:
    return response.get_json()["error"]


@pytest.fixture(scope="module")
def question_webm():
    return convert(speak(QUESTION), "-c:a", "libopus", fmt="webm")


@pytest.mark.parametrize("route", ROUTES)
def test_a_spoken_question_comes_back_as_text(voice_client, question_webm, route):
    response = upload(voice_client, route, question_webm, model="whisper-1")
    assert response.status_code == 200
    assert response.get_json()["text"] == "What is the capital of France?"


def test_page_route_says_whether_speech_was_heard(voice_client):
    silence = generate_audio("anullsrc=r=48000:cl=mono", 3, "-c:a", "libopus", fmt="webm")
    body = upload(voice_client, "/api/transcriptions", silence).get_json()
    assert body == {"text": "", "speech": False, "duration": pytest.approx(3, abs=0.1)}


def test_response_formats(voice_client, question_webm):
    route = "/v1/audio/transcriptions"
    text = upload(voice_client, route, question_webm, response_format="text")
    assert text.status_code == 200 and text.mimetype == "text/plain"
    assert text.get_data(as_text=True) == "What is the capital of France?"
    verbose = upload(voice_client, route, question_webm, response_format="verbose_json").get_json()
    assert verbose["language"] == "english" and 1.5 < verbose["duration"] < 2.5
    segment = verbose["segments"][0]
    assert segment["text"] == verbose["text"] and segment["start"] == 0
    assert {"id", "seek", "end", "tokens", "temperature", "avg_logprob", "compression_ratio",
            "no_speech_prob"} <= set(segment)
    plain = upload(voice_client, route, question_webm, response_format="json").get_json()
    assert plain["usage"] == {"type": "duration", "seconds": math.ceil(verbose["duration"])}


def test_language_is_checked_and_accepted(voice_client, question_webm):
    route = "/v1/audio/transcriptions"
    assert upload(voice_client, route, question_webm, language="en").status_code == 200
    assert upload(voice_client, route, question_webm, language="English").status_code == 200
    bad = upload(voice_client, route, question_webm, language="klingon")
    assert bad.status_code == 400 and "ISO-639-1" in error_of(bad)["message"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("make,name,status,code,words", [
    (lambda clip: b"", "clip.webm", 400, "empty_audio", "empty"),
    (lambda clip: b"just some text, not a recording\n" * 30, "clip.webm", 400, "not_audio", "no audio"),
    (lambda clip: clip[: len(clip) // 2], "clip.webm", 400, "truncated_audio", "cut off"),
    (lambda clip: clip[:300], "clip.webm", 400, "truncated_audio", "cut off"),
])
def test_bad_uploads_get_a_sentence(voice_client, question_webm, route, make, name, status, code, words):
    clip = convert(speak(QUESTION + " " + QUESTION), "-c:a", "libopus", fmt="webm")
    response = upload(voice_client, route, make(clip), name)
    assert response.status_code == status, response.get_json()
    error = error_of(response)
    assert error["code"] == code and words in error["message"] and error["message"].endswith(".")


@pytest.mark.parametrize("route", ROUTES)
def test_request_shape_errors(voice_client, question_webm, route):
    no_file = voice_client.post(route, data={"model": "whisper-1"}, content_type="multipart/form-data")
    assert no_file.status_code == 400 and "'file'" in error_of(no_file)["message"]
    as_json = voice_client.post(route, json={"file": "clip.webm"})
    assert as_json.status_code == 415 and "multipart/form-data" in error_of(as_json)["message"]
    bad_format = upload(voice_client, route, question_webm, response_format="srt-ish")
    assert bad_format.status_code == 400 and "json, text, verbose_json" in error_of(bad_format)["message"]


def test_upload_and_duration_limits_are_413(make_app, real_transcriber, question_webm):
    small = make_app(transcriber=real_transcriber, WEBBOT_MAX_AUDIO_BYTES=100_000).test_client()
    big = generate_audio("anoisesrc=a=0.5:r=48000", 5, fmt="wav")  # ~480 KB
    response = upload(small, "/v1/audio/transcriptions", big, "clip.wav")
    assert response.status_code == 413 and "larger than 0.1 MB" in error_of(response)["message"]
    assert upload(small, "/v1/audio/transcriptions", question_webm).status_code == 200  # 24 KB passes

    short = Transcriber(real_transcriber.model_id, "faster-whisper", max_seconds=3)
    client = make_app(transcriber=short).test_client()
    long_clip = generate_audio("sine=f=200:r=16000", 8, "-c:a", "libopus", fmt="webm")
    response = upload(client, "/api/transcriptions", long_clip)
    assert response.status_code == 413 and "at most 3 s" in error_of(response)["message"]


def test_a_full_queue_is_503_with_retry_after(make_app, real_transcriber, question_webm):
    busy = Transcriber(real_transcriber.model_id, "faster-whisper", max_waiting=0)
    busy._backend = real_transcriber._backend  # share the loaded model
    client = make_app(transcriber=busy).test_client()
    inside, release = threading.Event(), threading.Event()

    def hold():
        with busy.admission.turn():
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(5)
    try:
        response = upload(client, "/v1/audio/transcriptions", question_webm)
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert "busy transcribing" in error_of(response)["message"]
    finally:
        release.set()
        holder.join()
    assert upload(client, "/v1/audio/transcriptions", question_webm).status_code == 200


def test_a_speech_model_that_failed_to_load_is_503_with_the_reason(make_app, tmp_path, question_webm):
    broken = Transcriber(str(tmp_path / "missing-whisper"), "transformers")
    client = make_app(transcriber=broken).test_client()
    response = upload(client, "/api/transcriptions", question_webm)
    assert response.status_code == 503
    message = error_of(response)["message"]
    assert "could not be loaded" in message and "WEBBOT_WHISPER_MODEL" in message
    health = client.get("/healthz").get_json()
    assert health["speech"]["status"] == "error"


def test_api_key_guards_transcriptions_too(make_app, real_transcriber, question_webm):
    client = make_app(transcriber=real_transcriber, WEBBOT_API_KEY="sekret").test_client()
    assert upload(client, "/v1/audio/transcriptions", question_webm).status_code == 401
    response = client.post("/v1/audio/transcriptions", headers={"Authorization": "Bearer sekret"},
                           data={"file": (io.BytesIO(question_webm), "q.webm")}, content_type="multipart/form-data")
    assert response.status_code == 200


def test_a_failed_upload_loses_nothing_stored(voice_client):
    created = voice_client.post("/api/conversations", json={}).get_json()
    upload(voice_client, "/api/transcriptions", b"garbage" * 100)
    again = voice_client.get(f"/api/conversations/{created['id']}")
    assert again.status_code == 200
    assert voice_client.get("/healthz").status_code == 200
