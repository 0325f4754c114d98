"""int8 weights on CPU (WEBBOT_QUANT) against fp32 and llama.cpp: speed, memory and quality, in one run.

Speed and memory, on the Llama-3.2-1B shape (random weights; speed does not depend on their
values), interleaved rep by rep so machine noise hits all alike:
  - two real server processes, WEBBOT_QUANT=none (fp32) and =int8, streaming through
    /v1/chat/completions: single-stream decode rate, time to first token on a fresh
    1,000-token prompt, the aggregate of 4 streams decoding together;
  - llama.cpp (llama-cpp-python, built by bench/build_llama_cpp.sh) on the same weights as a
    bf16 GGUF, single stream, as bench_serving runs it;
  - each server's resident memory, now and at its peak, from /proc.
Quality, on the real SmolLM2-135M-Instruct in this process, fp32 against int8:
  - greedy token agreement over 20 prompts x 64 tokens, teacher-forced on fp32's own greedy
    reply one token at a time through the KV cache (the decode path), and how many of the
    20 free-running greedy replies are identical;
  - perplexity on a held-out text (docs/architecture.md, 1,024 tokens; the prefill path);
  - the answer to "What is the capital of France?".

    .venv/bin/python -m bench.bench_quant                       # both parts (about 20 minutes)
    .venv/bin/python -m bench.bench_quant --skip-quality --reps 1

Prints tables and writes JSON to bench/results/quant-MODEL-cpu.json.
"""

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from bench.bench_concurrency import concurrent
from bench.bench_serving import PROMPT, gguf_of, llama_cpp_generate
from bench.common import MODEL_HELP, memory_of, save_report, setup, timed_stream
from harness import assets
from harness.server_process import Server

QUALITY_PROMPTS = [
    "What is the capital of France?", "Write a short poem about the sea.", "Explain photosynthesis simply.",
    "How do I reverse a list in Python?", "Give me three tips for sleeping better.", "What is 17 times 23?",
    "Tell me a fun fact about cats.", "Summarise the plot of Romeo and Juliet.", "What causes rain?",
    "How does a bicycle stay upright?", "Name the planets of the solar system.", "What is a prime number?",
    "Translate 'good morning' into Spanish.", "Why is the sky blue?", "Describe a healthy breakfast.",
    "What is the boiling point of water?", "How do vaccines work?", "Write a haiku about autumn.",
    "What is machine learning?", "Suggest a name for a pet turtle."]
QUALITY_TOKENS = 64
HELD_OUT = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
LONG_PROMPT_TOKENS = 1000
SETTINGS = {"fp32": "none", "int8": "int8"}


def long_prompt(rep: int, name: str) -> list[dict]:
    """About LONG_PROMPT_TOKENS Llama 3 tokens, new to the server (nothing of it is cached)."""
    words = " ".join(f"item {rep}-{i} of list {name}" for i in range(LONG_PROMPT_TOKENS // 7))
    return [{"role": "user", "content": f"Rep {rep} for {name}. Count these: {words}"}]


def speed(model_dir: Path, where: dict, reps: int, new_tokens: int) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        Llama = None
        print("llama-cpp-python is not installed (bench/build_llama_cpp.sh builds it); skipping llama.cpp")
    runs = {name: {"single": [], "long_ttft": [], "four": []} for name in SETTINGS}
    runs["llama.cpp"] = {"single": []}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        try:
            for name, setting in SETTINGS.items():
                servers[name] = Server(model_dir, Path(tmp) / name, Path(tmp) / f"{name}.log", WEBBOT_QUANT=setting,
                                       WEBBOT_MAX_TOKENS="8192", WEBBOT_SYSTEM_PROMPT="", WEBBOT_KV_REUSE="off",
                                       WEBBOT_KV_DISK_MB="0").start(timeout=1800)
            loaded = {name: memory_of(server.process.pid) for name, server in servers.items()}
            llm = None
            if Llama is not None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(model_dir)
                prompt_ids = list(tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                                                add_generation_prompt=True, tokenize=True,
                                                                return_dict=False))
                llm = Llama(str(gguf_of(model_dir)), n_ctx=4096, n_threads=where["threads"], n_gpu_layers=0,
                            verbose=False)
                llama_cpp_generate(llm, prompt_ids, 4)
            for server in servers.values():
                timed_stream(server.url, [{"role": "user", "content": "warm up"}], 4)
            for rep in range(reps):
                for name, server in servers.items():
                    row = timed_stream(server.url, [{"role": "user", "content": f"{PROMPT} ({rep})"}], new_tokens)
                    runs[name]["single"].append({k: row[k] for k in ("ttft_s", "decode_tok_s", "tokens")})
                    row = timed_stream(server.url, long_prompt(rep, name), 2)
                    runs[name]["long_ttft"].append({"ttft_s": row["ttft_s"], "prompt_tokens": row["prompt_tokens"]})
                    runs[name]["four"].append(concurrent(server.url, 4, new_tokens))
                if llm is not None:
                    runs["llama.cpp"]["single"].append(llama_cpp_generate(llm, prompt_ids, new_tokens))
                print(f"rep {rep + 1}: " + ", ".join(
                    f"{name} {r['single'][-1]['decode_tok_s']:.2f} tok/s" for name, r in runs.items() if r["single"])
                      + ", first token on 1,000 tokens: " + ", ".join(
                    f"{name} {runs[name]['long_ttft'][-1]['ttft_s']:.1f} s" for name in SETTINGS), flush=True)
            memory = {name: {"after_loading": loaded[name], "after_runs": memory_of(server.process.pid)}
                      for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    report = {"memory": memory, "runs": runs}
    for name, rows in runs.items():
        if not rows["single"]:
            continue
        figures = {"decode_tok_s": statistics.median(r["decode_tok_s"] for r in rows["single"])}
        if name in SETTINGS:
            figures["long_ttft_s"] = statistics.median(r["ttft_s"] for r in rows["long_ttft"])
            figures["long_prompt_tokens"] = rows["long_ttft"][0]["prompt_tokens"]
            figures["four_streams_tok_s"] = statistics.median(r["aggregate_tok_s"] for r in rows["four"])
            figures["four_vs_one"] = figures["four_streams_tok_s"] / figures["decode_tok_s"]
            figures["rss_mb"] = memory[name]["after_runs"]["rss_mb"]
            figures["peak_rss_mb"] = memory[name]["after_runs"]["peak_rss_mb"]
        report[name] = figures
    report["int8_vs_fp32_decode"] = report["int8"]["decode_tok_s"] / report["fp32"]["decode_tok_s"]
    report["int8_vs_fp32_long_ttft"] = report["int8"]["long_ttft_s"] / report["fp32"]["long_ttft_s"]
    if "llama.cpp" in report:
        report["int8_vs_llama_cpp_decode"] = report["int8"]["decode_tok_s"] / report["llama.cpp"]["decode_tok_s"]
        report["fp32_vs_llama_cpp_decode"] = report["fp32"]["decode_tok_s"] / report["llama.cpp"]["decode_tok_s"]
    print()
    print(f"{'path':<11}{'decode tok/s':>13}{'4 streams':>11}{'4 vs 1':>8}{'1st token, 1k':>15}"
          f"{'RSS MB':>9}{'peak MB':>9}")
    for name in (*SETTINGS, "llama.cpp"):
        if name in report:
            f = report[name]
            print(f"{name:<11}{f['decode_tok_s']:>13.2f}" + (
                f"{f['four_streams_tok_s']:>11.2f}{f['four_vs_one']:>8.2f}{f['long_ttft_s']:>14.1f}s"
                f"{f['rss_mb']:>9.0f}{f['peak_rss_mb']:>9.0f}" if name in SETTINGS else ""))
    print(f"int8 / fp32 decode {report['int8_vs_fp32_decode']:.2f}x, first token on a fresh "
          f"{report['int8']['long_prompt_tokens']}-token prompt {report['int8_vs_fp32_long_ttft']:.2f}x" +
          (f"; int8 / llama.cpp bf16 decode {report['int8_vs_llama_cpp_decode']:.2f}x" if "llama.cpp" in report
           else ""))
    return report


def quality(model_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from webbot.model.quant import quantise_int8

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    int8 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    quantise_int8(int8)
    held_out = tokenizer(HELD_OUT.read_text(), return_tensors="pt").input_ids[:, :1024]

    def prompt_ids(text):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)["input_ids"]

    def greedy(model, ids, tokens=QUALITY_TOKENS):
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return out[0, ids.shape[1]:]

    report = {"prompts": len(QUALITY_PROMPTS), "tokens": QUALITY_TOKENS, "held_out_tokens": held_out.shape[1]}
    with torch.inference_mode():
        hits = identical = 0
        for text in QUALITY_PROMPTS:
            ids = prompt_ids(text)
            wanted = greedy(fp32, ids)
            out = int8(ids, use_cache=True)
            for step, token in enumerate(wanted.tolist()):
                hits += int(out.logits[0, -1].argmax()) == token
                out = int8(wanted[step:step + 1][None], past_key_values=out.past_key_values, use_cache=True)
            identical += bool(torch.equal(greedy(int8, ids), wanted))
        report["agreement"] = hits / (len(QUALITY_PROMPTS) * QUALITY_TOKENS)
        report["identical_replies"] = identical
        for name, model in (("fp32", fp32), ("int8", int8)):
            report[f"{name}_perplexity"] = math.exp(model(held_out, labels=held_out).loss.item())
            answer = tokenizer.decode(greedy(model, prompt_ids(QUALITY_PROMPTS[0]), 24), skip_special_tokens=True)
            report[f"{name}_paris"] = answer
    report["perplexity_ratio"] = report["int8_perplexity"] / report["fp32_perplexity"]
    print(f"\nSmolLM2, int8 against fp32: greedy agreement {report['agreement']:.3f} "
          f"({len(QUALITY_PROMPTS)} prompts x {QUALITY_TOKENS} tokens, teacher-forced), "
          f"{identical}/{len(QUALITY_PROMPTS)} replies identical; perplexity {report['int8_perplexity']:.2f} "
          f"against {report['fp32_perplexity']:.2f} ({report['perplexity_ratio']:.3f}x)")
    print(f"Paris: fp32 {report['fp32_paris']!r}; int8 {report['int8_paris']!r}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each path")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens to decode per request")
    parser.add_argument("--skip-quality", action="store_true", help="only speed and memory")
    args = parser.parse_args()
    model_dir, where = setup(args.model)
    if where["device"] != "cpu":
        raise SystemExit("int8 weights are for CPU; this machine has a GPU (WEBBOT_QUANT=auto keeps bf16 there)")
    report = {**where, "reps": args.reps, "new_tokens": args.new_tokens, "speed": speed(model_dir, where, args.reps,
                                                                                         args.new_tokens)}
    if not args.skip_quality:
        report["quality"] = quality(assets.smollm2_dir())
    save_report(f"quant-{model_dir.name}-cpu", report)


if __name__ == "__main__":
    main()
