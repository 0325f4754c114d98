"""speech.py and uploads.py without the web app: real ffmpeg, real espeak-ng speech, real Whisper.

Real recognition uses Whisper tiny.en's real weights through both backends: faster-whisper
reads them as shipped (CTranslate2), the transformers backend reads them converted by
tests/assets.py. A 2-layer random-weight Whisper with the real tokenizer checks the
transformers backend's mechanics (chunking, limits) quickly.
"""

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from harness.audio import SENTENCES, convert, generate_audio, speak
from speech import SpeechBusy, SpeechUnavailable, Transcriber
from tests.helpers import until
from webbot.voice import uploads
from webbot.voice.activity import chunks_of
from webbot.voice.admission import Admission
from webbot.voice.uploads import SAMPLE_RATE, AudioError

QUESTION = "What is the capital of France?"
ROOT = Path(__file__).resolve().parent.parent


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def long_speech() -> bytes:
    """About 65 s of espeak-ng speech: twenty different sentences."""
    text = " ".join(sentence for sentence, _ in SENTENCES)
    return convert(speak(text, rate=140), "-ar", "16000", "-ac", "1", fmt="wav")


# --- decoding -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate,channels", [(44100, 2), (48000, 2), (8000, 1)])
def test_decode_resamples_and_downmixes_to_16k_mono_float32(rate, channels):
    clip = generate_audio(f"sine=f=440:r={rate}", 2.0, "-ac", str(channels))
    samples = uploads.decode(clip, max_seconds=60)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size - 2 * SAMPLE_RATE) < SAMPLE_RATE * 0.05
    assert 0.1 < np.abs(samples).max() < 0.15  # lavfi sine peaks at 1/8; the downmix kept it


@pytest.mark.parametrize("args,fmt,codec", [
    (("-c:a", "libopus"), "webm", "opus"),  # Chrome and Firefox's MediaRecorder
    (("-c:a", "aac", "-movflags", "frag_keyframe+empty_moov"), "mp4", "aac"),  # Safari's (fragmented mp4)
    (("-c:a", "libopus"), "ogg", "opus"),
    (("-c:a", "libmp3lame"), "mp3", "mp3"),
])
def test_probe_names_the_audio_of_each_browser_format(args, fmt, codec):
    clip = convert(speak(QUESTION), *args, fmt=fmt)
    info = uploads.probe(clip)
    assert info.codec == codec
    assert info.duration is None or 1.0 < info.duration < 4.0


def test_an_m4a_with_its_index_at_the_end_decodes_through_a_pipe(tmp_path):
    # Phones save .m4a with the moov atom last; ffmpeg must still read it from stdin.
    target = tmp_path / "clip.m4a"
    import subprocess

    subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-c:a", "aac", str(target)], input=speak(QUESTION),
                   check=True)
    samples = uploads.decode(target.read_bytes(), max_seconds=60)
    assert abs(samples.size / SAMPLE_RATE - 1.9) < 0.3


@pytest.mark.parametrize("data,code", [
    (b"", "empty_audio"),
    (b"hello, this is a text file named clip.webm\n" * 20, "not_audio"),
    (bytes(range(256)) * 64, "not_audio"),
])
def test_probe_rejects_what_is_not_audio(data, code):
    with pytest.raises(AudioError) as caught:
        uploads.probe(data)
    assert caught.value.status == 400 and caught.value.code == code
    assert caught.value.message.endswith(".")


def test_a_video_without_sound_is_not_audio():
    clip = generate_audio("testsrc=size=64x64:rate=5", 1, "-c:v", "mpeg4", fmt="matroska")
    with pytest.raises(AudioError, match="no audio") as caught:
        uploads.probe(clip)
    assert caught.value.code == "not_audio"


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_truncated_webm_is_rejected_as_cut_off(keep):
    clip = convert(speak(QUESTION + " " + QUESTION), "-c:a", "libopus", fmt="webm")
    cut = clip[:int(len(clip) * keep)]
    with pytest.raises(AudioError) as caught:
        uploads.probe(cut)  # may already notice
        uploads.decode(cut, max_seconds=60)
    assert caught.value.code == "truncated_audio" and "cut off" in caught.value.message


def test_a_server_without_ffmpeg_says_so(monkeypatch, tmp_path):
    clip = speak(QUESTION)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run there
    for step in (uploads.probe, lambda data: uploads.decode(data, 60)):
        with pytest.raises(AudioError, match="ffmpeg is not installed") as caught:
            step(clip)
        assert caught.value.status == 503


def test_decoding_stops_just_past_the_duration_limit():
    clip = generate_audio("sine=f=300:r=16000", 20)
    samples = uploads.decode(clip, max_seconds=5)
    assert samples.size <= 6.1 * SAMPLE_RATE


# --- real speech through both backends --------------------------------------------------------------

REAL = ["real_transcriber", "real_hf_transcriber"]  # faster-whisper, transformers


@pytest.mark.parametrize("backend", REAL)
@pytest.mark.parametrize("args,fmt", [
    ((), "wav"),
    (("-c:a", "libopus"), "webm"),
    (("-c:a", "aac", "-movflags", "frag_keyframe+empty_moov"), "mp4"),
    (("-ar", "44100", "-ac", "2", "-c:a", "libmp3lame"), "mp3"),
    (("-ar", "48000", "-ac", "2"), "wav"),
])
def test_real_whisper_hears_the_question_in_every_format(request, backend, args, fmt):
    clip = convert(speak(QUESTION), *args, fmt=fmt)
    transcript = request.getfixturevalue(backend).transcribe_bytes(clip)
    assert words(transcript.text) == words(QUESTION), transcript.text
    assert transcript.speech and transcript.language == "english"
    assert 1.5 < transcript.duration < 2.5
    assert len(transcript.segments) == 1 and transcript.segments[0].tokens


@pytest.mark.slow
@pytest.mark.parametrize("backend", REAL)
def test_real_whisper_transcribes_a_long_clip_whole(request, backend):
    clip = long_speech()
    transcript = request.getfixturevalue(backend).transcribe_bytes(clip)
    assert transcript.duration > 60
    heard = words(transcript.text)
    found = [word for _, word in SENTENCES if word in heard]
    assert len(found) >= 17, transcript.text  # tiny.en mishears a few; none is cut away
    assert "recording" in heard[-3:]  # the last sentence, past two 30 s windows
    assert transcript.segments[-1].end > transcript.duration - 5


@pytest.mark.parametrize("source", ["anullsrc=r=48000:cl=stereo", "anoisesrc=a=0.01:r=44100",
                                    "anoisesrc=a=0.002:c=pink:r=16000"])
def test_silence_and_faint_noise_give_an_empty_transcript(real_transcriber, real_hf_transcriber, source):
    clip = generate_audio(source, 4)
    for transcriber in (real_transcriber, real_hf_transcriber):
        transcript = transcriber.transcribe_bytes(clip)
        assert transcript.text == "" and transcript.speech is False and transcript.segments == []
        assert abs(transcript.duration - 4) < 0.1


def test_without_the_silence_gate_whisper_would_invent_words(real_transcriber):
    # Why the voice-activity gate exists: the bare model hears "you" in 3 s of silence.
    pieces, _ = real_transcriber._backend.model.transcribe(np.zeros(3 * SAMPLE_RATE, np.float32), vad_filter=False)
    assert " ".join(p.text for p in pieces).strip() != ""


# --- the transformers backend's mechanics (random weights: fast, the words are noise) ---------------

def test_transformers_backend_decodes_and_transcribes_48k_stereo(tiny_transcriber):
    clip = convert(speak(QUESTION), "-ar", "48000", "-ac", "2", "-c:a", "libopus", fmt="webm")
    transcript = tiny_transcriber.transcribe_bytes(clip)
    assert transcript.speech and transcript.text  # noise words from random weights, but words
    assert transcript.language == "english"
    assert len(transcript.segments) == 1 and transcript.segments[0].tokens
    body = transcript.verbose()
    assert body["task"] == "transcribe" and body["segments"][0]["start"] < 0.5


def test_transformers_backend_cuts_a_long_clip_into_30s_chunks_at_pauses(tiny_transcriber):
    transcript = tiny_transcriber.transcribe_bytes(long_speech())
    spans = [(s.start, s.end) for s in transcript.segments]
    assert len(spans) >= 3, spans
    assert all(end - start <= 30.0 for start, end in spans), spans
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans  # in order, no overlap
    assert spans[0][0] < 1.0 and spans[-1][1] > transcript.duration - 3  # nothing cut off


def test_chunks_merge_neighbouring_speech_up_to_30_s():
    second = SAMPLE_RATE
    regions = [(0, 10 * second), (11 * second, 25 * second), (26 * second, 40 * second), (41 * second, 45 * second)]
    assert chunks_of(regions) == [(0, 25 * second), (26 * second, 45 * second)]


# --- limits, queue and load failures --------------------------------------------------------------------

def test_a_clip_over_the_duration_limit_is_refused_with_413(real_transcriber):
    short = Transcriber(real_transcriber.model_id, "faster-whisper", max_seconds=5)
    with pytest.raises(AudioError) as caught:
        short.transcribe_bytes(generate_audio("sine=f=300:r=16000", 12, "-c:a", "libopus", fmt="webm"))
    assert caught.value.status == 413 and "at most 5 s" in caught.value.message


def test_a_too_short_clip_is_refused():
    with pytest.raises(AudioError, match="too short"):
        Transcriber("unused").transcribe(np.zeros(100, np.float32))


def test_one_transcription_at_a_time_and_a_bounded_queue():
    admission = Admission(max_waiting=1, busy=SpeechBusy)
    order, release = [], threading.Event()

    def first():
        with admission.turn():
            order.append("first")
            release.wait(5)

    def second():
        with admission.turn():
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    until(lambda: order, 30)
    threads[1].start()
    until(lambda: admission.waiting >= 1, 30)
    with pytest.raises(SpeechBusy):  # one running, one waiting: the third is turned away
        with admission.turn():
            pass
    release.set()
    for t in threads:
        t.join(5)
    assert order == ["first", "second"]
    with admission.turn():  # free again
        pass


def test_a_model_that_cannot_load_says_why_every_time(tmp_path):
    broken = Transcriber(str(tmp_path / "no-such-model"), "transformers")
    for _ in range(2):
        with pytest.raises(SpeechUnavailable):
            broken.transcribe(speech_samples())
    assert broken.error and not broken.ready


def speech_samples() -> np.ndarray:
    return uploads.decode(speak(QUESTION), max_seconds=60)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="faster-whisper"):
        Transcriber("x", "whisper.cpp")


# --- sharing the CPU with the language model -----------------------------------------------------------

def test_faster_whisper_keeps_to_one_thread_beside_a_model_in_this_process(make_app):
    """Beside a model on this CPU, faster-whisper gets SPEECH_CPU_THREADS_BESIDE_MODEL threads; with the model on a
    server it keeps CTranslate2's default (bench/bench_threads.py measures why)."""
    from webbot.config import SPEECH_CPU_THREADS_BESIDE_MODEL
    from webbot.web.services import services

    with make_app(WEBBOT_SPEECH_BACKEND="faster-whisper").app_context():
        assert services().transcriber.cpu_threads == SPEECH_CPU_THREADS_BESIDE_MODEL == 1
    from app import transcriber_from_config
    from webbot.config import from_env

    remote = from_env({"WEBBOT_BACKEND": "openai", "WEBBOT_BACKEND_URL": "http://127.0.0.1:9/v1",
                       "WEBBOT_SPEECH_BACKEND": "faster-whisper"})
    assert transcriber_from_config(remote).cpu_threads == 0


THREADS_AFTER_A_CLIP = """
import os, sys, threading
from harness.audio import speak
from speech import Transcriber
transcriber = Transcriber(sys.argv[1], "faster-whisper", "cpu", cpu_threads=int(sys.argv[2])).load()
before = len(os.listdir("/proc/self/task"))
done, stay = threading.Event(), threading.Event()
def request_thread():  # a server's request thread lives on after the request
    transcriber.transcribe_bytes(speak("What is the capital of France?"))
    done.set()
    stay.wait()
threading.Thread(target=request_thread, daemon=True).start()
done.wait()
print(len(os.listdir("/proc/self/task")) - before, flush=True)
os._exit(0)
"""


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="CTranslate2's default is one thread on one core")
def test_one_faster_whisper_thread_leaves_no_thread_pool_behind(whisper_ct2_dir):
    """The cause bench_threads measures: with CTranslate2's default, a transcription leaves an OpenMP pool alive
    (threads that outlive the clip, which slow every later decode step of the model on the same CPU); with one
    thread it leaves none. Each in its own process, as thread pools are per process."""
    left = {}
    for threads in (0, 1):
        out = subprocess.run([sys.executable, "-c", THREADS_AFTER_A_CLIP, str(whisper_ct2_dir), str(threads)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        left[threads] = int(out.stdout.strip().splitlines()[-1])
    assert left[1] < left[0], left


def test_faster_whisper_on_a_gpu_says_at_load_what_it_lacks(monkeypatch, whisper_ct2_dir):
    """Issue 23, item 5: faster-whisper on CUDA needs the CUDA 12 cuBLAS/cuDNN libraries its wheels expect; a
    missing one failed the first clip. Now the load checks, says what to install, and uses the GPU asked for
    (`cuda:1`). No GPU here: CTranslate2's device count and model are replaced (mocks), the rest is the product's."""
    import ctranslate2
    import faster_whisper

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    broken = Transcriber(str(whisper_ct2_dir), "faster-whisper", "cuda:1")
    with pytest.raises(SpeechUnavailable, match="sees no CUDA device"):
        broken.load()
    assert "nvidia-cublas-cu12" in broken.error and "WEBBOT_SPEECH_BACKEND=transformers" in broken.error

    made = []

    class WithoutCublas:
        def __init__(self, model, **options):
            made.append(options)

        def transcribe(self, samples, **options):
            raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 2)
    monkeypatch.setattr(faster_whisper, "WhisperModel", WithoutCublas)
    lacking = Transcriber(str(whisper_ct2_dir), "faster-whisper", "cuda:1")
    with pytest.raises(SpeechUnavailable, match="cannot run on cuda:1: Library libcublas.so.12"):
        lacking.load()
    assert made == [{"device": "cuda", "device_index": 1, "compute_type": "float16", "cpu_threads": 0}]
    assert "nvidia-cudnn-cu12" in lacking.error
