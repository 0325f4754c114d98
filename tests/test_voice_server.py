"""Voice against a real `python app.py` process: the official `openai` client's
`audio.transcriptions.create` and `audio.speech.create` unchanged, the whole path from a
spoken question to the real SmolLM2 model's answer, and Piper's speech heard back word for
word by the server's own Whisper in every format. Questions from espeak-ng, Whisper tiny.en
via faster-whisper, answers in the real en_US-joe-medium Piper voice.
"""

import io
import re
import subprocess
import time
import wave

import pytest
import requests

from harness.audio import SENTENCES, convert, generate_audio, speak
from harness.server_process import PageSession
from webbot.config import PCM_RATE, SPEECH_FORMATS

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


SPOKEN = "My brother bought a new bicycle last Tuesday. The weather today is sunny and warm in the garden."
# (Piper adds noise to each synthesis; these two came back word for word from tiny.en 8 times in 8.)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def as_wav(pcm: bytes, rate: int = PCM_RATE) -> bytes:
    """OpenAI's headerless pcm (16-bit mono) in a WAV file, so it can be sent back for transcription."""
    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(pcm)
    return out.getvalue()


@pytest.mark.parametrize("response_format", SPEECH_FORMATS)
def test_openai_client_speaks_and_the_server_hears_it_back_word_for_word(client, response_format):
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=SPOKEN,
                                       response_format=response_format).content
    if response_format == "pcm":
        assert 4 < len(audio) / 2 / PCM_RATE < 8  # 24 kHz, as OpenAI's pcm is
        audio = as_wav(audio)
    heard = client.audio.transcriptions.create(model="whisper-1", file=(f"reply.{response_format}", audio)).text
    assert words(heard) == words(SPOKEN), heard


@pytest.mark.parametrize("response_format", SPEECH_FORMATS)
def test_openai_client_streams_speech_in_each_format(client, response_format):
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=SPOKEN,
                                                            response_format=response_format) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        audio = b"".join(response.iter_bytes())
    if response_format == "pcm":
        audio = as_wav(audio)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", "-"],
                           input=audio, capture_output=True, check=True).stdout.decode().strip()
    # two sentences of speech and the pause between them (an MP3 stream's length is an estimate)
    assert probe == "N/A" or 3.5 < float(probe) < 9, probe
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", "-", "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
                             input=audio, capture_output=True, check=True).stdout
    assert 3.5 < len(decoded) / 2 / 16000 < 9


def test_long_speech_streams_as_each_sentence_is_made(client):
    text = " ".join(sentence for sentence, _ in SENTENCES[:10])
    arrived = []
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text,
                                                            response_format="wav") as response:
        assert response.headers["transfer-encoding"] == "chunked" and "content-length" not in response.headers
        for chunk in response.iter_bytes():
            arrived.append((time.monotonic(), len(chunk)))
    # Ten sentences are synthesised one after another (about 0.1 s each here); sent whole at the end, every
    # byte would arrive within a few milliseconds of the first.
    assert arrived[-1][0] - arrived[0][0] > 0.2, arrived
    assert sum(size for _, size in arrived) / 2 / 22050 > 15  # the whole text, about 25 s of speech


def test_openai_client_sees_bad_speech_requests_as_4xx_with_the_sentence(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", voice="alloy", input="")
    assert "The text to speak is empty" in str(caught.value)
    with pytest.raises(BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", speed=5)
    assert "'speed' must be a number from 0.25 to 4" in str(caught.value)


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
def test_speech_model_and_voice_load_at_startup_when_asked(start_server, tiny_model_dir, whisper_ct2_dir,
                                                           piper_voice):
    server = start_server(tiny_model_dir, WEBBOT_SPEECH_LOAD="startup", WEBBOT_SPEECH_BACKEND="faster-whisper",
                          WEBBOT_WHISPER_MODEL=str(whisper_ct2_dir), WEBBOT_TTS_VOICE=str(piper_voice))
    deadline = time.monotonic() + 60
    while (health := requests.get(server.url + "/healthz", timeout=10).json())["tts"]["status"] != "ok":
        assert time.monotonic() < deadline, "the speech model and the voice did not load at start-up"
        time.sleep(0.2)
    assert health["speech"]["status"] == "ok" and health["tts"]["voice"] == "en_US-joe-medium"
    assert "speech model ready" in server.log_path.read_text()
    assert "Piper voice en_US-joe-medium ready" in server.log_path.read_text()


@pytest.mark.slow
def test_a_missing_speech_model_is_reported_not_fatal(start_server, tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, WEBBOT_SPEECH_LOAD="startup", WEBBOT_TTS="off",
                          WEBBOT_WHISPER_MODEL=str(tmp_path / "no-whisper-here"))
    deadline = time.monotonic() + 60
    while (health := requests.get(server.url + "/healthz", timeout=10).json())["speech"]["status"] != "error":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert health["status"] == "ok"  # chat still works
    clip = convert(speak(QUESTION), "-c:a", "libopus", fmt="webm")
    response = PageSession().post(server.url + "/api/transcriptions", files={"file": ("r.webm", clip)}, timeout=30)
    assert response.status_code == 503 and "could not be loaded" in response.json()["error"]["message"]
