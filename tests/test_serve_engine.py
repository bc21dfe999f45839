"""The batching engine on its own: requests that join and leave mid-flight get exactly what they
would get alone (greedy and seeded sampling), and one failing or cancelled request leaves the
others untouched."""

from __future__ import annotations

import threading

import pytest
import torch

from decoderlm import DecoderLM, ModelConfig
from decoderlm.compile_support import can_compile
from decoderlm.data.tokenizers import train_tokenizer
from decoderlm.generate import complete
from decoderlm.lm import LanguageModel
from decoderlm.serve.engine import Engine, Sequence
from decoderlm.serve.sampling import SamplingParams
from serve_support import one_torch_thread

TEXT = "the quick brown fox jumps over the lazy dog. " * 20 + "THE QUICK BROWN FOX!? 0123456789\n"
PROMPTS = ["the fox", "a", "THE QUICK BROWN FOX jumps over", "lazy", "0123456789 the quick brown fox", "x y",
           "over", "the lazy dog. the quick brown fox jumps over th", "q", "dog"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module", params=["learned", "rope"])
def lm(request):
    tokenizer = train_tokenizer("char", [TEXT], 100)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=64, d_model=32, n_layer=2, n_head=4,
                         position=request.param, init_std=0.3)  # peaked logits: no near-ties for rounding to flip
    return LanguageModel.from_model(DecoderLM(config).eval(), tokenizer)


class Collector:
    """Receives events; `after` maps (sequence, tokens seen) -> a callback (to submit more mid-flight)."""

    def __init__(self, expected: int):
        self.events: dict[int, list] = {}
        self.after: dict[tuple[int, int], callable] = {}
        self.done = threading.Semaphore(0)
        self.expected = expected

    def receiver(self, index: int):
        def on_event(event):
            self.events.setdefault(index, []).append(event)
            hook = self.after.pop((index, len(self.events[index])), None)
            if hook:
                hook()
            if event.finish_reason or event.error:
                self.done.release()
        return on_event

    def wait(self):
        for _ in range(self.expected):
            assert self.done.acquire(timeout=60), "a sequence never finished"

    def text(self, index: int) -> str:
        return "".join(e.text for e in self.events[index])


def params_for(i: int) -> SamplingParams:
    return SamplingParams(temperature=0) if i % 2 == 0 else SamplingParams(temperature=1.0, top_k=20, seed=i)


def test_joining_and_leaving_mid_flight_changes_nothing(lm):
    tok = lm.tokenizer
    engine = Engine(lm.model, tok, max_batch=3).start()
    got = Collector(len(PROMPTS))
    lengths = [min(6 + 5 * i, 64 - len(p)) for i, p in enumerate(PROMPTS)]

    def submit(i):
        engine.submit([Sequence(tok.encode(PROMPTS[i]), lengths[i], params_for(i), got.receiver(i))])

    for i in range(1, len(PROMPTS)):  # each request arrives when the previous one has produced 3 tokens
        got.after[(i - 1, 3)] = lambda i=i: submit(i)
    submit(0)
    got.wait()
    engine.stop()
    for i, prompt in enumerate(PROMPTS):
        p = params_for(i)
        alone = complete(lm, prompt, max_new_tokens=lengths[i], temperature=p.temperature, top_k=p.top_k, seed=p.seed)[0]
        assert got.text(i) == alone.text, (i, prompt)
        assert got.events[i][-1].finish_reason == ("length" if alone.finish_reason == "length" else "stop")
    assert engine.stats.peak_rows == 3 and engine.stats.column_moves > 0  # batched, and the columns were moved


def test_a_failing_receiver_ends_only_its_own_sequence(lm):
    tok = lm.tokenizer
    engine = Engine(lm.model, tok, max_batch=4).start()
    got = Collector(3)

    def broken(event):
        raise RuntimeError("this client's connection broke")

    seqs = [Sequence(tok.encode(p), 20, SamplingParams(temperature=0), got.receiver(i))
            for i, p in enumerate(["the fox", "lazy", "dog"])]
    engine.submit(seqs[:1] + [Sequence(tok.encode("over"), 20, SamplingParams(temperature=0), broken)] + seqs[1:])
    got.wait()
    engine.stop()
    for i, p in enumerate(["the fox", "lazy", "dog"]):
        assert got.text(i) == complete(lm, p, max_new_tokens=20, temperature=0)[0].text
    assert engine.stats.failed == 1


def test_a_cancelled_sequence_stops_and_the_others_go_on(lm):
    tok = lm.tokenizer
    engine = Engine(lm.model, tok, max_batch=4).start()
    got = Collector(1)
    victim = Sequence(tok.encode("the"), 50, SamplingParams(temperature=0), got.receiver(1), ignore_eos=True)
    got.after[(0, 2)] = victim.cancel  # the other sequence cancels it after two tokens of its own
    engine.submit([Sequence(tok.encode("the fox"), 30, SamplingParams(temperature=0), got.receiver(0)), victim])
    got.wait()
    engine.stop()
    assert got.text(0) == complete(lm, "the fox", max_new_tokens=30, temperature=0)[0].text
    assert len(got.events[1]) <= 3 and engine.stats.cancelled == 1


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="torch.compile needs a C++ compiler")
def test_compiled_decoding_gives_the_same_text(lm):
    """--compile: one graph for all rows and columns (spare ones masked) decodes what eager decoding does."""
    if lm.config.position != "rope":
        pytest.skip("one position scheme is enough for the compiled path (it compiles for tens of seconds)")
    tok = lm.tokenizer
    engine = Engine(lm.model, tok, max_batch=2, compile=True).start()
    got = Collector(3)
    prompts = PROMPTS[:3]
    for i in (1, 2):
        got.after[(i - 1, 2)] = lambda i=i: engine.submit(
            [Sequence(tok.encode(prompts[i]), 20, params_for(i), got.receiver(i))])
    engine.submit([Sequence(tok.encode(prompts[0]), 20, params_for(0), got.receiver(0))])
    got.wait()
    engine.stop()
    for i, prompt in enumerate(prompts):
        p = params_for(i)
        assert got.text(i) == complete(lm, prompt, max_new_tokens=20, temperature=p.temperature, top_k=p.top_k,
                                       seed=p.seed)[0].text
