"""The load run behind docs/reliability.md: the deployed server under load, then the books checked
(harness/reliability.py does the work; tests/test_load.py runs the same thing smaller).

    .venv/bin/python -m bench.reliability [--clients 50 --requests 1000 --rounds 3 --duration 300]

Writes bench/results/reliability.json.
"""

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import save_report
from harness.reliability import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=300, help="seconds per round at most")
    parser.add_argument("--mix", help="shares of page, chat and transcribe, e.g. page=0.3,chat=0.7")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra server environment, e.g. WEBBOT_MALLOC_TUNING=off (repeatable)")
    parser.add_argument("--name", default="reliability", help="results file: bench/results/NAME.json")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as work:
        report = run(args.clients, args.requests, args.rounds, args.duration, Path(work), args.mix, **env)
    save_report(args.name, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
