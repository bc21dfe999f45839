"""The fault sweep of issue 11 (scripts/fault_sweep.py): every bad input it drives the CLI through
must end as a user can count on. Slow (a few minutes: about 45 CLI runs), so it is left out of the
default `make test`; run it with `pytest -m slow tests/test_fault_sweep.py`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_sweep.py"


@pytest.mark.slow
def test_every_case_of_the_fault_sweep_passes():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    ok, _, total = summary[0].partition(" ok / ")
    assert ok == total.split()[0] and int(ok) > 40, summary[0]
