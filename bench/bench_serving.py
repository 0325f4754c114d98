"""Single-stream decode speed: the server against plain `model.generate` and against llama.cpp.

On the same weights, in one run, interleaved rep by rep so machine noise hits all alike:
  1. plain `model.generate` in this process (greedy, batch 1);
  2. the real server process (`python app.py`) streaming through /v1/chat/completions;
  3. llama.cpp through llama-cpp-python on the same weights converted to a bf16 GGUF by
     llama.cpp's own converter, with as many threads as torch uses. llama-cpp-python is
     built only for this benchmark (`bench/build_llama_cpp.sh`); without it the row is
     skipped.
Reported: time to first token and decode tokens/s of each, and the server's ratio to the
others.

    bench/build_llama_cpp.sh                                  # once, 15-30 minutes
    .venv/bin/python -m bench.bench_serving                   # Llama-3.2-1B shape, random weights
    .venv/bin/python -m bench.bench_serving --model ~/.cache/webbot-test-models/smollm2 --reps 3

Prints a table and writes JSON to bench/results/serving-MODEL-DEVICE.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench.common import MODEL_HELP, save_report, setup, timed_stream
from harness import assets
from harness.server_process import Server

PROMPT = "Write a short poem about the sea, then explain what it means."


def plain_generate(model, tokenizer, prompt_ids: list[int], new_tokens: int) -> dict:
    """Time to first token and decode rate of `model.generate`, greedy, exactly `new_tokens` tokens."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    clock = Clock()
    input_ids = torch.tensor([prompt_ids], device=model.device)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, streamer=clock,
                       pad_token_id=tokenizer.eos_token_id)
    token_times = clock.times[1:]  # the first put is the prompt
    return {"ttft_s": token_times[0] - started,
            "decode_tok_s": (len(token_times) - 1) / (token_times[-1] - token_times[0]),
            "tokens": len(token_times)}


def gguf_of(model_dir: Path) -> Path:
    """The model as a bf16 GGUF, converted once by llama.cpp's convert_hf_to_gguf.py."""
    out = assets.CACHE / f"{model_dir.name}-bf16.gguf"
    if out.exists():
        return out
    source = llama_cpp_source() / "vendor" / "llama.cpp"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / model_dir.name
        copy.mkdir()
        for f in model_dir.iterdir():
            (copy / f.name).symlink_to(f)
        _fit_vocab(model_dir, copy)
        env = {**os.environ, "PYTHONPATH": str(assets.CACHE / "bench-tools")}
        subprocess.run([sys.executable, "convert_hf_to_gguf.py", str(copy), "--outtype", "bf16",
                        "--outfile", str(out.with_suffix(".tmp"))], cwd=source, env=env, check=True)
    out.with_suffix(".tmp").rename(out)
    return out


def llama_cpp_source() -> Path:
    """llama-cpp-python's source release, unpacked once into the cache (its converter lives there)."""
    out = assets.CACHE / "llama-cpp-src"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with tarfile.open(assets._download(assets.LLAMA_CPP_SDIST, source=True)) as sdist:
            sdist.extractall(tmp, filter="data")
        next(tmp.iterdir()).rename(out)
        tmp.rmdir()
    return out


def _fit_vocab(model_dir: Path, copy: Path) -> None:
    """The test tokenizer (from Llama 3.2 90B-Vision) has one token past the 1B's embedding rows
    (<|image|>); the converter refuses that, so the copy leaves it out. Speed does not change."""
    config = json.loads((model_dir / "config.json").read_text())
    size = config["vocab_size"]
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] < size]
    tokenizer["model"]["vocab"] = {k: v for k, v in tokenizer["model"]["vocab"].items() if v < size}
    (copy / "tokenizer.json").unlink()
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    settings = json.loads((model_dir / "tokenizer_config.json").read_text())
    settings["added_tokens_decoder"] = {k: v for k, v in settings.get("added_tokens_decoder", {}).items()
                                        if int(k) < size}
    (copy / "tokenizer_config.json").unlink()
    (copy / "tokenizer_config.json").write_text(json.dumps(settings))


def llama_cpp_generate(llm, prompt_ids: list[int], new_tokens: int) -> dict:
    """Time to first token and decode rate of llama.cpp, greedy, exactly `new_tokens` tokens."""
    llm.reset()
    times = []
    started = time.perf_counter()
    for _ in llm.generate(prompt_ids, temp=0.0, reset=True):
        times.append(time.perf_counter())
        if len(times) == new_tokens:
            break
    return {"ttft_s": times[0] - started, "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
            "tokens": len(times)}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows if r[key] is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens to decode per request")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each path")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, where = setup(args.model)
    device, dtype, threads = where["device"], where["dtype"], where["threads"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), device_map=device).eval()
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False))
    try:
        from llama_cpp import Llama
    except ImportError:
        Llama = None
        print("llama-cpp-python is not installed (bench/build_llama_cpp.sh builds it); skipping llama.cpp")
    llm = None
    if Llama is not None:
        llm = Llama(str(gguf_of(model_dir)), n_ctx=4096, n_threads=threads, n_gpu_layers=-1 if device == "cuda"
                    else 0, verbose=False)

    runs = {"generate": [], "server": [], "llama.cpp": []}
    with tempfile.TemporaryDirectory() as tmp:
        # The server's system prompt is off so all three see the same prompt tokens.
        server = Server(model_dir, Path(tmp) / "data", Path(tmp) / "server.log", WEBBOT_MAX_TOKENS="8192",
                        WEBBOT_SYSTEM_PROMPT="").start(timeout=1800)
        try:
            plain_generate(model, tokenizer, prompt_ids, 4)  # warm-up, every path
            timed_stream(server.url, messages, 4)
            if llm:
                llama_cpp_generate(llm, prompt_ids, 4)
            for rep in range(args.reps):
                runs["generate"].append(plain_generate(model, tokenizer, prompt_ids, args.new_tokens))
                # a new question each rep, so the server does not reuse the cache of the last one
                asked = [{"role": "user", "content": f"{PROMPT} ({rep})"}]
                runs["server"].append(timed_stream(server.url, asked, args.new_tokens))
                if llm:
                    runs["llama.cpp"].append(llama_cpp_generate(llm, prompt_ids, args.new_tokens))
                print(f"rep {rep + 1}: " + ", ".join(f"{name} {rows[-1]['decode_tok_s']:.2f} tok/s"
                                                     for name, rows in runs.items() if rows), flush=True)
        finally:
            server.stop()
    for row in runs["server"]:
        del row["times"], row["text"]

    report = {**where, "new_tokens": args.new_tokens, "prompt_tokens": len(prompt_ids), "reps": args.reps,
              "llama_cpp_dtype": "bf16"}
    for name, rows in runs.items():
        if rows:
            report[name] = {"ttft_s": median(rows, "ttft_s"), "decode_tok_s": median(rows, "decode_tok_s"),
                            "runs": rows}
    server_rate = report["server"]["decode_tok_s"]
    report["server_vs_generate_decode"] = server_rate / report["generate"]["decode_tok_s"]
    if "llama.cpp" in report:
        report["server_vs_llama_cpp_decode"] = server_rate / report["llama.cpp"]["decode_tok_s"]
    print()
    print(f"{'path':<14}{'first token (s)':>16}{'decode (tok/s)':>16}")
    for name in runs:
        if name in report:
            print(f"{name:<14}{report[name]['ttft_s']:>16.2f}{report[name]['decode_tok_s']:>16.2f}")
    print(f"server decode / generate: {report['server_vs_generate_decode']:.2f}" +
          (f"; / llama.cpp: {report['server_vs_llama_cpp_decode']:.2f}" if "llama.cpp" in report else ""))
    save_report(f"serving-{model_dir.name}-{device}", report)


if __name__ == "__main__":
    main()
