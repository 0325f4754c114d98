"""Transcriber: uploads to text with Whisper, loaded once and shared, one clip at a time.

The upload is probed and decoded by ffmpeg through pipes (`webbot/voice/uploads.py`);
voice-activity detection finds the speech (`webbot/voice/activity.py`); one of three
Whisper backends writes the text (`webbot/voice/whisper.py`: transformers, faster-whisper,
or an OpenAI-compatible speech server at WEBBOT_SPEECH_URL). A bounded queue admits one
clip at a time (several for a speech server); beyond it SpeechBusy. No Flask imports.
"""

import logging
import threading
import time
from pathlib import Path

import numpy as np

from webbot.config import DEFAULT_WHISPER_MODEL, MAX_AUDIO_SECONDS, SPEECH_BACKENDS, SPEECH_MAX_WAITING
from webbot.voice import uploads
from webbot.voice.activity import chunks_of, speech_regions
from webbot.voice.admission import Admission, Busy
from webbot.voice.uploads import SAMPLE_RATE, AudioError
from webbot.voice.whisper import FasterWhisperBackend, OpenAIBackend, Transcript, language_name

log = logging.getLogger(__name__)

REMOTE = "openai"  # an OpenAI-compatible transcription server at WEBBOT_SPEECH_URL
REMOTE_SLOTS = 8  # clips sent to a speech server at once (a local model takes one at a time)


class SpeechBusy(Busy):
    """The transcription queue is full; the caller should retry later."""


class SpeechUnavailable(RuntimeError):
    """The speech model could not be loaded; the message says why."""


class Transcriber:
    """The shared speech model: `load()` once (or let the first clip load it), then `transcribe_bytes()`.

    With `url` set, the model runs on that server (backend `openai`) and `model` is its name there.
    """

    def __init__(self, model: str = DEFAULT_WHISPER_MODEL, backend: str = "transformers", device: str = "auto",
                 max_seconds: float = MAX_AUDIO_SECONDS, max_waiting: int = SPEECH_MAX_WAITING,
                 url: str | None = None, key: str | None = None, timeout: float = 120.0, cpu_threads: int = 0):
        """`cpu_threads`: faster-whisper's threads on CPU (0: CTranslate2's default); see
        SPEECH_CPU_THREADS_BESIDE_MODEL for a CPU the language model also runs on."""
        if url:
            backend = REMOTE
        elif backend not in SPEECH_BACKENDS:
            raise ValueError(f"WEBBOT_SPEECH_BACKEND must be one of {', '.join(SPEECH_BACKENDS)}, not {backend!r}")
        self.model_id, self.backend_name, self.requested_device = model, backend, device
        self.url, self.key, self.timeout, self.cpu_threads = url, key, timeout, cpu_threads
        self.max_seconds = max_seconds
        self.admission = Admission(max_waiting, REMOTE_SLOTS if url else 1, SpeechBusy, "transcriptions")
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
                    if self.backend_name == "transformers":
                        from webbot.voice.transformers_whisper import TransformersBackend

                        self._backend = TransformersBackend(self.model_id, device)
                    else:
                        self._backend = FasterWhisperBackend(self.model_id, device, self.cpu_threads)
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
