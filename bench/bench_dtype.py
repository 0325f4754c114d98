"""Which dtype is fastest on this machine: prefill and decode of the same model in fp32 and bf16, and on
CPU with int8 weights as WEBBOT_QUANT=int8 holds them (fp32 activations).

This is the measurement behind WEBBOT_DTYPE=auto (bf16 on CUDA, fp32 on CPU). The models
are loaded side by side and run interleaved, rep by rep, so machine noise hits them alike.
The report names the CPU's vector capability (AVX2, AVX512): native bf16 arithmetic
changes the answer.

    .venv/bin/python -m bench.bench_dtype                 # Llama-3.2-1B shape, random weights
    .venv/bin/python -m bench.bench_dtype --prefill 256 --decode 16 --reps 2

Prints a table and writes JSON to bench/results/.
"""

import argparse
import platform
import statistics
import time
from pathlib import Path

from bench.common import llama32_1b_random_dir, save_report


def weights_gb(model) -> float:
    """Bytes held by the model's parameters and buffers (int8 weights and their scales are buffers), in GB."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 1e9


def time_prefill_decode(model, prompt_len: int, decode: int, device: str) -> dict:
    """Seconds for one prefill of `prompt_len` tokens, and decode tokens/s after it."""
    import torch

    ids = torch.randint(1000, 100_000, (1, prompt_len), device=device)
    with torch.inference_mode():
        started = time.perf_counter()
        out = model(ids, use_cache=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        prefill = time.perf_counter() - started
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        started = time.perf_counter()
        for _ in range(decode):
            out = model(token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        decode_s = time.perf_counter() - started
    return {"prefill_tok_s": prompt_len / prefill, "decode_tok_s": decode / decode_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local model directory (default: Llama-3.2-1B shape, random weights)")
    parser.add_argument("--prefill", type=int, default=256, help="prompt tokens per prefill")
    parser.add_argument("--decode", type=int, default=16, help="tokens decoded after the prefill")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = Path(args.model).expanduser() if args.model else llama32_1b_random_dir()
    models = {dtype: AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
              for dtype in ("float32", "bfloat16")}
    if device == "cpu":
        from webbot.model.quant import quantise_int8

        models["int8"] = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
        quantise_int8(models["int8"], torch.float32)
    memory = {dtype: weights_gb(model) for dtype, model in models.items()}
    print(f"model {model_dir.name} on {device}, {torch.get_num_threads()} threads", flush=True)
    runs = {dtype: [] for dtype in models}
    for model in models.values():
        time_prefill_decode(model, 16, 2, device)  # warm-up
    for rep in range(args.reps):
        for dtype, model in models.items():
            runs[dtype].append(time_prefill_decode(model, args.prefill, args.decode, device))
            print(f"rep {rep + 1} {dtype}: prefill {runs[dtype][-1]['prefill_tok_s']:.1f} tok/s, "
                  f"decode {runs[dtype][-1]['decode_tok_s']:.2f} tok/s", flush=True)

    report = {"model": model_dir.name, "device": device, "threads": torch.get_num_threads(),
              "machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "prefill_tokens": args.prefill, "decode_tokens": args.decode,
              "dtypes": {}}
    print(f"\n{'dtype':<10}{'prefill tok/s':>15}{'decode tok/s':>14}{'weights GB':>12}")
    for dtype, rows in runs.items():
        summary = {"prefill_tok_s": statistics.median(r["prefill_tok_s"] for r in rows),
                   "decode_tok_s": statistics.median(r["decode_tok_s"] for r in rows),
                   "memory_gb": memory[dtype], "runs": rows}
        report["dtypes"][dtype] = summary
        print(f"{dtype:<10}{summary['prefill_tok_s']:>15.1f}{summary['decode_tok_s']:>14.2f}{memory[dtype]:>12.2f}")
    fp32, bf16 = report["dtypes"]["float32"], report["dtypes"]["bfloat16"]
    report["fp32_over_bf16_prefill"] = fp32["prefill_tok_s"] / bf16["prefill_tok_s"]
    report["fp32_over_bf16_decode"] = fp32["decode_tok_s"] / bf16["decode_tok_s"]
    print(f"fp32 / bf16: prefill {report['fp32_over_bf16_prefill']:.2f}x, "
          f"decode {report['fp32_over_bf16_decode']:.2f}x")
    if "int8" in report["dtypes"]:
        int8 = report["dtypes"]["int8"]
        report["int8_over_bf16_prefill"] = int8["prefill_tok_s"] / bf16["prefill_tok_s"]
        report["int8_over_bf16_decode"] = int8["decode_tok_s"] / bf16["decode_tok_s"]
        print(f"int8 / bf16: prefill {report['int8_over_bf16_prefill']:.2f}x, "
              f"decode {report['int8_over_bf16_decode']:.2f}x")
    save_report(f"dtype-{model_dir.name}-{device}-{report['cpu_capability'].lower()}", report)


if __name__ == "__main__":
    main()
