"""What the benchmarks share: the Llama-3.2-1B-shaped test model, a timed streaming client, reports, models
loaded for timing decode steps in this thread and their prefilled KV caches.

The default model has Llama-3.2-1B-Instruct's exact config with random weights (speed does
not depend on the weights' values), built offline once with the real Llama 3.2 tokenizer.
"""

import json
import time
from pathlib import Path

import requests

from harness import assets

RESULTS = Path(__file__).resolve().parent / "results"
MODEL_HELP = "local model directory (default: Llama-3.2-1B shape, random weights)"
LLAMA_32_1B = {  # config.json of meta-llama/Llama-3.2-1B-Instruct
    "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True, "bos_token_id": 128000,
    "eos_token_id": assets.LLAMA3_EOS_IDS, "hidden_act": "silu",
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def setup(model: str | None) -> tuple[Path, dict]:
    """The model directory a serving benchmark runs, and where: model, device, dtype, threads (printed)."""
    import torch

    from webbot.model.loading import resolve_device_dtype

    model_dir = Path(model).expanduser() if model else llama32_1b_random_dir()
    device, dtype = resolve_device_dtype()
    where = {"model": model_dir.name, "device": device, "dtype": dtype, "threads": torch.get_num_threads()}
    print(f"model {model_dir.name} on {device} ({dtype}), {where['threads']} threads", flush=True)
    return model_dir, where


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
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_32_1B)).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=128000, eos_token_id=assets.LLAMA3_EOS_IDS)
    return assets.save_models(out, model, AutoTokenizer.from_pretrained(assets.llama32_tokenizer_dir()))


def timed_stream(url: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed /v1/chat/completions call, greedy: arrival time of every content chunk, text, usage."""
    started = time.perf_counter()
    times, text, usage = [], "", None
    with requests.post(f"{url}/v1/chat/completions", stream=True, timeout=3600, json={
            "model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
                text += chunk["choices"][0]["delta"]["content"]
    tokens = usage["completion_tokens"]
    return {"started": started, "times": times, "text": text, "tokens": tokens,
            "prompt_tokens": usage["prompt_tokens"], "ttft_s": times[0] - started if times else None,
            "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None}


def memory_of(pid: int) -> dict:
    """Resident memory of a process now and at its peak, in MB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024}


def step_model(name: str, max_tokens: int):
    """A ChatBot holding `name` (smollm2 or llama32-1b-random) as the product loads it, its engine closed so that
    its model (`bot.engine.model`) runs from this thread only."""
    from chat_bot import ChatBot

    models = {"smollm2": assets.smollm2_dir, "llama32-1b-random": llama32_1b_random_dir}
    bot = ChatBot(model=str(models[name]()), max_tokens=max_tokens)
    bot.load()
    bot.engine.close()
    return bot


def prefilled_rows(model, context: int, rows: int) -> list[list[tuple]]:
    """Per-layer keys and values [1, heads, tokens, dim] of `rows` random prompts of different lengths (as a batch
    has them), the longest `context` tokens."""
    import torch
    from transformers import DynamicCache

    out = []
    for row in range(rows):
        length = context - row * (context // 8)
        cache = DynamicCache()
        ids = torch.randint(1000, 30000, (1, length), generator=torch.Generator().manual_seed(row))
        with torch.inference_mode():
            for start in range(0, length, 512):
                model(input_ids=ids[:, start:start + 512], past_key_values=cache, use_cache=True, logits_to_keep=1)
        out.append([(layer.keys, layer.values) for layer in cache.layers])
    return out
