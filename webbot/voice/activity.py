"""Voice activity: where a clip holds speech, with the Silero detector that ships with faster-whisper.

A clip with no speech gives an empty transcript instead of Whisper's invented "Thank you.",
and the speech regions cut a long clip into chunks of at most a Whisper window, at pauses,
so a long clip is transcribed whole. No Flask here.
"""

import numpy as np

from webbot.voice.uploads import SAMPLE_RATE

CHUNK_S = 30.0  # Whisper's window


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
