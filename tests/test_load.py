"""Load: 50 concurrent browser-like clients (harness/load.py, its own process, loopback only, a fixed number
of requests and a time limit) mixing page loads, chats (some abandoned mid-stream) and voice
transcriptions against the deployed server (gunicorn, deploy/gunicorn.conf.py) on a tiny model with real
Whisper tiny.en. The same run, larger, makes the figures in docs/reliability.md (bench/reliability.py).
"""

import pytest

from harness.reliability import run
from harness.server_process import GUNICORN
from tests.helpers import requires

pytestmark = [requires(GUNICORN, "gunicorn is not in .venv (run_tests.sh installs it)"), pytest.mark.server]


@pytest.mark.slow
def test_fifty_clients_no_5xx_every_message_stored_once_memory_flat(tmp_path):
    report = run(clients=50, requests_total=300, rounds=2, duration=150, work=tmp_path)
    statuses = report["statuses"]
    assert report["server_errors"] == [], report  # no 5xx but 503s that carry Retry-After
    assert report["transport_errors"] == [] and report["hung_clients"] == 0, report
    assert report["requests_sent"] == 600
    books = report["books"]
    assert books["accepted"] >= 50 and books["stored_once"] == books["accepted"], books
    assert books["lost"] == books["duplicated"] == books["refused_but_stored"] == books["unexpected_rows"] == 0
    assert set(books["replies_by_status"]) <= {"complete", "length", "stopped"}, books  # none left streaming
    assert statuses.get("transcribe 200", 0) > 0 and statuses.get("page 200", 0) > 0, statuses
    assert not [s for s in statuses if s.split()[1] not in ("200", "201", "409", "429", "503", "done", "dropped")]
    # resident memory after the first round is where it stays (glibc's mmap threshold is pinned)
    assert report["memory_growth_after_round_1"] < 0.06, report["memory_bytes"]
