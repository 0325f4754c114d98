"""Spoken replies: Markdown read as speech, Piper's real voice sentence by sentence, and every refusal of
/v1/audio/speech and the page's /api/speech with its status and sentence (the app in this process, the tiny
model, the real en_US-joe-medium voice). The round trip through the real server and the official client is in
test_voice_server.py.
"""

import json
import wave
from io import BytesIO

import pytest

from webbot.voice.speakable import CODE_BLOCK, LONGEST_SENTENCE, sentences, speakable
from webbot.voice.speaker import Speaker, SpeakerBusy
from webbot.web.services import services

TEXT = "My brother bought a new bicycle last Tuesday. She is learning to play the piano."


def test_markdown_is_read_as_speech_not_spelled_out():
    reply = ("# Getting there\nTake the **train**; see https://www.example.org/trains?id=3 or [the map](https://x.io/m).\n"
             "\n```python\nprint('hi')\n```\n```sh\nls\n```\n\n- Use `ls` then $E = mc^2$ where $x$ is 3.\n\n"
             "| City | People |\n|---|---|\n| Lisbon | 545,000 |\n\n$$\\int_0^1 x\\,dx$$\nDr. Smith agreed. Done")
    assert speakable(reply).splitlines() == [
        "Getting there.",
        "Take the train; see a link to example.org or the map.",
        CODE_BLOCK,  # said once for two blocks in a row
        "Use ls then a formula where x is 3.",
        "City, People.",
        "Lisbon, 545,000.",
        "Dr. Smith agreed. Done.",
    ]
    assert sentences(speakable(reply))[-2:] == ["Dr. Smith agreed.", "Done."]
    long = sentences("word, " * 200)
    assert len(long) > 1 and all(len(s) <= LONGEST_SENTENCE for s in long)
    assert " ".join(long).split() == ("word, " * 200).split()


@pytest.fixture(scope="module")
def speaker(piper_voice):
    return Speaker(str(piper_voice))


def test_each_sentence_is_synthesised_only_when_asked_for(speaker):
    voice = speaker.load()
    made = []
    real = type(voice).synthesize

    class Counting(type(voice)):  # the real voice, counting its calls
        def synthesize(self, text, *args, **kwargs):
            made.append(text)
            return real(self, text, *args, **kwargs)

    voice.__class__ = Counting
    try:
        pieces = speaker.speak("One sentence here. Another one there! And a third?")
        first = next(pieces)
        assert made == ["One sentence here."]
        rest = list(pieces)
    finally:
        voice.__class__ = Counting.__bases__[0]
    assert len(made) == 3 and len(rest) == 2
    rate = speaker.sample_rate()
    assert rate == 22050 and 0.5 < len(first) / 2 / rate < 3  # 16-bit mono: about a second of speech
    assert list(speaker.speak("!!! ... ???")) == []  # nothing to say


def test_a_full_queue_is_refused_before_any_audio_and_an_admitted_text_finishes(speaker):
    busy = Speaker(speaker.sources[speaker.default], max_waiting=0)
    busy._voices = speaker._voices  # the same loaded voice
    with busy.admission.turn():  # another text is being spoken
        with pytest.raises(SpeakerBusy):
            next(busy.speak(TEXT))
    assert len(list(busy.speak(TEXT))) == 2


@pytest.fixture
def page(make_app):
    return make_app().test_client()


def wav_seconds(data: bytes) -> float:
    """A streamed WAV's length (its header says "unknown", so count the samples after it)."""
    with wave.open(BytesIO(data)) as clip:
        assert (clip.getnchannels(), clip.getsampwidth()) == (1, 2)
        return (len(data) - 44) / 2 / clip.getframerate()


def test_the_page_gets_wav_and_the_api_mp3_by_default(page):
    spoken = page.post("/api/speech", json={"input": "Hello there."})
    assert spoken.status_code == 200 and spoken.mimetype == "audio/wav"
    assert 0.3 < wav_seconds(spoken.data) < 3
    assert spoken.headers["Cache-Control"] == "no-store" and "Content-Length" not in spoken.headers
    api = page.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hello there."})
    assert api.status_code == 200 and api.mimetype == "audio/mpeg" and len(api.data) > 1000
    slow = page.post("/api/speech", json={"input": "Hello there.", "speed": 0.5, "voice": "en_US-joe-medium"})
    assert wav_seconds(slow.data) > 1.6 * wav_seconds(spoken.data)


LONG = "word " * 1000


@pytest.mark.parametrize("body, status, code, sentence", [
    ({"input": ""}, 400, "empty_input", "The text to speak is empty"),
    ({"input": "   \n"}, 400, "empty_input", "The text to speak is empty"),
    ({}, 400, "invalid_input", "'input' must be a string"),
    ({"input": ["hi"]}, 400, "invalid_input", "'input' must be a string"),
    ({"input": LONG}, 413, "input_too_long", "The text is 5000 characters; the limit is 4096"),
    ({"input": "hi", "voice": "bob"}, 400, "invalid_voice", "There is no voice 'bob' here; use one of "
                                                            "en_US-joe-medium"),
    ({"input": "hi", "voice": 3}, 400, "invalid_voice", "'voice' must be a string"),
    ({"input": "hi", "response_format": "ogg"}, 400, "invalid_response_format", "one of mp3, opus, aac, flac, "
                                                                                  "wav, pcm"),
    ({"input": "hi", "speed": 9}, 400, "invalid_speed", "'speed' must be a number from 0.25 to 4"),
    ({"input": "hi", "speed": "fast"}, 400, "invalid_speed", "'speed' must be a number"),
    ({"input": "a\u0000b"}, 400, "invalid_characters", "NUL"),
    ({"input": "a\ud800b"}, 400, "invalid_characters", "unpaired surrogate"),
    ({"input": "!!! ... ???"}, 400, "nothing_to_say", "nothing that can be spoken"),
])
@pytest.mark.parametrize("path", ["/api/speech", "/v1/audio/speech"])
def test_bad_requests_get_a_sentence(page, path, body, status, code, sentence):
    answer = page.post(path, data=json.dumps(body), content_type="application/json")
    assert answer.status_code == status, answer.data
    assert answer.json["error"]["code"] == code and sentence in answer.json["error"]["message"]


@pytest.mark.parametrize("path", ["/api/speech", "/v1/audio/speech"])
def test_bodies_that_are_not_json_objects_get_a_sentence(page, path):
    assert page.post(path, data="input=hi", content_type="application/x-www-form-urlencoded").status_code == 415
    assert page.post(path, data="[1]", content_type="application/json").status_code == 400
    nested = page.post(path, data="[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert nested.status_code == 400 and "nested too deeply" in nested.json["error"]["message"]


def test_a_busy_speaker_answers_503_with_retry_after(make_app):
    app = make_app(WEBBOT_TTS_MAX_WAITING=0)
    speaker = services(app).speaker
    page = app.test_client()
    assert page.post("/api/speech", json={"input": "Warm up."}).status_code == 200
    with speaker.admission.turn():
        answer = page.post("/v1/audio/speech", json={"input": "Hello there."})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
    assert "busy speaking other texts" in answer.json["error"]["message"]


def test_speech_turned_off_is_a_404_with_a_sentence_and_the_page_offers_none(make_app):
    app = make_app(WEBBOT_TTS=False)
    page = app.test_client()
    answer = page.post("/v1/audio/speech", json={"input": "Hello."})
    assert answer.status_code == 404 and "turned off on this server (WEBBOT_TTS=off)" in answer.json["error"][
        "message"]
    assert page.get("/healthz").json["tts"] == {"status": "off"}
    assert '"speech": false' in page.get("/").get_data(as_text=True)


def test_a_voice_that_cannot_load_is_a_503_and_chat_goes_on(make_app, tmp_path):
    missing = tmp_path / "nowhere" / "en_US-amy-low.onnx"
    page = make_app(WEBBOT_TTS_VOICE=str(missing)).test_client()
    answer = page.post("/api/speech", json={"input": "Hello."})
    assert answer.status_code == 503 and answer.json["error"]["code"] == "voice_failed"
    assert "no Piper voice at" in answer.json["error"]["message"] and "WEBBOT_TTS_VOICE" in answer.json["error"][
        "message"]
    health = page.get("/healthz")
    assert health.status_code == 200 and health.json["tts"]["status"] == "error"
    cid = page.post("/api/conversations", json={}).json["id"]
    assert page.post(f"/api/conversations/{cid}/messages", json={"content": "hi", "max_tokens": 2}
                     ).status_code == 200
    assert make_app(WEBBOT_TTS_VOICE="not a voice").test_client().post(
        "/api/speech", json={"input": "Hi."}).json["error"]["message"].count("neither a path") == 1


def test_several_voices_are_named_by_request_and_openai_names_mean_the_first(make_app, piper_voice, tmp_path):
    copy = tmp_path / "en_US-joecopy-medium.onnx"
    copy.symlink_to(piper_voice)
    copy.with_name(copy.name + ".json").symlink_to(piper_voice.with_name(piper_voice.name + ".json"))
    page = make_app(WEBBOT_TTS_VOICE=f"{piper_voice}, {copy}").test_client()
    assert page.get("/healthz").json["tts"]["voices"] == ["en_US-joe-medium", "en_US-joecopy-medium"]
    for voice in ("en_US-joecopy-medium", "nova", "en_US-joe-medium"):
        assert page.post("/api/speech", json={"input": "Hi.", "voice": voice}).status_code == 200


def test_spoken_texts_are_rate_limited(make_app):
    app = make_app(WEBBOT_RATE_SPEECH="2/minute")
    page = app.test_client()
    assert [page.post("/api/speech", json={"input": "Hi."}).status_code for _ in range(3)] == [200, 200, 429]
    other = app.test_client()  # another browser has its own allowance
    assert other.post("/api/speech", json={"input": "Hi."}).status_code == 200
