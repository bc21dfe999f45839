"""A bounded load test on loopback: 16 concurrent clients send 200 requests; none fails, every
answer is the one the request gets alone, and requests were really decoded together."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

import decoderlm  # noqa: E402
from decoderlm.generate import complete  # noqa: E402
from serve_support import one_torch_thread, running_server, tiny_run_dir  # noqa: E402

CLIENTS, REQUESTS = 16, 200
PROMPTS = ["the quick", "over the", "lazy dog. the", "THE QUICK", "jumps", "fox", "the quick brown fox jumps over", "a"]


def kinds():
    """Distinct requests: greedy and seeded sampling, several lengths, some with stop strings."""
    for i, prompt in enumerate(PROMPTS):
        yield dict(prompt=prompt, max_tokens=8 + 3 * i, temperature=0)
        yield dict(prompt=prompt, max_tokens=12, temperature=1.2, top_p=0.9, seed=i)
        yield dict(prompt=prompt, max_tokens=20, temperature=0, stop=["dog"])


def test_sixteen_clients_two_hundred_requests():
    lm = decoderlm.load(tiny_run_dir())
    requests = list(kinds())
    expected = [complete(lm, r["prompt"], max_new_tokens=r["max_tokens"], temperature=r["temperature"],
                         top_p=r.get("top_p"), seed=r.get("seed"), stop=r.get("stop"))[0].text for r in requests]
    plan = list(itertools.islice(itertools.cycle(range(len(requests))), REQUESTS))
    with one_torch_thread(), running_server(lm, max_batch=16) as (url, engine):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)

        def send(k: int) -> str:
            r = requests[k]
            if k % 2:  # half of them streamed
                chunks = client.completions.create(model="tiny", stream=True, **r)
                return "".join(c.choices[0].text for c in chunks if c.choices)
            return client.completions.create(model="tiny", **r).choices[0].text

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(send, plan))
        stats = engine.stats
    wrong = [(requests[k], got) for k, got in zip(plan, answers) if got != expected[k]]
    assert not wrong, wrong[:3]
    assert stats.failed == 0 and stats.cancelled == 0 and stats.finished == REQUESTS
    assert stats.peak_rows >= 8  # decoded together, not one by one
