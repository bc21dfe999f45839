"""Helpers for the serving tests: a tiny trained model in a run directory, and a server on a random
loopback port in a background thread (torn down afterwards)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import one_torch_thread  # noqa: F401 - re-exported for the serve tests

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
STORY = "the quick brown fox jumps over the lazy dog. "
TEXT = (STORY * 4 + "\n") * 8 + "<|im_start|>user\n<|im_end|>\nTHE QUICK BROWN FOX!? 0123456789 ü\n"


@functools.lru_cache(maxsize=None)
def tiny_run_dir() -> Path:
    """A 2-layer character model trained for a few seconds on TEXT (it continues the fox sentence; its
    peaked predictions leave no near-ties for rounding to flip), saved as a run directory. Built once
    per test session."""
    from decoderlm import DecoderLM, ModelConfig
    from decoderlm.data.tokenizers import train_tokenizer
    from decoderlm.lm import LanguageModel

    tokenizer = train_tokenizer("char", [TEXT], 100)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=128, d_model=64, n_layer=2, n_head=4,
                         position="learned")  # GPT-style: no compiled training kernels to wait for
    model = DecoderLM(config)
    data = torch.tensor(tokenizer.encode(TEXT))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        for _ in range(150):
            starts = torch.randint(0, len(data) - 49, (16,), generator=generator)
            batch = torch.stack([data[s:s + 49] for s in starts.tolist()])
            loss = model(batch[:, :-1], batch[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    directory = Path(tempfile.mkdtemp(prefix="decoderlm-serve-test-"))
    atexit.register(shutil.rmtree, directory, True)
    LanguageModel.from_model(model.eval(), tokenizer).save(directory / "tiny")
    return directory / "tiny"


def chat_template_file() -> Path:
    path = tiny_run_dir().parent / "chatml.jinja"
    path.write_text(CHATML)
    return path


@contextlib.contextmanager
def running_server(lm=None, **settings):
    """Serve `lm` (default: the tiny model) on 127.0.0.1:<free port>; yields (base URL, engine)."""
    import decoderlm
    from decoderlm.serve.server import running

    with running(lm or decoderlm.load(tiny_run_dir()), **settings) as served:
        yield served


@pytest.fixture(scope="module")
def tiny_lm():
    """The tiny model, loaded; torch runs on one thread while a test module uses it."""
    import decoderlm

    with one_torch_thread():
        yield decoderlm.load(tiny_run_dir())
