"""Hugging Face export keeps the tokenizer, whatever its kind (GPT-2's tiktoken ranks included), and
`decoderlm export` writes it from the command line without ever destroying a directory."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

import decoderlm
from decoderlm import DecoderLM, DecoderLMError, get_recipe
from decoderlm.cli import main
from decoderlm.data import gpt2_bpe
from decoderlm.data.tokenizers import ToyTokenizer, gpt2_tokenizer, train_tokenizer
from decoderlm.lm import LanguageModel

transformers = pytest.importorskip("transformers")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MERGES = SHARED / "tokenizers" / "gpt2" / "merges.txt"
BOOKS = SHARED / "corpus" / "books"
CORPUS = ("It was the best of times, it was the worst of times.\nCall me Ishmael. Some years ago -- never mind "
          "how long precisely -- I thought I would sail about a little.\n") * 20
VARIED = [
    "Call me Ishmael",
    "  leading spaces, trailing spaces   ",
    "lines\n\nand\r\nmore lines\n\n\n",
    "tabs\tand\t\tdouble  spaces",
    "numbers 12345 and 3.14159, contractions: I'll, they've, we're, she'd",
    "unicode: naïve café, Straße, 日本語, emoji 🙂🚀, “quotes” — dashes",
    "punctuation!?... (brackets) [more] {braces} <angle>",
]


def _gpt_config(vocab_size: int):
    return get_recipe("gpt").model.replace(vocab_size=vocab_size, d_model=32, n_layer=1, n_head=2, max_seq_len=64)


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    """A tiny GPT-2-architecture model with decoderlm's GPT-2 tokenizer (tiktoken), exported to HF."""
    tok = gpt2_tokenizer()  # the copy shipped with decoderlm
    torch.manual_seed(0)
    lm = LanguageModel.from_model(DecoderLM(_gpt_config(tok.vocab_size)).eval(), tokenizer=tok)
    out = tmp_path_factory.mktemp("gpt2") / "hf"
    lm.save(out, format="hf")
    return tok, out


def test_gpt2_tiktoken_export_encodes_exactly_as_decoderlm(gpt2_export):
    tok, out = gpt2_export
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    books = [gzip.decompress(path.read_bytes()).decode("utf-8")[:100_000]
             for path in sorted(BOOKS.glob("*.txt.gz"))[:4]] if BOOKS.is_dir() else []
    for text in VARIED + [CORPUS] + books:
        ids = tok.encode(text)
        assert hf_tok.encode(text, add_special_tokens=False) == ids, text
        assert hf_tok.encode(text) == ids, text  # transformers adds nothing of its own either
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == tok.eos_id == 50256
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 50256
    assert decoderlm.load(out).tokenizer.encode(VARIED[5]) == tok.encode(VARIED[5])


def test_gpt2_export_runs_in_a_transformers_pipeline(gpt2_export):
    tok, out = gpt2_export
    generator = transformers.pipeline("text-generation", model=str(out))
    text = generator("Call me Ishmael", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("Call me Ishmael") and len(text) > len("Call me Ishmael")


def test_merges_recovered_from_the_ranks_are_gpt2s_own():
    if not MERGES.is_file():
        pytest.skip("../shared/tokenizers/gpt2 is not available")
    ranks = gpt2_bpe.load_ranks(None)
    byte_of = gpt2_bpe._gpt2_byte_decoder()
    char_of = {b: ch for ch, b in byte_of.items()}
    ours = [" ".join("".join(char_of[x] for x in part) for part in pair) for pair in gpt2_bpe.merges_from_ranks(ranks)]
    theirs = [line for line in MERGES.read_text(encoding="utf-8").splitlines()[1:] if line]
    assert ours == theirs


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "word", "char"])
def test_trained_tokenizers_export_and_encode_the_same(tmp_path, kind):
    tok = train_tokenizer(kind, [CORPUS, *VARIED], 400 if kind != "char" else 200)
    LanguageModel.from_model(DecoderLM(_gpt_config(tok.vocab_size)), tokenizer=tok).save(tmp_path, format="hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in VARIED:
        assert hf_tok.encode(text) == tok.encode(text), (kind, text)
    assert hf_tok.eos_token_id == tok.eos_id


def test_the_toy_tokenizer_converts_too():
    toy = ToyTokenizer()
    hf = toy.to_hf()
    text = "what is statquest <EOS> awesome <EOS>"
    assert hf.encode(text).ids == toy.encode(text)
    assert hf.decode(toy.encode(text)) == text


def test_a_tokenizer_that_cannot_be_exported_is_refused_not_dropped(tmp_path):
    class Opaque:  # a user's own tokenizer object with no Hugging Face form
        eos_id, pad_id = 0, None

        def encode(self, text):
            return [0]

    lm = LanguageModel.from_model(DecoderLM(_gpt_config(64)), tokenizer=Opaque())
    with pytest.raises(DecoderLMError, match="cannot write the tokenizer"):
        lm.save(tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()


# -- decoderlm export --------------------------------------------------------------------------------
@pytest.fixture()
def run_dir(tmp_path):
    tok = train_tokenizer("bpe", [CORPUS], 300)
    lm = LanguageModel.from_model(DecoderLM(_gpt_config(tok.vocab_size)).eval(), tokenizer=tok, recipe=None)
    return lm.save(tmp_path / "run"), tok


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_command_writes_a_checkpoint_transformers_loads(run_dir, tmp_path, capsys):
    run, tok = run_dir
    out = tmp_path / "exported"
    code, stdout, err = _run(capsys, "export", run, "--format", "hf", "--out", out)
    assert code == 0, err
    first = stdout.splitlines()[0]
    assert first.startswith(f"exported {run} (model_type gpt2, ") and "config.json, model.safetensors, tokenizer.json" in first
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([tok.encode("Call me Ishmael")])
    expected = decoderlm.load(run).model(ids)
    assert torch.allclose(model(ids).logits, expected, atol=1e-4)
    assert transformers.AutoTokenizer.from_pretrained(out).encode("Call me Ishmael") == tok.encode("Call me Ishmael")


def test_export_command_refuses_to_destroy_anything(run_dir, tmp_path, capsys):
    run, _ = run_dir
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for out, extra, message in [
        (busy, [], "holds no earlier export"),
        (busy, ["--overwrite"], "holds no earlier export"),
        (run, ["--overwrite"], "is the model directory itself"),
    ]:
        code, _, err = _run(capsys, "export", run, "--out", out, *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert (busy / "notes.txt").read_text() == "mine" and sorted(p.name for p in busy.iterdir()) == ["notes.txt"]

    done = tmp_path / "done"
    assert _run(capsys, "export", run, "--out", done)[0] == 0
    code, _, err = _run(capsys, "export", run, "--out", done)
    assert code == 2 and "--overwrite" in err
    (done / "notes.txt").write_text("mine")
    assert _run(capsys, "export", run, "--out", done, "--overwrite", "--dtype", "bfloat16")[0] == 0
    assert (done / "notes.txt").read_text() == "mine"  # only the export's own files were replaced
    assert json.loads((done / "config.json").read_text())["dtype"] == "bfloat16"


def test_export_command_refuses_a_training_run_as_output_and_cleans_up_a_failed_export(run_dir, tmp_path, capsys):
    run, _ = run_dir
    toy = LanguageModel.from_model(DecoderLM(get_recipe("toy").model), tokenizer=ToyTokenizer())
    trained = toy.save(tmp_path / "trained")
    (trained / "checkpoints").mkdir()  # what a training run's directory holds
    before = (trained / "config.json").read_bytes()
    code, _, err = _run(capsys, "export", run, "--out", trained, "--overwrite")
    assert code == 2 and "holds a training run" in err
    assert (trained / "config.json").read_bytes() == before
    out = tmp_path / "hf"
    code, _, err = _run(capsys, "export", trained, "--out", out)  # the toy has no attention projection
    assert code == 2 and "cannot export to Hugging Face format" in err
    assert not out.exists()
