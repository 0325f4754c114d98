"""Plot the serving benchmark's JSON (bench/results/serving-*.json) into docs/benchmarks-serving.png.

    .venv/bin/python -m bench.plot_serving bench/results/serving-llama32-1b-random-cpu.json
"""

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main(paths: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [json.loads(Path(p).read_text()) for p in paths]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(reports)
    for i, report in enumerate(reports):
        label = f"{report['model']} ({report['device']}, {report['dtype']})"
        values = [report["generate"]["decode_tok_s"], report["server"]["decode_tok_s"]]
        left.bar([x + i * width for x in range(2)], values, width, label=label)
        turns = sorted(report["turns"], key=int)
        right.plot([report["turns"][t]["prompt_tokens"] for t in turns],
                   [report["turns"][t]["ttft_s"] for t in turns], marker="o", label=label)
        for t in turns:
            right.annotate(f"turn {t}", (report["turns"][t]["prompt_tokens"], report["turns"][t]["ttft_s"]),
                           textcoords="offset points", xytext=(4, -10), fontsize=8)
    left.set_xticks([x + width * (len(reports) - 1) / 2 for x in range(2)],
                    ["plain generate()", "server /v1 stream"])
    left.set_ylabel("decode tokens/s (batch 1)")
    left.set_title("Decode speed: server path vs generate()")
    right.set_xlabel("prompt tokens (conversation grows ~150 tokens a turn)")
    right.set_ylabel("time to first token (s)")
    right.set_title("Time to first token as a chat grows")
    left.legend(fontsize=8)
    fig.tight_layout()
    out = DOCS / "benchmarks-serving.png"
    DOCS.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
