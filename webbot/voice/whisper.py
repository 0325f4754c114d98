"""Whisper: the transcript's shape (segments, OpenAI's verbose_json), language names and codes, and the three
backends behind the Transcriber (`speech.py`):

- `transformers` (`transformers_whisper.py`, which imports torch): Whisper through
  transformers, fp16 on CUDA, fp32 on CPU (bf16 is ~5x slower on a CPU without native
  bf16: docs/benchmarks.md, voice transcription);
- `faster-whisper`: CTranslate2, int8 on CPU and float16 on CUDA, for CPU-only servers;
- `openai`: an OpenAI-compatible transcription server (WEBBOT_SPEECH_URL); the clip goes
  up as 16 kHz WAV.

Each backend takes 16 kHz mono samples and the speech spans found by `activity.py`, and
returns (segments, language). No Flask here, and no torch: it loads with a backend.
"""

import io
import wave
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from webbot.model.upstream import make_client, upstream_error
from webbot.voice.uploads import SAMPLE_RATE

BEAMS = 5  # beam search, as faster-whisper and OpenAI's whisper do by default


@dataclass
class Segment:
    """A stretch of the transcript, times in seconds from the start of the clip."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float | None = None
    no_speech_prob: float | None = None

    def as_dict(self) -> dict:
        """The OpenAI verbose_json shape of a segment."""
        raw = self.text.encode()
        ratio = len(raw) / max(1, len(zlib.compress(raw)))
        return {**asdict(self), "seek": int(self.start * 100), "temperature": 0.0,
                "compression_ratio": round(ratio, 3)}


@dataclass
class Transcript:
    """A whole clip's transcript; `speech` is False when voice-activity detection heard none."""

    text: str
    language: str
    duration: float
    segments: list[Segment]
    speech: bool = True

    def verbose(self) -> dict:
        """The OpenAI verbose_json body."""
        return {"task": "transcribe", "language": self.language, "duration": round(self.duration, 3),
                "text": self.text, "segments": [s.as_dict() for s in self.segments]}


def language_name(code: str | None) -> str:
    """Whisper's language code as OpenAI reports it ("en" -> "english")."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code or "", code or "english")


def language_code(value: str | None) -> str | None:
    """An ISO-639-1 code from a code or a language name ("fr", "French"), None for none; ValueError with a
    sentence for a language Whisper does not know."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if not value:
        return None
    value = value.strip().lower()
    code = value if value in LANGUAGES else TO_LANGUAGE_CODE.get(value)
    if code is None:
        raise ValueError(f"'language' {value!r} is not a language Whisper knows; give an ISO-639-1 code such as "
                         "en, fr or de, or leave it out to detect it.")
    return code


CUDA_LIBRARIES_ADVICE = ("faster-whisper on a GPU needs the CUDA 12 cuBLAS and cuDNN 9 libraries (pip install "
                         "nvidia-cublas-cu12 nvidia-cudnn-cu12, or the system's CUDA 12), or use "
                         "WEBBOT_SPEECH_BACKEND=transformers, which runs on PyTorch's own CUDA libraries.")


def _require_cuda_libraries() -> None:
    """Raise with a sentence when CTranslate2 sees no CUDA device (its build or the driver does not fit)."""
    import ctranslate2

    if ctranslate2.get_cuda_device_count() == 0:
        raise RuntimeError(f"faster-whisper (CTranslate2 {ctranslate2.__version__}) sees no CUDA device. "
                           f"{CUDA_LIBRARIES_ADVICE}")


class FasterWhisperBackend:
    """Whisper on CTranslate2 (faster-whisper), which handles long clips and pauses itself."""

    def __init__(self, model: str, device: str, cpu_threads: int = 0):
        """`cpu_threads`: CTranslate2's threads on CPU (0: its own default). On CUDA (`cuda` or `cuda:N`) the
        libraries CTranslate2 needs are checked now, by transcribing a moment of silence, so that a missing one
        is said at load, with what to install, instead of failing the first clip."""
        from faster_whisper import WhisperModel

        if model.startswith("openai/whisper-"):  # the same model under faster-whisper's own names
            model = model.removeprefix("openai/whisper-")
        cuda = device.startswith("cuda")
        self.cpu_threads = 0 if cuda else cpu_threads
        if cuda:
            _require_cuda_libraries()
        index = int(device.partition(":")[2] or 0) if cuda else 0
        self.model = WhisperModel(model, device="cuda" if cuda else "cpu", device_index=index,
                                  compute_type="float16" if cuda else "int8", cpu_threads=self.cpu_threads)
        if cuda:
            try:
                list(self.model.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), beam_size=1)[0])
            except RuntimeError as exc:
                raise RuntimeError(f"faster-whisper cannot run on {device}: {exc}. {CUDA_LIBRARIES_ADVICE}") from exc

    def transcribe(self, samples: np.ndarray, spans: list[tuple[int, int]], language: str | None):
        pieces, info = self.model.transcribe(samples, language=language, beam_size=5, vad_filter=True,
                                             condition_on_previous_text=False)
        segments = [Segment(i, round(s.start, 3), round(s.end, 3), s.text.strip(), list(s.tokens),
                            s.avg_logprob, s.no_speech_prob) for i, s in enumerate(pieces)]
        return segments, info.language


class OpenAIBackend:
    """A transcription server with OpenAI's /audio/transcriptions: the decoded clip goes up as 16 kHz WAV."""

    def __init__(self, model: str, url: str, key: str | None, timeout: float):
        self.model, self.url, self.timeout = model, url, timeout
        self.client = make_client(url, key, timeout)

    def transcribe(self, samples: np.ndarray, spans: list[tuple[int, int]], language: str | None):
        options = {"language": language} if language else {}
        try:
            result = self.client.audio.transcriptions.create(
                model=self.model, file=("clip.wav", wav_bytes(samples), "audio/wav"),
                response_format="verbose_json", **options)
        except Exception as exc:
            raise upstream_error(exc, "speech server", self.url, self.timeout) from None
        duration = samples.size / SAMPLE_RATE
        pieces = getattr(result, "segments", None) or [{"start": 0.0, "end": duration, "text": result.text}]
        segments = [Segment(i, float(_field(p, "start")), float(_field(p, "end")), (_field(p, "text") or "").strip())
                    for i, p in enumerate(pieces)]
        return segments, language or getattr(result, "language", None) or "en"


def _field(item, name: str):
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono float samples as a 16-bit PCM WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()
