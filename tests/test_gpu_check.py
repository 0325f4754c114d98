"""bench/gpu_check.py's dry run (issue 23): every stage runs on CPU with the tiny model, in the real process and
child processes it uses on a GPU, so the command is ready the first time a GPU is lent. Run as a command, as on
the GPU (tests do not import benchmarks)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["env", "engine", "speed", "graphs", "profile", "oom", "whisper", "nan", "oov"]


@pytest.mark.slow
def test_the_gpu_check_dry_run_passes_every_stage_and_writes_a_docs_section(tmp_path):
    out, docs = tmp_path / "check.jsonl", tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", docs)
    command = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--small", "--out", str(out), "--docs",
               "--docs-file", str(docs)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["stage"] for r in results] == STAGES, done.stderr[-2000:]
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert done.returncode == 0
    by_stage = {r["stage"]: r for r in results}
    assert by_stage["engine"]["greedy_equal"] and by_stage["engine"]["sampled_finished"] == 8
    assert by_stage["graphs"]["greedy_equal"] and by_stage["graphs"]["mode"] == "fixed shapes, eager"
    assert by_stage["oom"]["retried_equal"] and by_stage["oom"]["worker_alive"] and len(by_stage["oom"]["ended"]) == 4
    assert by_stage["nan"]["ended"] == "NoUsableToken" and "vocabulary" in by_stage["oov"]["refused"]
    assert all(row["decode_tok_s"] > 0 and 0 < row["of_roofline"] for row in by_stage["speed"]["rows"])
    written = docs.read_text()
    assert written.startswith((ROOT / "docs" / "benchmarks.md").read_text().rstrip("\n"))  # added, nothing lost
    assert written.count("<!-- gpu_check -->") == 2 and "| context | batch |" in written
    subprocess.run(command[:3] + ["--device", "cpu", "--small", "--stages", "env", "--docs", "--docs-file",
                                  str(docs)], cwd=ROOT, capture_output=True, timeout=300)
    assert docs.read_text().count("<!-- gpu_check -->") == 2  # a second run replaces the section
