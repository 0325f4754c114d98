"""Transcription speed and memory of both speech backends on 5 s, 30 s and 120 s clips.

Both backends run the same real weights (Whisper tiny.en: faster-whisper reads the
CTranslate2 files as shipped, the transformers backend reads them converted by
tests/assets.py), on espeak-ng speech, through `Transcriber.transcribe_bytes` (ffmpeg
decode, voice-activity detection, Whisper). Each backend runs in its own process so its
peak resident memory is its own; the two run one after the other in one invocation,
so the ratio between them is the figure to trust on a noisy machine.

    .venv/bin/python -m bench.bench_speech [--reps 3] [--device auto]

Prints real-time factor (processing time / audio time: below 1 is faster than real
time) and peak memory; writes bench/results/speech-<device>.json.
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

from bench.common import save_report
from harness import assets
from harness.audio import SENTENCES, convert, speak

LENGTHS = (5, 30, 120)


def clip_of(seconds: float) -> bytes:
    """About `seconds` of varied espeak-ng speech (numbered sentences, so none repeats), as 16 kHz WAV."""
    sentences, n = [], 0
    while len(sentences) * 3.1 < seconds:  # espeak at 150 words/min: ~3.1 s a sentence
        sentence = SENTENCES[n % len(SENTENCES)][0]
        sentences.append(f"Number {n + 1}. {sentence}" if n >= len(SENTENCES) else sentence)
        n += 1
    wav = convert(speak(" ".join(sentences), rate=150), "-ar", "16000", "-ac", "1", fmt="wav")
    keep = 44 + int(seconds * 16000) * 2  # cut to the exact length (16-bit mono after a 44-byte header)
    return convert(wav[:keep], "-c:a", "libopus", fmt="webm")  # what a browser uploads


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(backend: str, device: str, reps: int) -> None:
    """Load one backend, transcribe each clip length `reps` times, print one JSON line."""
    from speech import Transcriber

    model = assets.whisper_tiny_en_ct2_dir() if backend == "faster-whisper" else assets.whisper_tiny_en_dir()
    clips = {seconds: clip_of(seconds) for seconds in LENGTHS}
    started = time.perf_counter()
    transcriber = Transcriber(str(model), backend, device, max_seconds=600).load()
    result = {"backend": backend, "load_s": round(time.perf_counter() - started, 2),
              "peak_mb_loaded": round(peak_mb()), "clips": []}
    transcriber.transcribe_bytes(clips[5])  # warm-up
    for clip in clips.values():
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            transcript = transcriber.transcribe_bytes(clip)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        result["clips"].append({"audio_s": round(transcript.duration, 2), "median_s": round(median, 3),
                                "rtf": round(median / transcript.duration, 4), "times_s": [round(t, 3) for t in times],
                                "words": len(transcript.text.split()), "peak_mb": round(peak_mb())})
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worker", choices=("transformers", "faster-whisper"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.device, args.reps)
        return

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    runs = []
    for backend in ("faster-whisper", "transformers"):
        out = subprocess.run([sys.executable, "-m", "bench.bench_speech", "--worker", backend, "--device", device,
                              "--reps", str(args.reps)], check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))

    print(f"\nWhisper tiny.en on {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), median of {args.reps}")
    print(f"{'backend':<15}{'audio s':>9}{'time s':>9}{'RTF':>8}{'peak MB':>9}")
    for run in runs:
        for clip in run["clips"]:
            print(f"{run['backend']:<15}{clip['audio_s']:>9.1f}{clip['median_s']:>9.2f}{clip['rtf']:>8.3f}"
                  f"{clip['peak_mb']:>9}")
    fast, hf = runs
    for a, b in zip(fast["clips"], hf["clips"], strict=True):
        print(f"{a['audio_s']:.0f} s clip: faster-whisper is {b['median_s'] / a['median_s']:.1f}x the speed of "
              "transformers")
    save_report(f"speech-{device}", {"device": device, "model": "whisper tiny.en (real weights)",
                                     "reps": args.reps, "threads": torch.get_num_threads(), "runs": runs})


if __name__ == "__main__":
    main()
