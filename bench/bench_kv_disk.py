"""The disk tier's break-even on this machine: reading a kept KV cache back from its file against prefilling
the same tokens again, for conversations of growing length.

    .venv/bin/python -m bench.bench_kv_disk                  # SmolLM2-135M-Instruct (real weights)
    .venv/bin/python -m bench.bench_kv_disk --model DIR      # another local model

For each length the same tokens are timed both ways, interleaved, a few times: the file
read (safetensors, checksums checked, tensors on the model's device) and a prefill from
nothing (the engine's chunks). Prints a table and writes bench/results/kv-disk-MODEL-DEVICE.json.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from bench.common import save_report
from chat_bot import ChatBot
from harness import assets
from webbot.model.kv_disk import DiskTier


def prefill_seconds(bot: ChatBot, ids: list[int]) -> float:
    """Seconds to prefill `ids` from nothing in the engine's chunks."""
    engine = bot.engine
    cache, started = DynamicCache(), time.monotonic()
    with torch.inference_mode():
        for start in range(0, len(ids), engine.prefill_chunk):
            end = min(start + engine.prefill_chunk, len(ids))
            engine.model(input_ids=torch.tensor([ids[start:end]], device=engine.model.device),
                         position_ids=torch.arange(start, end, device=engine.model.device).unsqueeze(0),
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--lengths", default="128,512,1024,2048")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    model_dir = Path(args.model).expanduser() if args.model else assets.smollm2_dir()
    bot = ChatBot(str(model_dir), max_tokens=4096, kv_reuse=False).load()
    print(f"model {model_dir.name} on {bot.device} ({bot.dtype}), {torch.get_num_threads()} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tier = DiskTier(Path(tmp), "bench", 2**40)
        for length in (int(n) for n in args.lengths.split(",")):
            ids = (bot.memory.encode("The sea is wide and the wind is cold. ") * length)[:length]
            cache = DynamicCache()
            with torch.inference_mode():
                bot.engine.model(input_ids=torch.tensor([ids], device=bot.engine.model.device), past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
            kv = [(layer.keys, layer.values) for layer in cache.layers]
            record = tier.save(ids + [0], kv, length, "bench", 0, None)
            reads, prefills = [], []
            for _ in range(args.reps):
                started = time.monotonic()
                assert tier.load(record, bot.device) is not None
                reads.append(time.monotonic() - started)
                prefills.append(prefill_seconds(bot, ids))
            row = {"tokens": length, "file_mb": round(record.nbytes / 1e6, 1),
                   "read_s": round(statistics.median(reads), 4), "prefill_s": round(statistics.median(prefills), 3)}
            row["prefill_over_read"] = round(row["prefill_s"] / row["read_s"], 1)
            row["read_mb_s"] = round(row["file_mb"] / row["read_s"])
            rows.append(row)
            print(f"{length:>6} tokens: file {row['file_mb']:>7.1f} MB read in {row['read_s']:.3f} s "
                  f"({row['read_mb_s']} MB/s); prefill {row['prefill_s']:.2f} s; prefill / read "
                  f"{row['prefill_over_read']}x", flush=True)
    bot.close()
    per_token_read = statistics.median(r["read_s"] / r["tokens"] for r in rows)
    per_token_prefill = statistics.median(r["prefill_s"] / r["tokens"] for r in rows)
    report = {"model": model_dir.name, "device": bot.device, "dtype": bot.dtype, "rows": rows,
              "read_ms_per_token": round(per_token_read * 1000, 3),
              "prefill_ms_per_token": round(per_token_prefill * 1000, 3)}
    print(f"per token: read {report['read_ms_per_token']} ms, prefill {report['prefill_ms_per_token']} ms")
    save_report(f"kv-disk-{model_dir.name}-{bot.device}", report)


if __name__ == "__main__":
    main()
