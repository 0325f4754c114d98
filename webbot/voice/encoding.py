"""Spoken audio in the format a client asked for, encoded as it is made.

`wav` is written here (a header that says "length unknown", as OpenAI's streamed WAV
does, then the samples); every other format goes through one ffmpeg process per
response, fed from a thread while its output is read, so each sentence's sound leaves
as soon as ffmpeg has it: mp3, Ogg Opus, AAC (ADTS), FLAC, and `pcm` (OpenAI's: 24 kHz
16-bit little-endian mono, no header). No Flask here.
"""

import os
import struct
import subprocess
import threading
from collections.abc import Generator, Iterator

from webbot.config import PCM_RATE

CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}
FFMPEG_OUTPUT = {  # format -> ffmpeg's output options
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
    "opus": ["-ar", "48000", "-c:a", "libopus", "-b:a", "32k", "-f", "ogg"],
    "aac": ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "pcm": ["-ar", str(PCM_RATE), "-c:a", "pcm_s16le", "-f", "s16le"],
}
READ_BYTES = 16_384
UNKNOWN_LENGTH = 0xFFFFFFFF


def wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "until the end" (the length is not known while streaming)."""
    return (b"RIFF" + struct.pack("<I", UNKNOWN_LENGTH) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", UNKNOWN_LENGTH))


def encode(pcm: Generator[bytes, None, None], rate: int, response_format: str) -> Iterator[bytes]:
    """The encoded bytes of 16-bit mono PCM pieces at `rate`, as they come. Closing the iterator early (a client
    that went away) stops ffmpeg and stops asking `pcm` for more."""
    if response_format == "wav":
        yield wav_header(rate)
        yield from pcm
        return
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0",
         *FFMPEG_OUTPUT[response_format], "-flush_packets", "1", "pipe:1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    failure: list[BaseException] = []

    def feed():
        try:
            for piece in pcm:  # once ffmpeg is stopped (the client went away), the next write is a broken pipe
                ffmpeg.stdin.write(piece)
                ffmpeg.stdin.flush()
        except BrokenPipeError:
            pass
        except BaseException as exc:  # noqa: BLE001 (raised again in the reading thread)
            failure.append(exc)
        finally:
            pcm.close()
            try:
                ffmpeg.stdin.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, name="speech-encoder", daemon=True)
    feeder.start()
    try:
        while data := os.read(ffmpeg.stdout.fileno(), READ_BYTES):
            yield data
        feeder.join()
        if failure:
            raise failure[0]
        if ffmpeg.wait() != 0:
            raise RuntimeError(f"ffmpeg could not encode {response_format}: {ffmpeg.stderr.read().decode()[-300:]}")
    finally:
        if ffmpeg.poll() is None:
            ffmpeg.kill()
        ffmpeg.wait()
        for stream in (ffmpeg.stdout, ffmpeg.stderr):
            stream.close()
