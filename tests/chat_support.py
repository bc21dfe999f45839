"""Shared by the tests/test_chat_*.py files: a small trained BPE with the ChatML tokens, a few
conversations, and the same tokenizer wrapped for transformers."""

from __future__ import annotations

from pathlib import Path

from decoderlm.chat import add_special_tokens, default_template
from decoderlm.data.tokenizers import train_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GPT2 = SHARED / "tokenizers" / "gpt2"

CORPUS = ("Hello there, how are you today? I am fine, thank you. The capital of France is Paris. "
          "Reverse the word: stressed -> desserts. Please answer briefly and politely. ") * 30

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"},
     {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "You reverse words."},
     {"role": "user", "content": "stressed"}, {"role": "assistant", "content": "desserts"},
     {"role": "user", "content": "  spaced  out \n"}, {"role": "assistant", "content": "\n tuo  decaps  "},
     {"role": "user", "content": "ünïcödé 🙂"}, {"role": "assistant", "content": "🙂 édöcïnü"}],
]


def small_bpe(extra_tokens=()):
    """A 400-token byte-level BPE trained on CORPUS, with `extra_tokens` added as special tokens."""
    tok = train_tokenizer("bpe", [CORPUS], 400)
    return add_special_tokens(tok, extra_tokens)[0] if extra_tokens else tok


def chatml_bpe():
    return small_bpe(default_template().special_tokens)


def as_transformers(tokenizer, template_source: str):
    """The same `tokenizers` object as a transformers tokenizer carrying `template_source`."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, eos_token="[eos]", pad_token="[pad]")
    hf.chat_template = template_source
    return hf
