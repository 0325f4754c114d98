"""What a decode step costs as the context grows: transformers' DynamicCache (a step concatenates the whole
cache with the new token) against the product's buffered cache (`webbot/model/kv_buffer.py`: the token is
written into room kept at the end), side by side; and, with --server, the product's decode speed through /v1
at a long context against a short one.

Model level: each context is prefilled once; each rep starts both caches from copies of
that prefill and times the same greedy decode steps, alternating which goes first. Batch 4
has rows of different lengths (left-padded, with a mask), as the engine batches them.

    .venv/bin/python -m bench.bench_kv_buffer --models smollm2                                   # ~2 minutes
    .venv/bin/python -m bench.bench_kv_buffer --models llama32-1b-random --contexts 512 2048     # ~8 minutes
    .venv/bin/python -m bench.bench_kv_buffer --server --reps 5   # /v1 at ~3,900 and ~40 tokens (SmolLM2)

Prints tables and writes JSON to bench/results/.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import prefilled_rows, save_report, setup, step_model, timed_stream
from harness import assets


def step_cost(model, prefill: list[tuple], pads: list[int], kind: str, steps: int) -> float:
    """Milliseconds per greedy decode step, from a copy of `prefill` (per-layer keys, values) in a `kind` cache."""
    import torch
    from transformers import DynamicCache

    from bench.left_padded import padding_mask
    from webbot.model.kv_buffer import GROWTH_ROOM, buffered_cache

    rows = prefill[0][0].shape[0]
    if kind == "dynamic":
        cache = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in prefill])
    else:
        cache = buffered_cache(prefill, room=GROWTH_ROOM)
    length = prefill[0][0].shape[2]
    full_mask = padding_mask(pads, length + steps + 1, model.device) if any(pads) else None
    tokens = torch.full((rows, 1), 1000, device=model.device)
    started = time.perf_counter()
    for step in range(steps):
        at = length + step
        out = model(input_ids=tokens, position_ids=torch.tensor([[at - pad] for pad in pads]),
                    attention_mask=None if full_mask is None else full_mask[:, :at + 1],
                    past_key_values=cache, use_cache=True)
        tokens = out.logits[:, -1:].argmax(-1)
        tokens.tolist()  # the engine reads each step's tokens on the host
    return (time.perf_counter() - started) / steps * 1000


def prefilled(model, context: int, rows: int) -> tuple[list[tuple], list[int]]:
    """Keys and values of `rows` random prompts, the longest `context` tokens, left-padded, and their pads."""
    from bench.left_padded import stack_left_padded

    per_row = prefilled_rows(model, context, rows)
    if rows == 1:
        return per_row[0], [0]
    return stack_left_padded(per_row)


def model_level(args) -> dict:
    import torch

    report = {}
    for name in args.models:
        bot = step_model(name, max(args.contexts) + 512)
        model = bot.engine.model
        print(f"\n{name} ({bot.dtype}, quant {bot.quant}): ms per decode step", flush=True)
        print("| context | rows | DynamicCache | buffered | buffered / dynamic |")
        print("|---|---|---|---|---|")
        rows_out = []
        for rows in args.rows:
            for context in args.contexts:
                kv, pads = prefilled(model, context, rows)
                times = {"dynamic": [], "buffered": []}
                with torch.inference_mode():
                    for rep in range(args.reps):
                        for kind in (("dynamic", "buffered") if rep % 2 == 0 else ("buffered", "dynamic")):
                            times[kind].append(step_cost(model, kv, pads, kind, args.steps))
                dynamic, buffered = statistics.median(times["dynamic"]), statistics.median(times["buffered"])
                rows_out.append({"context": context, "rows": rows, "dynamic_ms": dynamic, "buffered_ms": buffered,
                                 "all_ms": times})
                print(f"| {context:,} | {rows} | {dynamic:.1f} | {buffered:.1f} | {buffered / dynamic:.2f}x |",
                      flush=True)
        report[name] = {"dtype": bot.dtype, "quant": bot.quant, "steps": rows_out}
        bot.close()
    return report


def server_level(args) -> dict:
    """Decode tok/s through /v1 (SmolLM2, WEBBOT_QUANT=--quant) after a ~40-token and a ~3,900-token prompt."""
    from harness.server_process import Server

    filler = " ".join(f"Note {i}: the meeting about topic {i} moved to room {i % 17}." for i in range(200))
    prompts = {"short": "Write a long story about a cat who learns to fly.",
               "long": filler + "\n\nNow write a long story about a cat who learns to fly."}
    rates = {name: [] for name in prompts}
    tokens = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(assets.smollm2_dir(), Path(tmp) / "data", Path(tmp) / "server.log",
                        WEBBOT_MAX_TOKENS="8192", WEBBOT_KV_REUSE="off", WEBBOT_QUANT=args.quant).start(timeout=600)
        try:
            for _ in range(args.reps):
                for name, text in prompts.items():
                    out = timed_stream(server.url, [{"role": "user", "content": text}], args.reply_tokens)
                    rates[name].append(out["decode_tok_s"])
                    tokens[name] = out["prompt_tokens"]
        finally:
            server.stop()
    short, long_ = statistics.median(rates["short"]), statistics.median(rates["long"])
    print(f"\n/v1, SmolLM2: {tokens['short']}-token prompt {short:.1f} tok/s, {tokens['long']}-token prompt "
          f"{long_:.1f} tok/s: {long_ / short:.2f}x")
    return {"prompt_tokens": tokens, "tok_s": rates, "short_tok_s": short, "long_tok_s": long_,
            "long_over_short": long_ / short}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "llama32-1b-random"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--server", action="store_true", help="measure the product through /v1 instead")
    parser.add_argument("--reply-tokens", type=int, default=64)
    parser.add_argument("--quant", default="auto", help="the server's WEBBOT_QUANT (--server)")
    args = parser.parse_args()

    _, where = setup(str(assets.smollm2_dir()))
    if args.server:
        save_report(f"kv-buffer-server-{args.quant}-{where['device']}", {**where, "quant": args.quant,
                                                                      **server_level(args)})
    else:
        name = f"kv-buffer-{'-'.join(args.models)}-{where['device']}"
        save_report(name, {**where, "models": model_level(args), "reps": args.reps, "decode_steps": args.steps})


if __name__ == "__main__":
    main()
