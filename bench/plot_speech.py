"""Plot the speech benchmark's JSON (bench/results/speech-*.json) into docs/benchmarks-speech.png.

    .venv/bin/python -m bench.plot_speech bench/results/speech-cpu.json
"""

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(Path(path).read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    runs = report["runs"]
    width = 0.8 / len(runs)
    lengths = [f"{clip['audio_s']:.0f} s" for clip in runs[0]["clips"]]
    for i, run in enumerate(runs):
        xs = [x + i * width for x in range(len(lengths))]
        left.bar(xs, [clip["rtf"] for clip in run["clips"]], width, label=run["backend"])
        right.bar(xs, [clip["peak_mb"] for clip in run["clips"]], width, label=run["backend"])
    for axis, label, title in ((left, "real-time factor (lower is faster)", "Processing time / audio time"),
                               (right, "peak resident memory (MB)", "Peak memory of the process")):
        axis.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(lengths))], lengths)
        axis.set_xlabel("clip length")
        axis.set_ylabel(label)
        axis.set_title(title)
        axis.legend(fontsize=8)
    fig.suptitle(f"{report['model']} on {report['device']} ({report['threads']} threads)")
    fig.tight_layout()
    out = DOCS / "benchmarks-speech.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
