"""Drive the decoderlm CLI through the bad inputs of issue 11 and print `N ok / M cases`.

Each case runs `python -m decoderlm ...` in a subprocess on a tiny model (2 layers, 64 wide, 3
steps) inside a scratch directory and checks what a user must be able to count on:
  - bad input exits 2 with one line on stderr ("decoderlm: error: ...") and no traceback;
  - the user's files are untouched, nothing outside a run directory is written or deleted;
  - nothing half-written is left behind (no run directory, no temporary files).
Cases: D1 --overwrite of directories that are not runs, D2 prepare --out over a foreign directory,
D3 bad config.json on resume and generate, D4 bad --set values, D5 absurd sizes, D6 absurd values,
D7 a write failing during a checkpoint, D8 two writers on one run, D9 a misbehaving download
server, D10 temporaries of a killed prepare, D11 symlinks out of a run, and Ctrl-C.

    python scripts/fault_sweep.py              # all cases; exit status 0 when all pass
    python scripts/fault_sweep.py --only D3 -v # the cases whose names start with D3, each as it runs

The tools live in fault_sweep_checks.py, the cases in fault_sweep_cases.py and the D9 download server
in fault_sweep_server.py; this file runs them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from fault_sweep_cases import CASES
from fault_sweep_checks import Failed, Workspace, set_up, snapshot, unchanged
from fault_sweep_server import serve


# -- main -------------------------------------------------------------------------------------------
def run_case(w: Workspace, fn: Callable[[Workspace], None]) -> tuple[str | None, float]:
    """(why it failed or None, seconds)."""
    started = time.monotonic()
    try:
        fn(w)
        outcome = None
    except Failed as err:
        outcome = str(err)
    except subprocess.TimeoutExpired as err:
        outcome = f"timed out after {err.timeout} s"
    return outcome, time.monotonic() - started


def run_cases(w: Workspace, only: list[str] | None, jobs: int, verbose: bool) -> tuple[list[tuple[str, str]], int]:
    """Run the chosen cases, `jobs` at a time (each in its own directories); returns the failures
    (name, why) in case order and how many cases ran."""
    chosen = [(name, fn) for name, fn in CASES if not only or name.startswith(tuple(only))]
    data_before, run_before = snapshot(w.data), snapshot(w.run)
    outcomes = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_case, w, fn): name for name, fn in chosen}
        for future in as_completed(futures):
            name = futures[future]
            outcome, seconds = outcomes[name] = future.result()
            if verbose:
                print(f"{'ok  ' if not outcome else 'FAIL'} {name} ({seconds:.1f} s)"
                      + (f"\n     {outcome}" if outcome else ""), flush=True)
    failures = [(name, outcomes[name][0]) for name, _ in chosen if outcomes[name][0]]
    for what, root, before in (("the shared data directory", w.data, data_before), ("the shared run", w.run, run_before)):
        try:
            unchanged(before, root, what)
        except Failed as err:
            failures.append((f"after all cases: {what}", str(err)))
    return failures, len(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", metavar="PREFIX", action="append",
                        help="run only the cases whose name starts with PREFIX (repeatable)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (kept afterwards) instead of a temporary one")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="cases run at a time (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each case as it finishes")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="decoderlm-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    httpd, url = serve()
    try:
        w = set_up(root, url)
        failures, total = run_cases(w, args.only, max(1, args.jobs), args.verbose)
    finally:
        httpd.shutdown()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{total - len([f for f in failures if not f[0].startswith('after')])} ok / {total} cases")
    for name, why in failures:
        print(f"FAIL {name}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
