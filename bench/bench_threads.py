"""The language model's tokens/s on CPU before and after faster-whisper transcribes a clip in the same process,
with CTranslate2's default threads and with the one thread the product gives it beside a model on CPU
(SPEECH_CPU_THREADS_BESIDE_MODEL).

Each setting runs in its own process, as the app does: the model loads in a thread that
then ends, the engine decodes in its worker thread, the clip is transcribed in a thread
that lives on (a server's request thread). The processes alternate, so machine noise hits
both settings alike.

    .venv/bin/python -m bench.bench_threads                 # SmolLM2, about 2 minutes
    .venv/bin/python -m bench.bench_threads --rounds 3

Prints a table and writes JSON to bench/results/.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from bench.common import save_report, setup
from harness import assets


def decode_rates(engine, reps: int, tokens: int) -> list[float]:
    """Tokens/s of `reps` greedy replies of `tokens` tokens each to a 60-token prompt, after the first token."""
    from webbot.model.stream import SamplingParams

    rates = []
    for rep in range(reps):
        ids = [1000 + (rep * 7919 + i * 104729) % 30000 for i in range(60)]
        stream = engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=tokens))
        stream.next_piece(timeout=600)
        started, first = time.perf_counter(), len(stream.generated_ids)
        while stream.next_piece(timeout=600) is not None:
            pass
        rates.append((len(stream.generated_ids) - first) / (time.perf_counter() - started))
    return rates


def one_process(model: str, whisper: str, cpu_threads: int, reps: int, tokens: int) -> dict:
    """Run in a child process: load as the app does, decode, transcribe in a thread that stays, decode again."""
    from chat_bot import ChatBot
    from harness.audio import speak
    from speech import Transcriber

    loaded = []
    loader = threading.Thread(target=lambda: loaded.append(ChatBot(model=model, max_tokens=2048).load()))
    loader.start()
    loader.join()
    bot = loaded[0]
    transcriber = Transcriber(whisper, "faster-whisper", "cpu", cpu_threads=cpu_threads)
    before = decode_rates(bot.engine, reps, tokens)
    clip = speak("Hello there, what is the weather like in Lisbon today? I would like to know if it will rain.")
    done, stay, seconds = threading.Event(), threading.Event(), []

    def request_thread():
        transcriber.load()
        for _ in range(2):
            started = time.perf_counter()
            transcriber.transcribe_bytes(clip)
            seconds.append(time.perf_counter() - started)
        done.set()
        stay.wait()  # a server's request threads live on after the request

    threading.Thread(target=request_thread, daemon=True).start()
    done.wait()
    after = decode_rates(bot.engine, reps, tokens)
    stay.set()
    bot.close()
    return {"cpu_threads": cpu_threads, "before_tok_s": before, "after_tok_s": after, "transcribe_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local model directory (default: the SmolLM2 test model)")
    parser.add_argument("--whisper", help="a CTranslate2 Whisper directory (default: the tiny.en test model)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # cpu_threads of one measuring process
    args = parser.parse_args()

    model_dir, where = setup(args.model or str(assets.smollm2_dir()))
    args.whisper = args.whisper or str(assets.whisper_tiny_en_ct2_dir())
    if args.child is not None:
        print(json.dumps(one_process(str(model_dir), args.whisper, args.child, args.reps, args.tokens)), flush=True)
        os._exit(0)  # the request thread still holds CTranslate2's model: skip a teardown that can abort
    settings = {"CTranslate2's default (0)": 0, "the product's (1)": 1}
    runs = {name: [] for name in settings}
    for round_ in range(args.rounds):
        for name, threads in settings.items():
            out = subprocess.run([sys.executable, "-m", "bench.bench_threads", "--model", str(model_dir),
                                  "--whisper", args.whisper, "--reps", str(args.reps), "--tokens", str(args.tokens),
                                  "--child", str(threads)], capture_output=True, text=True, check=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(run)
            before, after = statistics.median(run["before_tok_s"]), statistics.median(run["after_tok_s"])
            print(f"round {round_ + 1}, faster-whisper threads {name}: before {before:.1f} tok/s, after a "
                  f"transcription {after:.1f} tok/s; clip {min(run['transcribe_s']):.2f} s", flush=True)

    report = {**where, "rounds": args.rounds, "reps": args.reps, "tokens": args.tokens, "runs": runs, "summary": {}}
    print("\n| faster-whisper threads | tok/s before | tok/s after a transcription | after / before | clip (s) |")
    print("|---|---|---|---|---|")
    for name, rows in runs.items():
        before = statistics.median(r for run in rows for r in run["before_tok_s"])
        after = statistics.median(r for run in rows for r in run["after_tok_s"])
        clip = statistics.median(min(run["transcribe_s"]) for run in rows)
        report["summary"][name] = {"before_tok_s": before, "after_tok_s": after, "after_over_before": after / before,
                                   "transcribe_s": clip}
        print(f"| {name} | {before:.1f} | {after:.1f} | {after / before:.2f}x | {clip:.2f} |")
    save_report(f"threads-{where['model']}-cpu", report)


if __name__ == "__main__":
    main()
