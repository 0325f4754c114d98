"""Audio uploads to 16 kHz mono float32 samples, with ffmpeg, through pipes only.

The upload's bytes go to ffprobe and ffmpeg on stdin and the samples come back on
stdout: no file named by the user ever touches the disk, and both run with
`-protocol_whitelist pipe`, so a playlist or concat file (HLS, DASH, ffconcat) inside an
upload cannot make them open a local file or a URL. `probe` rejects what is not
audio (or is cut off) before any model sees it; `decode` resamples and downmixes in one
pass and stops reading at the duration limit. Failures are `AudioError`s with an HTTP
status and a sentence that says what to change. No Flask imports.
"""

import json
import subprocess
from dataclasses import dataclass

import ffmpeg
import numpy as np

SAMPLE_RATE = 16_000
PROTOCOLS = "pipe"  # the only protocol ffmpeg may open: its stdin
_CUT_OFF = ("ended prematurely", "truncat", "partial file")


class AudioError(Exception):
    """An upload that cannot be transcribed: status, sentence, code."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class AudioInfo:
    """What ffprobe says about an upload."""

    format_name: str
    codec: str
    duration: float | None  # None when the container does not say (MediaRecorder's webm)


def _no_ffmpeg() -> AudioError:
    return AudioError(503, "The server cannot decode audio because ffmpeg is not installed; "
                           "install it (apt-get install ffmpeg) and try again.", "ffmpeg_missing")


def _cut_off(stderr: str) -> bool:
    return any(mark in stderr.lower() for mark in _CUT_OFF)


def _cut_off_error() -> AudioError:
    return AudioError(400, "The audio file is cut off before its end; upload the whole file or record again.",
                      "truncated_audio")


def probe(data: bytes, timeout: float = 30) -> AudioInfo:
    """The container and audio stream of an upload; AudioError unless it holds audio."""
    if not data:
        raise AudioError(400, "The upload is empty; record again or choose an audio file.", "empty_audio")
    cmd = ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name:format=format_name,duration",
           "-of", "json", "-protocol_whitelist", PROTOCOLS, "-i", "pipe:0"]
    try:
        done = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise _no_ffmpeg() from None
    except subprocess.TimeoutExpired:
        raise AudioError(400, "The file could not be read in time; upload a common audio format "
                              "(webm, ogg, mp3, m4a, wav).", "unreadable_audio") from None
    stderr = done.stderr.decode(errors="replace")
    try:
        info = json.loads(done.stdout or b"{}")
    except ValueError:
        info = {}
    audio = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    if not audio:
        if _cut_off(stderr):
            raise _cut_off_error()
        raise AudioError(400, "The file holds no audio ffmpeg can read; upload a recording in a common format "
                              "(webm, ogg, mp3, m4a, wav).", "not_audio")
    fmt = info.get("format", {})
    try:
        duration = float(fmt["duration"])
    except (KeyError, ValueError):
        duration = None
    return AudioInfo(fmt.get("format_name", ""), audio[0].get("codec_name", ""), duration)


def decode(data: bytes, max_seconds: float, timeout: float = 120) -> np.ndarray:
    """The first audio stream as 16 kHz mono float32, at most `max_seconds` (plus a little) long.

    Decoding stops just past the limit so an over-long upload is measured, not decoded
    whole; the caller compares the length with its limit.
    """
    stream = (ffmpeg.input("pipe:0", protocol_whitelist=PROTOCOLS)
              .output("pipe:1", format="f32le", acodec="pcm_f32le", ac=1, ar=SAMPLE_RATE, t=max_seconds + 1, vn=None)
              .global_args("-nostdin", "-hide_banner", "-loglevel", "error"))
    try:
        process = stream.run_async(pipe_stdin=True, pipe_stdout=True, pipe_stderr=True)
    except FileNotFoundError:
        raise _no_ffmpeg() from None
    try:
        out, err = process.communicate(input=data, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AudioError(400, "Decoding the audio took too long; upload a shorter or simpler file.",
                         "unreadable_audio") from None
    stderr = err.decode(errors="replace")
    if _cut_off(stderr):
        raise _cut_off_error()
    samples = np.frombuffer(out, dtype=np.float32)
    if process.returncode != 0 and not samples.size:
        raise AudioError(400, "ffmpeg could not decode the audio; upload a recording in a common format "
                              "(webm, ogg, mp3, m4a, wav).", "undecodable_audio")
    return samples.copy()  # writable, owned
