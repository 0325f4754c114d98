"""What the decoding batch costs: the pool of slots (`webbot/model/kv_pool.py`, each reply at its own length)
against the left-padded batch the engine restacked before it (`bench/left_padded.py`), side by side.

For each context, 4 replies of different lengths (the longest `context` tokens) are prefilled once. Then, from
copies of them, alternating which goes first in each rep:
  - a decode step of the 4 together (ms per step, over `--steps` greedy steps);
  - a fifth reply joining them (the old batch restacked all five; the pool copies the one);
  - one reply leaving (the old batch restacked the other four; the pool moves its last reply into the hole);
  - churn: the five joining one by one, then leaving one by one, first to last (all the copies a batch's life
    makes, the pool's growing and shrinking included).

    .venv/bin/python -m bench.bench_kv_pool --models smollm2                                  # ~2 minutes
    .venv/bin/python -m bench.bench_kv_pool --models llama32-1b-random --contexts 512 2048    # ~8 minutes

Prints a table and writes JSON to bench/results/.
"""

import argparse
import statistics
import time

from bench.common import prefilled_rows, save_report, setup, step_model
from harness import assets

ROWS = 4


def padded_costs(model, rows: list[list[tuple]], joining: list[tuple], steps: int) -> dict:
    """The engine before the pool: decode steps over a left-padded batch with a 2D mask; a join or a leave
    restacks every remaining row into new buffers."""
    import torch

    from bench.left_padded import padding_mask, stack_left_padded
    from webbot.model.kv_buffer import GROWTH_ROOM, buffered_cache

    layers, pads = stack_left_padded(rows)
    cache = buffered_cache(layers, room=GROWTH_ROOM)
    length = layers[0][0].shape[2]
    mask = padding_mask(pads, length + GROWTH_ROOM, model.device)
    tokens = torch.full((len(rows), 1), 1000)
    started = time.perf_counter()
    for step in range(steps):
        at = length + step
        out = model(input_ids=tokens, position_ids=torch.tensor([[at - pad] for pad in pads]),
                    attention_mask=mask[:, :at + 1], past_key_values=cache, use_cache=True)
        tokens = out.logits[:, -1:].argmax(-1)
        tokens.tolist()
    step_ms = (time.perf_counter() - started) / steps * 1000
    views = [[(k[i:i + 1, :, pads[i]:], v[i:i + 1, :, pads[i]:]) for k, v in
              ((layer.keys, layer.values) for layer in cache.layers)] for i in range(len(rows))]
    started = time.perf_counter()
    stack_left_padded(views + [joining], GROWTH_ROOM)
    join_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    stack_left_padded(views[1:], GROWTH_ROOM)
    leave_ms = (time.perf_counter() - started) * 1000
    del cache, views
    everyone = rows + [joining]
    started = time.perf_counter()
    for n in range(1, len(everyone) + 1):
        stack_left_padded(everyone[:n], GROWTH_ROOM)
    for n in range(1, len(everyone)):
        stack_left_padded(everyone[n:], GROWTH_ROOM)
    churn_ms = (time.perf_counter() - started) * 1000
    return {"step_ms": step_ms, "join_ms": join_ms, "leave_ms": leave_ms, "churn_ms": churn_ms}


def pool_costs(model, rows: list[list[tuple]], joining: list[tuple], steps: int) -> dict:
    """The product: decode steps over the pool; a join copies one reply in, a leave moves the last one."""
    import torch

    from webbot.config import MAX_BATCH
    from webbot.model.kv_pool import SlotPool

    pool = SlotPool.like(rows[0], slots=MAX_BATCH["cpu"])  # as the engine makes it: a slot per reply it batches
    for row in rows:
        pool.add(row)
    tokens = torch.full((len(rows), 1), 1000)
    started = time.perf_counter()
    for _ in range(steps):
        cache, mask, positions = pool.prepare()
        out = model(input_ids=tokens, position_ids=positions, attention_mask=mask, past_key_values=cache,
                    use_cache=True)
        pool.advance()
        tokens = out.logits[:, -1:].argmax(-1)
        tokens.tolist()
    step_ms = (time.perf_counter() - started) / steps * 1000
    started = time.perf_counter()
    pool.add(joining)
    join_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    pool.remove(0)
    leave_ms = (time.perf_counter() - started) * 1000
    del pool, cache
    started = time.perf_counter()
    pool = SlotPool.like(rows[0], slots=MAX_BATCH["cpu"])
    for row in rows + [joining]:
        pool.add(row)
    while pool.rows:
        pool.remove(0)
    churn_ms = (time.perf_counter() - started) * 1000
    return {"step_ms": step_ms, "join_ms": join_ms, "leave_ms": leave_ms, "churn_ms": churn_ms}


def model_level(args) -> dict:
    import torch

    report = {}
    for name in args.models:
        bot = step_model(name, max(args.contexts) + 512)
        model = bot.engine.model
        print(f"\n{name} ({bot.dtype}, quant {bot.quant}), {ROWS} replies of different lengths, median of "
              f"{args.reps} reps", flush=True)
        print("| context | step: padded | step: pool | pool / padded | join: padded | join: pool "
              "| leave: padded | leave: pool | churn: padded | churn: pool |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        out = []
        for context in args.contexts:
            rows = prefilled_rows(model, context, ROWS + 1)
            runs = {"padded": [], "pool": []}
            measure = {"padded": padded_costs, "pool": pool_costs}
            with torch.inference_mode():
                for rep in range(args.reps):
                    for kind in (("padded", "pool") if rep % 2 == 0 else ("pool", "padded")):
                        runs[kind].append(measure[kind](model, rows[:ROWS], rows[ROWS], args.steps))
            med = {kind: {key: statistics.median(run[key] for run in runs[kind]) for key in runs[kind][0]}
                   for kind in runs}
            out.append({"context": context, "rows": ROWS, "median": med, "all": runs})
            padded, pool = med["padded"], med["pool"]
            print(f"| {context:,} | {padded['step_ms']:.1f} ms | {pool['step_ms']:.1f} ms | "
                  f"{pool['step_ms'] / padded['step_ms']:.2f}x | {padded['join_ms']:.1f} ms | "
                  f"{pool['join_ms']:.1f} ms | {padded['leave_ms']:.1f} ms | {pool['leave_ms']:.1f} ms | "
                  f"{padded['churn_ms']:.0f} ms | {pool['churn_ms']:.0f} ms |", flush=True)
        report[name] = {"dtype": bot.dtype, "quant": bot.quant, "contexts": out}
        bot.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "llama32-1b-random"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    _, where = setup(str(assets.smollm2_dir()))
    name = f"kv-pool-{'-'.join(args.models)}-{where['device']}"
    save_report(name, {**where, "models": model_level(args), "reps": args.reps, "decode_steps": args.steps})


if __name__ == "__main__":
    main()
