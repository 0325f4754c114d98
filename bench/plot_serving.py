"""Plot time to first token by turn (reuse on/off) and aggregate decode speed by streams into docs/.

    .venv/bin/python -m bench.plot_serving bench/results/turns-llama32-1b-random-cpu.json \
        bench/results/concurrency-llama32-1b-random-cpu.json

Writes docs/benchmarks-serving.png.
"""

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main(turns_path: str, concurrency_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = json.loads(Path(turns_path).read_text())
    concurrency = json.loads(Path(concurrency_path).read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))

    for key, label, style in (("no_reuse", "KV cache reuse off", "o--"), ("reuse", "KV cache reuse on", "o-")):
        rows = turns[key]
        left.plot([r["turn"] for r in rows], [r["ttft_s"] for r in rows], style, label=label)
    left.set_xlabel("turn (the conversation grows ~190 tokens a turn)")
    left.set_ylabel("time to first token (s)")
    left.set_title(f"Time to first token by turn\n{turns['model']}, {turns['device']} {turns['dtype']}")
    left.set_ylim(bottom=0)
    left.legend()

    names = {"default": "default", "batch_matmul_off": "WEBBOT_CPU_BATCH_MATMUL=off"}
    for key, rows in concurrency["results"].items():
        right.plot([r["streams"] for r in rows], [r["aggregate_tok_s"] for r in rows], "o-",
                   label=names.get(key, key))
    right.set_xscale("log", base=2)
    right.set_xticks([r["streams"] for r in concurrency["results"]["default"]],
                     [str(r["streams"]) for r in concurrency["results"]["default"]])
    right.set_xlabel("concurrent streams")
    right.set_ylabel("aggregate decode tokens/s")
    right.set_title(f"Batched decoding\n{concurrency['model']}, {concurrency['device']} {concurrency['dtype']}")
    right.set_ylim(bottom=0)
    right.legend()

    fig.tight_layout()
    out = DOCS / "benchmarks-serving.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
