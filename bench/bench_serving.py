"""Serving benchmark: the server's streaming /v1/chat/completions against plain `model.generate`.

Measures, in one run and on one model:
  1. time to first token and decode tokens/s of plain `generate` in this process, and of
     the real server process (`python app.py`) streaming through /v1/chat/completions,
     interleaved rep by rep so machine noise hits both alike; the ratio is the server's cost;
  2. time to first token at turns 1, 5 and 10 of a conversation that grows by ~150 tokens
     a turn, through the server.

The default model has Llama-3.2-1B-Instruct's exact config with random weights (speed does
not depend on the weights' values), built offline once with the real Llama 3.2 tokenizer;
`--model DIR` takes any local model directory (for example the SmolLM2 test model).

    .venv/bin/python -m bench.bench_serving                  # Llama-3.2-1B shape
    .venv/bin/python -m bench.bench_serving --model ~/.cache/webbot-test-models/smollm2 --reps 3

Prints a table and writes JSON to bench/results/.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import requests

from tests import assets
from tests.server_process import Server

RESULTS = Path(__file__).resolve().parent / "results"
LLAMA_32_1B = {  # config.json of meta-llama/Llama-3.2-1B-Instruct
    "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True, "bos_token_id": 128000,
    "eos_token_id": assets.LLAMA3_EOS_IDS, "hidden_act": "silu",
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
PROMPT = "Write a short poem about the sea, then explain what it means."


def save_report(name: str, report: dict) -> Path:
    """Write a benchmark's figures to bench/results/NAME.json and say where."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return out


def llama32_1b_random_dir() -> Path:
    """Llama-3.2-1B's exact architecture with random weights, saved once in bf16 like the real one."""
    out = assets.CACHE / "llama32-1b-random"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_32_1B)).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=128000, eos_token_id=assets.LLAMA3_EOS_IDS)
    tmp = out.with_suffix(".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(assets.llama32_tokenizer_dir()).save_pretrained(tmp)
    tmp.rename(out)
    return out


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
    input_ids = torch.tensor([prompt_ids])
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, streamer=clock,
                       pad_token_id=tokenizer.eos_token_id)
    token_times = clock.times[1:]  # the first put is the prompt
    return {"ttft_s": token_times[0] - started,
            "decode_tok_s": (len(token_times) - 1) / (token_times[-1] - token_times[0]),
            "tokens": len(token_times)}


def server_stream(url: str, messages: list[dict], max_tokens: int) -> dict:
    """Time to first content token and decode rate through the server's streaming API."""
    started = time.perf_counter()
    times, usage = [], None
    with requests.post(f"{url}/v1/chat/completions", stream=True, timeout=3600, json={
            "model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
    tokens = usage["completion_tokens"]
    decode = (tokens - 1) / (times[-1] - times[0]) if len(times) > 1 else None
    return {"ttft_s": times[0] - started, "decode_tok_s": decode, "tokens": tokens,
            "prompt_tokens": usage["prompt_tokens"]}


def growing_conversation(turns: int, tokenizer) -> list[dict]:
    """A conversation of `turns` user messages, each turn (question + answer) about 150 tokens."""
    messages = []
    for turn in range(1, turns + 1):
        question = f"Turn {turn}. " + " ".join(f"Tell me more about topic {turn}.{i} in detail." for i in range(6))
        messages.append({"role": "user", "content": question})
        if turn < turns:
            answer = f"Answer {turn}. " + " ".join(f"Here is point {turn}.{i} explained briefly." for i in range(6))
            messages.append({"role": "assistant", "content": answer})
    return messages


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows if r[key] is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local model directory (default: Llama-3.2-1B shape, random weights)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens to decode per request")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions of each path")
    parser.add_argument("--turns", default="1,5,10", help="turns at which to measure time to first token")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chat_bot import resolve_device_dtype

    model_dir = Path(args.model).expanduser() if args.model else llama32_1b_random_dir()
    device, dtype = resolve_device_dtype()
    print(f"model {model_dir.name} on {device} ({dtype}), {torch.get_num_threads()} threads", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False))

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(model_dir, Path(tmp) / "data", Path(tmp) / "server.log", WEBBOT_MAX_TOKENS="8192",
                        WEBBOT_SYSTEM_PROMPT="").start(timeout=1800)
        try:
            plain_generate(model, tokenizer, prompt_ids, 4)  # warm-up, both paths
            server_stream(server.url, messages, 4)
            plain, served = [], []
            for rep in range(args.reps):
                plain.append(plain_generate(model, tokenizer, prompt_ids, args.new_tokens))
                served.append(server_stream(server.url, messages, args.new_tokens))
                print(f"rep {rep + 1}: generate {plain[-1]['decode_tok_s']:.2f} tok/s, "
                      f"server {served[-1]['decode_tok_s']:.2f} tok/s", flush=True)
            del model
            turns = {}
            for turn in [int(t) for t in args.turns.split(",")]:
                result = server_stream(server.url, growing_conversation(turn, tokenizer), 4)
                turns[turn] = result
                print(f"turn {turn}: {result['prompt_tokens']} prompt tokens, "
                      f"first token after {result['ttft_s']:.2f} s", flush=True)
        finally:
            server.stop()

    report = {
        "model": model_dir.name, "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "new_tokens": args.new_tokens,
        "prompt_tokens": len(prompt_ids), "reps": args.reps,
        "generate": {"ttft_s": median(plain, "ttft_s"), "decode_tok_s": median(plain, "decode_tok_s"), "runs": plain},
        "server": {"ttft_s": median(served, "ttft_s"), "decode_tok_s": median(served, "decode_tok_s"), "runs": served},
        "turns": turns,
    }
    report["server_vs_generate_decode"] = report["server"]["decode_tok_s"] / report["generate"]["decode_tok_s"]
    print()
    print(f"{'path':<28}{'first token (s)':>16}{'decode (tok/s)':>16}")
    for name in ("generate", "server"):
        print(f"{name:<28}{report[name]['ttft_s']:>16.2f}{report[name]['decode_tok_s']:>16.2f}")
    print(f"server decode / generate decode: {report['server_vs_generate_decode']:.3f}")
    print(f"{'turn':<8}{'prompt tokens':>16}{'first token (s)':>18}")
    for turn, result in turns.items():
        print(f"{turn:<8}{result['prompt_tokens']:>16}{result['ttft_s']:>18.2f}")
    save_report(f"serving-{model_dir.name}-{device}", report)


if __name__ == "__main__":
    main()
