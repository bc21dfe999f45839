"""Weighted mixtures: `prepare` keeps each source's tokens apart and records the weights; over
10,000 sampled windows each source's share is within 2% of its weight (not of its size), and a
resumed sampler continues the same sequence of sources and windows."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from decoderlm.data.mixture import Mixture, MixtureSchedule
from decoderlm.data.pipeline import prepare
from decoderlm.data.samplers import RandomWindows, SequentialWindows
from decoderlm.data.shards import TokenData
from decoderlm.errors import DecoderLMError


def _write(path, letters: str, n_docs: int, seed: int) -> str:
    rng = random.Random(seed)
    docs = [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(rng.randint(20, 60)))
            for _ in range(n_docs)]
    path.write_text("".join('{"text": "%s"}\n' % d for d in docs))
    return str(path)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Source A (letters a-m) is a quarter the size of source B (n-z), weighted 0.7 / 0.3."""
    root = tmp_path_factory.mktemp("mix")
    a, b = _write(root / "a.jsonl", "abcdefghijklm", 100, 1), _write(root / "b.jsonl", "nopqrstuvwxyz", 400, 2)
    data = TokenData.open(prepare([a, b], "char", root / "data", weights=[7, 3], val_fraction=0.05,
                                  shard_tokens=5000, progress=False))
    only_a = {data.tokenizer.encode(ch)[0] for ch in "abcdefghijklm"}
    return data, only_a


def _shares(batches, only_a) -> float:
    """The share of windows from source A (each window holds letters of one source only)."""
    rows = torch.cat([x for x, _ in batches]).tolist()
    from_a = [any(t in only_a for t in row) for row in rows]
    assert len(rows) == 10_000
    return sum(from_a) / len(rows)


def test_prepare_keeps_sources_apart_and_records_the_weights(mixed):
    data, _ = mixed
    assert isinstance(data.train, Mixture) and data.meta["weights"] == [0.7, 0.3]
    assert [s["weight"] for s in data.meta["sources"]] == [0.7, 0.3]
    shards = data.meta["shards"]["train"]
    assert {s["source"] for s in shards} == {0, 1} and all(len(s) for s in data.train.streams)
    assert len(data.train.streams[1]) > 3 * len(data.train.streams[0])  # by size A would get ~20%
    assert len(data.train) == data.meta["train_tokens"] and len(data.val) == data.meta["val_tokens"]


@pytest.mark.parametrize("make", [
    lambda tokens: RandomWindows(tokens, block_size=16, batch_size=100, seed=5),
    lambda tokens: SequentialWindows(tokens, block_size=16, batch_size=100, seed=5),
], ids=["random", "sequential"])
def test_shares_follow_the_weights_and_resume_continues(mixed, make):
    data, only_a = mixed
    sampler = make(data.train)
    first = [sampler.next_batch() for _ in range(50)]
    state = sampler.state_dict()
    rest = [sampler.next_batch() for _ in range(50)]
    assert abs(_shares(first + rest, only_a) - 0.7) < 0.02
    resumed = make(data.train)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next_batch()[0], x) for x, _ in rest)
    with pytest.raises(DecoderLMError, match="saved with a weighted mixture of sources, the data has none"):
        make(np.arange(10_000) % 7).load_state_dict(state)


def test_sequential_mixture_serves_each_source_window_once_per_pass(mixed):
    data, _ = mixed
    sampler = SequentialWindows(data.train, block_size=16, batch_size=64, seed=1)
    counts = sampler.mixture.counts
    taken = {0: [], 1: []}
    for _ in range(30):
        sources, windows = sampler.mixture.take(64)
        for s, w in zip(sources.tolist(), windows.tolist()):
            taken[s].append(w)
    for source, windows in taken.items():
        first_pass = windows[: counts[source]]
        assert len(set(first_pass)) == len(first_pass)  # no window twice before the pass ends


def test_schedule_keeps_every_prefix_within_one_window_of_its_share():
    schedule = MixtureSchedule([0.5, 0.3, 0.2])
    sources = schedule.take(1000)
    for n in (10, 99, 1000):
        counts = np.bincount(sources[:n], minlength=3)
        assert np.all(np.abs(counts - n * np.array([0.5, 0.3, 0.2])) <= 1)


@pytest.mark.parametrize("weights,message", [
    ([0.7], "1 --weight value\\(s\\) for 2 --source value\\(s\\)"),
    ([0.7, -0.3], "--weight -0.3 is not a positive number"),
    ([0.7, float("nan")], "--weight nan is not a positive number"),
])
def test_bad_weights_are_refused_before_anything_is_read(tmp_path, weights, message):
    with pytest.raises(DecoderLMError, match=message):
        prepare(["missing-a.txt", "missing-b.txt"], "char", tmp_path / "d", weights=weights, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_mixture_source_too_short_for_a_window_is_named(mixed):
    data, _ = mixed
    tiny = Mixture([data.train.streams[0], np.arange(5)], [0.5, 0.5], ["a.jsonl", "tiny.jsonl"])
    with pytest.raises(DecoderLMError, match="source 'tiny.jsonl' has 5 tokens, fewer than block_size"):
        RandomWindows(tiny, block_size=16, batch_size=2)
