"""The voice round trip: from the end of a person's speech to the first sound of the reply, through real servers.

Each part as Talk mode (static/js/talk.js) does it, timed on its own, median of --reps:
  - end of speech: the page's detector (the microphone's level against talk.js's constants, read from that file)
    run over the clip at its own 40 ms ticks: how long after the last spoken sample it decides the person stopped;
  - transcription: the clip (webm/opus, as Chrome records) through /v1/audio/transcriptions (Whisper tiny.en,
    faster-whisper). Talk sends the words ahead once the person has been quiet for EARLY_MS, so only what is
    left of it when the detector decides counts: max(0, early send + transcription - end of speech);
  - the first sentence: /v1/chat/completions streamed (greedy) with the transcript, until the reply holds one
    whole sentence (the page's rule: . ! ? then a space, or a line's end), or, before that, a first clause of
    CLAUSE_WORDS words or more (speak.js's firstClause: up to a comma, colon, semicolon or dash). The
    Llama-3.2-1B shape has random weights and never ends a sentence, so it is timed to as many tokens as
    SmolLM2's first sentence had;
  - synthesis: /v1/audio/speech (Piper en_US-joe-medium, wav, as the page asks) for that sentence, to its first
    byte.
The sum is the wait a person hears. Servers: SmolLM2-135M-Instruct, and the Llama-3.2-1B shape (int8, the CPU
default), one at a time.

    .venv/bin/python -m bench.bench_voice            # about 5 minutes on 2 cores
    .venv/bin/python -m bench.bench_voice --reps 3 --skip-llama

Prints a table, writes bench/results/voice-cpu.json and docs/benchmarks-voice.png.
"""

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from bench.common import llama32_1b_random_dir, save_report
from harness import assets
from harness.audio import convert, speak
from harness.server_process import Server

TALK_JS = Path(__file__).resolve().parents[1] / "static" / "js" / "talk.js"
SPEAK_JS = TALK_JS.with_name("speak.js")
CLAUSE_END = re.compile(r"[,;:]\s+|\s+[—–-]\s+")
NOT_PROSE = re.compile(r"^\s*(```|~~~|[-*+>#|]|\d+[.)])")
QUESTIONS = ["What is the capital of France?", "Tell me a story about a dragon.", "How do I make a cup of tea?",
             "Why is the sky blue?", "What should I cook for dinner tonight?"]
SENTENCE = re.compile(r"[.!?…][\"')\]]*(\s|$)|\n")
GOAL_S = 2.0


def talk_constants() -> dict:
    """The detector's constants, read from talk.js (the page is where they are stated)."""
    text = TALK_JS.read_text()
    return {name: float(re.search(rf"const {name} = ([\d._]+);", text).group(1).replace("_", ""))
            for name in ("SPEECH_LEVEL", "END_SILENCE_MS", "EARLY_MS", "MIN_SPEECH_MS", "TICK_MS")}


def clause_words() -> int:
    return int(re.search(r"const CLAUSE_WORDS = (\d+);", SPEAK_JS.read_text()).group(1))


def first_clause(said: str, words: int) -> int | None:
    """Where speak.js's firstClause cuts `said`, or None."""
    line = said.split("\n", 1)[0]
    if NOT_PROSE.match(line):
        return None
    for match in CLAUSE_END.finditer(line):
        if len(re.findall(r"[^\W\d_][\w'’-]*", line[:match.start()])) >= words:
            return match.end()
    return None


def end_of_speech_delay(samples: np.ndarray, rate: int, k: dict) -> tuple[float, float]:
    """Seconds from the last spoken sample to the moment talk.js's detector says the person stopped, and to the
    moment it sends the words ahead (EARLY_MS of quiet)."""
    frame = 1024  # the analyser's fftSize: each tick reads the latest 1,024 samples
    step = int(rate * k["TICK_MS"] / 1000)
    noise, start, last, spoken_until, early = 0.0, None, 0.0, None, None
    for at in range(frame, len(samples), step):
        rms = float(np.sqrt(np.mean(samples[at - frame:at] ** 2)))
        now = at / rate * 1000
        voiced = rms > max(k["SPEECH_LEVEL"], noise * 3)
        if not voiced and start is None:
            noise = noise * 0.95 + rms * 0.05
        if voiced:
            start = start if start is not None else now
            last, early = now, None
        if start is not None and not voiced and early is None and now - last > k["EARLY_MS"]:
            early = now
        if start is not None and not voiced and now - last > k["END_SILENCE_MS"]:
            if last - start >= k["MIN_SPEECH_MS"]:
                loud = np.nonzero(np.abs(samples) > 1e-3)[0]  # the clip's padding is digital silence
                spoken_until = loud[-1] / rate if len(loud) else 0
                return now / 1000 - spoken_until, early / 1000 - spoken_until
            start = None
    raise ValueError("the detector never heard the end of the speech")


def pcm_of(wav: bytes) -> tuple[np.ndarray, int]:
    audio = convert(wav, "-ar", "16000", "-ac", "1", fmt="f32le")
    return np.frombuffer(audio, dtype=np.float32), 16000


def first_sentence(url: str, text: str, max_tokens: int | None) -> tuple[float, str, int]:
    """(seconds to the first whole sentence, that sentence, tokens it took) from a streamed reply."""
    started = time.perf_counter()
    reply, pieces, words = "", 0, clause_words()
    with requests.post(f"{url}/v1/chat/completions", stream=True, timeout=600, json={
            "model": "bench", "messages": [{"role": "user", "content": text}], "temperature": 0, "stream": True,
            "max_tokens": max_tokens or 200}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if not (chunk["choices"] and chunk["choices"][0]["delta"].get("content")):
                continue
            reply += chunk["choices"][0]["delta"]["content"]
            pieces += 1
            # the page never cuts after a list's "1." (nothing to say); the first cut after a word is the sentence
            said = reply.lstrip()
            end = next((m for m in SENTENCE.finditer(said) if re.search(r"[^\W\d_]", said[:m.start()])), None)
            cut = end.end() if end else first_clause(said, words)
            if max_tokens is None and cut:
                return time.perf_counter() - started, said[:cut].strip(), pieces
    return time.perf_counter() - started, reply.strip(), pieces


def first_audio_byte(url: str, sentence: str) -> float:
    started = time.perf_counter()
    with requests.post(f"{url}/v1/audio/speech", stream=True, timeout=120,
                       json={"model": "tts-1", "input": sentence, "response_format": "wav"}) as response:
        if response.status_code == 400:
            raise ValueError(f"{sentence!r}: {response.text}")
        response.raise_for_status()
        next(response.iter_content(chunk_size=1))
        elapsed = time.perf_counter() - started
        for _ in response.iter_content(chunk_size=65536):
            pass
    return elapsed


def run(model_dir: Path, clips: list[tuple[str, bytes, float]], reps: int, tokens: dict | None, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(model_dir, Path(tmp) / "data", Path(tmp) / "server.log", WEBBOT_MAX_TOKENS="2048",
                        WEBBOT_SPEECH_BACKEND="faster-whisper",
                        WEBBOT_WHISPER_MODEL=str(assets.whisper_tiny_en_ct2_dir()),
                        WEBBOT_TTS_VOICE=str(assets.piper_voice()),
                        WEBBOT_RATE_MESSAGES="off", WEBBOT_RATE_TRANSCRIPTIONS="off", WEBBOT_RATE_SPEECH="off",
                        **env).start(timeout=600)
        try:
            first_audio_byte(server.url, "Warm up.")  # load the voice and Whisper once, as a server that has
            requests.post(f"{server.url}/v1/audio/transcriptions", timeout=120,  # been asked before would have
                          files={"file": ("w.webm", clips[0][1])}).raise_for_status()
            rows = []
            for rep in range(reps):
                for question, clip, (detect, early) in clips:
                    started = time.perf_counter()
                    heard = requests.post(f"{server.url}/v1/audio/transcriptions", timeout=120,
                                          files={"file": ("talk.webm", clip)}).json()["text"]
                    transcribe = time.perf_counter() - started
                    left = max(0.0, early + transcribe - detect)  # sent ahead: what is still to wait at the end
                    limit = tokens.get(question) if tokens else None
                    sentence_s, sentence, count = first_sentence(server.url, f"{heard} (rep {rep})", limit)
                    synth = first_audio_byte(server.url, sentence)
                    rows.append({"question": question, "heard": heard, "detect_s": detect, "early_s": early,
                                 "transcribe_s": transcribe, "transcript_wait_s": left,
                                 "first_sentence_s": sentence_s, "sentence": sentence, "sentence_tokens": count,
                                 "synthesis_s": synth, "total_s": detect + left + sentence_s + synth,
                                 "total_without_early_s": detect + transcribe + sentence_s + synth})
                    print(f"  rep {rep} {question[:32]:<32} detect {detect:.2f} transcribe {transcribe:.2f} "
                          f"(left at the end {left:.2f}) "
                          f"sentence {sentence_s:.2f} ({count} tok) speech {synth:.2f} = "
                          f"{rows[-1]['total_s']:.2f} s", flush=True)
        finally:
            server.stop()
    parts = ("detect_s", "transcribe_s", "transcript_wait_s", "first_sentence_s", "synthesis_s", "total_s",
             "total_without_early_s")
    return {"model": model_dir.name, "rows": rows,
            "median": {part: statistics.median(r[part] for r in rows) for part in parts},
            "p90_total_s": sorted(r["total_s"] for r in rows)[int(0.9 * (len(rows) - 1))]}


def plot(report: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [("detect_s", "end of speech"), ("transcript_wait_s", "transcription left"),
             ("first_sentence_s", "first sentence"), ("synthesis_s", "first audio")]
    fig, axis = plt.subplots(figsize=(8, 3.2))
    names = [r["model"] for r in report["runs"]]
    left = [0.0] * len(names)
    for key, label in parts:
        widths = [r["median"][key] for r in report["runs"]]
        axis.barh(names, widths, left=left, label=label)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axis.axvline(GOAL_S, color="black", linestyle="--", linewidth=1, label=f"goal ({GOAL_S:g} s, SmolLM2)")
    axis.set_xlabel("seconds from the end of speech to the reply's first sound (median)")
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title(f"Voice round trip on {report['cpu']} ({report['threads']} threads)")
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-voice.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-llama", action="store_true")
    args = parser.parse_args()
    import torch

    k = talk_constants()
    clips = []
    for question in QUESTIONS:
        wav = convert(speak(question), "-af", "apad=pad_dur=2", fmt="wav")
        detect = end_of_speech_delay(*pcm_of(wav), k)
        clips.append((question, convert(wav, "-ar", "48000", "-c:a", "libopus", fmt="webm"), detect))
    report = {"cpu": "CPU", "threads": torch.get_num_threads(), "talk_js": k, "goal_s": GOAL_S, "runs": []}
    print("SmolLM2-135M-Instruct", flush=True)
    smol = run(assets.smollm2_dir(), clips, args.reps, None, {})
    report["runs"].append(smol)
    if not args.skip_llama:
        tokens = {q: max(1, round(statistics.median(r["sentence_tokens"] for r in smol["rows"] if r["question"] == q)))
                  for q in QUESTIONS}
        print("Llama-3.2-1B shape (random weights, int8), timed to SmolLM2's first-sentence length", flush=True)
        report["runs"].append(run(llama32_1b_random_dir(), clips, args.reps, tokens, {"WEBBOT_QUANT": "int8"}))
    print(f"\n{'model':<28}{'detect':>8}{'transcr.':>10}{'left':>8}{'sentence':>10}{'speech':>8}{'total':>8}"
          f"{'p90':>8}{'not sent ahead':>16}")
    for r in report["runs"]:
        m = r["median"]
        print(f"{r['model']:<28}{m['detect_s']:>8.2f}{m['transcribe_s']:>10.2f}{m['transcript_wait_s']:>8.2f}"
              f"{m['first_sentence_s']:>10.2f}{m['synthesis_s']:>8.2f}{m['total_s']:>8.2f}{r['p90_total_s']:>8.2f}"
              f"{m['total_without_early_s']:>16.2f}")
    save_report("voice-cpu", report)
    plot(report)


if __name__ == "__main__":
    main()
