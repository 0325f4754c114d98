"""Speech clips for tests and benchmarks, made at run time: espeak-ng speaks, ffmpeg converts and generates
(silence, noise, tones); nothing is downloaded."""

import subprocess

# Distinct sentences (Whisper skips over verbatim repeats) and a word from each to listen for.
SENTENCES = [
    ("The weather today is sunny and warm in the garden.", "weather"),
    ("My brother bought a new bicycle last Tuesday.", "bicycle"),
    ("The library opens at nine and closes at six.", "library"),
    ("We watched a film about elephants in Africa.", "elephants"),
    ("Her favourite colour has always been purple.", "purple"),
    ("The train to London leaves from platform four.", "london"),
    ("Coffee tastes better with a little cinnamon.", "cinnamon"),
    ("The children built a castle out of sand at the beach.", "castle"),
    ("The mountain was covered with fresh snow in January.", "mountain"),
    ("The doctor told him to drink more water.", "doctor"),
    ("A small dog was sleeping under the kitchen table.", "kitchen"),
    ("They are planning a holiday in Spain next summer.", "spain"),
    ("The museum has a famous painting of a ship.", "museum"),
    ("My grandmother makes the best apple pie.", "grandmother"),
    ("The football match was cancelled because of rain.", "football"),
    ("He forgot his umbrella at the office yesterday.", "umbrella"),
    ("The airport was very busy on Friday night.", "airport"),
    ("She is learning to play the piano.", "piano"),
    ("The bakery on the corner sells fresh bread.", "bread"),
    ("This is the end of the recording.", "recording"),
]


def speak(text: str, rate: int = 160, voice: str = "en-us") -> bytes:
    """A WAV clip of `text` spoken by espeak-ng (22.05 kHz mono)."""
    return subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text],
                          check=True, capture_output=True).stdout


def convert(data: bytes, *args: str, fmt: str) -> bytes:
    """`data` re-encoded by ffmpeg (through pipes) with output options `args` into format `fmt`."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0", *args, "-f", fmt, "pipe:1"]
    return subprocess.run(cmd, input=data, check=True, capture_output=True).stdout


def generate_audio(source: str, seconds: float, *args: str, fmt: str = "wav") -> bytes:
    """An ffmpeg lavfi source (silence, noise, a tone) as an audio file."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", source, "-t", str(seconds), *args,
           "-f", fmt, "pipe:1"]
    return subprocess.run(cmd, check=True, capture_output=True).stdout
