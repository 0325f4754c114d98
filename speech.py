"""Transcriber: uploads to text with Whisper, loaded once and shared, one clip at a time.

Two backends behind one interface, chosen by WEBBOT_SPEECH_BACKEND:
- `transformers` (default): Whisper through transformers, fp16 on CUDA, fp32 on CPU
  (bf16 is 5x slower on a CPU without native bf16, DESIGN.md section 4);
- `faster-whisper`: CTranslate2, int8 on CPU and float16 on CUDA, for CPU-only servers.
With WEBBOT_SPEECH_URL set, a third backend sends the decoded clip to an OpenAI-compatible
transcription server instead (vLLM, speaches, another webbot); decoding and VAD stay here.

Silero voice-activity detection (shipped with faster-whisper) runs first: a clip with no
speech returns an empty transcript instead of Whisper's invented "Thank you.", and the
speech regions cut a long clip into chunks of at most 30 s at pauses, so a long clip is
transcribed whole. Decoding is `uploads.py` (ffmpeg through pipes). No Flask imports.
"""

import logging
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from webbot.model.upstream import make_client, upstream_error
from webbot.voice import uploads
from webbot.voice.uploads import SAMPLE_RATE, AudioError

log = logging.getLogger(__name__)

DEFAULT_WHISPER_MODEL = "openai/whisper-base"
BACKENDS = ("transformers", "faster-whisper")
REMOTE = "openai"  # an OpenAI-compatible transcription server at WEBBOT_SPEECH_URL
REMOTE_SLOTS = 8  # clips sent to a speech server at once (a local model takes one at a time)
CHUNK_S = 30.0  # Whisper's window
# Chunks of a long clip decoded together by the transformers backend. On 2 CPU cores a 120 s
# clip took 16.1 s one chunk at a time, 13.9 s two at a time, 23.9 s eight at a time.
BATCH_CPU, BATCH_CUDA = 2, 8
BEAMS = 5  # beam search, as faster-whisper and OpenAI's whisper do by default


class SpeechBusy(RuntimeError):
    """The transcription queue is full; the caller should retry later."""


class SpeechUnavailable(RuntimeError):
    """The speech model could not be loaded; the message says why."""


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


def speech_regions(samples: np.ndarray, max_chunk_s: float = CHUNK_S) -> list[tuple[int, int]]:
    """(start, end) sample ranges that hold speech, each shorter than `max_chunk_s`."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(min_silence_duration_ms=500, speech_pad_ms=200, max_speech_duration_s=max_chunk_s - 1)
    return [(r["start"], r["end"]) for r in get_speech_timestamps(samples, options)]


def chunks_of(regions: list[tuple[int, int]], max_chunk_s: float = CHUNK_S) -> list[tuple[int, int]]:
    """Neighbouring speech regions merged into spans of at most `max_chunk_s`, cut only at pauses."""
    limit = int(max_chunk_s * SAMPLE_RATE)
    spans: list[list[int]] = []
    for start, end in regions:
        if spans and end - spans[-1][0] <= limit:
            spans[-1][1] = end
        else:
            spans.append([start, min(end, start + limit)])
    return [(start, end) for start, end in spans]


class Admission:
    """`slots` transcriptions at a time, at most `max_waiting` more queued; beyond that SpeechBusy."""

    def __init__(self, max_waiting: int, slots: int = 1):
        self.max_waiting, self.slots = max_waiting, slots
        self._cond = threading.Condition()
        self._active = 0
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextmanager
    def turn(self):
        with self._cond:
            if self._active >= self.slots:
                if self._waiting >= self.max_waiting:
                    raise SpeechBusy(f"{self._waiting} transcriptions are already waiting")
                self._waiting += 1
                try:
                    self._cond.wait_for(lambda: self._active < self.slots)
                finally:
                    self._waiting -= 1
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify()


class TransformersBackend:
    """Whisper through transformers; a long clip goes in as a batch of chunks cut at pauses."""

    def __init__(self, model: str, device: str):
        import torch
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.batch = BATCH_CUDA if device.startswith("cuda") else BATCH_CPU
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(model, dtype=self.dtype).to(device).eval()
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))
        self.special_ids = set(self.processor.tokenizer.all_special_ids)

    def transcribe(self, samples: np.ndarray, spans: list[tuple[int, int]], language: str | None):
        import torch

        segments, detected = [], None
        options = {"language": language, "task": "transcribe"} if self.multilingual and language else {}
        for first in range(0, len(spans), self.batch):
            batch = spans[first:first + self.batch]
            features = self.processor([samples[s:e] for s, e in batch], sampling_rate=SAMPLE_RATE,
                                      return_tensors="pt", return_attention_mask=True)
            with torch.inference_mode():
                out = self.model.generate(features.input_features.to(self.device, self.dtype),
                                          attention_mask=features.attention_mask.to(self.device), num_beams=BEAMS,
                                          **options)
            for (start, end), ids in zip(batch, out.tolist(), strict=True):
                detected = detected or self._language_of(ids)
                text = self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
                segments.append(Segment(len(segments), start / SAMPLE_RATE, end / SAMPLE_RATE, text,
                                        [t for t in ids if t not in self.special_ids]))
        return segments, language or detected or "en"

    def _language_of(self, ids: list[int]) -> str | None:
        """The language token the model chose (multilingual models), as a code."""
        if not self.multilingual:
            return "en"
        for token in self.processor.tokenizer.convert_ids_to_tokens(ids[:4]):
            if token and token.startswith("<|") and token.endswith("|>") and 2 <= len(token) - 4 <= 3:
                return token[2:-2]
        return None


class FasterWhisperBackend:
    """Whisper on CTranslate2 (faster-whisper), which handles long clips and pauses itself."""

    def __init__(self, model: str, device: str):
        from faster_whisper import WhisperModel

        if model.startswith("openai/whisper-"):  # the same model under faster-whisper's own names
            model = model.removeprefix("openai/whisper-")
        cuda = device.startswith("cuda")
        self.model = WhisperModel(model, device="cuda" if cuda else "cpu", compute_type="float16" if cuda else "int8")

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
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


class Transcriber:
    """The shared speech model: `load()` once (or let the first clip load it), then `transcribe_bytes()`.

    With `url` set, the model runs on that server (backend `openai`) and `model` is its name there.
    """

    def __init__(self, model: str = DEFAULT_WHISPER_MODEL, backend: str = "transformers", device: str = "auto",
                 max_seconds: float = 300, max_waiting: int = 4, url: str | None = None, key: str | None = None,
                 timeout: float = 120.0):
        if url:
            backend = REMOTE
        elif backend not in BACKENDS:
            raise ValueError(f"WEBBOT_SPEECH_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.model_id, self.backend_name, self.requested_device = model, backend, device
        self.url, self.key, self.timeout = url, key, timeout
        self.max_seconds = max_seconds
        self.admission = Admission(max_waiting, REMOTE_SLOTS if url else 1)
        self.error: str | None = None
        self._backend = None
        self._load_lock = threading.Lock()

    @property
    def name(self) -> str:
        path = Path(self.model_id)
        return path.name if path.exists() else self.model_id

    @property
    def ready(self) -> bool:
        return self._backend is not None

    def load(self) -> "Transcriber":
        """Load the model once; later calls return at once. A failure is kept in `error` and raised
        as SpeechUnavailable, now and on every later call (a restart tries again)."""
        with self._load_lock:
            if self._backend is not None:
                return self
            if self.error:
                raise SpeechUnavailable(self.error)
            device = self.requested_device
            if device == "auto" and not self.url:  # a speech server picks its own device
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            started = time.monotonic()
            log.info("loading speech model %s (%s on %s)", self.model_id, self.backend_name, device)
            try:
                if self.url:
                    self._backend = OpenAIBackend(self.model_id, self.url, self.key, self.timeout)
                else:
                    kind = TransformersBackend if self.backend_name == "transformers" else FasterWhisperBackend
                    self._backend = kind(self.model_id, device)
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("speech model %s failed to load", self.model_id)
                raise SpeechUnavailable(self.error) from exc
            log.info("speech model ready in %.1f s", time.monotonic() - started)
            return self

    def transcribe_bytes(self, data: bytes, language: str | None = None) -> Transcript:
        """Probe, decode and transcribe an upload; AudioError for bad input, SpeechBusy when full."""
        info = uploads.probe(data)
        if info.duration is not None and info.duration > self.max_seconds + 1:
            raise self._too_long(info.duration)
        samples = uploads.decode(data, self.max_seconds)
        if samples.size > (self.max_seconds + 0.5) * SAMPLE_RATE:
            raise self._too_long(None)
        return self.transcribe(samples, language)

    def transcribe(self, samples: np.ndarray, language: str | None = None) -> Transcript:
        """16 kHz mono float32 samples to text; silence gives an empty transcript."""
        duration = samples.size / SAMPLE_RATE
        if samples.size < SAMPLE_RATE // 10:
            raise AudioError(400, "The recording is too short to hold speech; record for at least a second.",
                             "audio_too_short")
        with self.admission.turn():
            regions = speech_regions(samples)
            if not regions:
                return Transcript("", language_name(language), duration, [], speech=False)
            self.load()
            segments, detected = self._backend.transcribe(samples, chunks_of(regions), language)
        segments = [s for s in segments if s.text]
        for segment in segments:
            segment.end = min(segment.end, round(duration, 3))
        text = " ".join(s.text for s in segments)
        return Transcript(text, language_name(detected), duration, segments, speech=bool(text))

    def _too_long(self, seconds: float | None) -> AudioError:
        length = f"{seconds:.0f} s long" if seconds else "longer than that"
        return AudioError(413, f"The recording may be at most {self.max_seconds:.0f} s; this one is {length}. "
                               "Split it into shorter clips.", "audio_too_long")
