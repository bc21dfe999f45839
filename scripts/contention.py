"""Training throughput alone and beside one single-threaded CPU hog (`while :; do :; done`),
alternating in one session, so that the ratio is comparable even on a machine whose load drifts.

    python scripts/contention.py [--preset shakespeare] [--steps 40] [--rounds 2] [--env OMP_WAIT_POLICY=active]

Prints each run's tokens/s (the median of the logged intervals after the first, which compiles),
then quiet tok/s, hog tok/s and their ratio (the medians over rounds), with the load average.
On 2 cores, a fair share beside one hog is 2/3 of the CPU: a ratio near 0.67 is proportional.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train_rate(preset: str, steps: int, out: Path, data: str | None, env: dict) -> float:
    args = [sys.executable, "-m", "decoderlm", "train", "--preset", preset, "--out", str(out), "--overwrite",
            "--no-progress", "--no-samples", "--set", f"train.max_steps={steps}", "train.time_budget=none",
            "train.log_every=5", "train.eval_every=0"]
    if data:
        args += ["--data", data]
    subprocess.run(args, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")][1:]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the training runs, e.g. OMP_WAIT_POLICY=active")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train_rate(args.preset, 6, run, None, env)  # prepares the data once and fills the compile cache
        data = Path(tmp) / "data"
        (run / "data").resolve().rename(data)
        quiet, hog = [], []
        for i in range(args.rounds):
            quiet.append(train_rate(args.preset, args.steps, run, str(data), env))
            spinner = subprocess.Popen(["bash", "-c", "while :; do :; done"])
            try:
                hog.append(train_rate(args.preset, args.steps, run, str(data), env))
            finally:
                spinner.kill()
                spinner.wait()
            print(f"round {i + 1}: quiet {quiet[-1]:.0f} tok/s, beside a hog {hog[-1]:.0f} tok/s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    q, h = statistics.median(quiet), statistics.median(hog)
    print(f"quiet tok/s {q:.0f}\nhog tok/s {h:.0f}\nratio {h / q:.2f} (fair share on 2 cores: 0.67)")


if __name__ == "__main__":
    main()
