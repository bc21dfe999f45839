"""The toy preset trained through the optional Lightning adapter, as seed 001 does."""

from __future__ import annotations

import json

import pytest
import torch

L = pytest.importorskip("lightning", reason="lightning is optional: pip install 'decoderlm[lightning]'")

from decoderlm import get_recipe  # noqa: E402
from decoderlm.data.shards import TokenData, prepare  # noqa: E402
from decoderlm.generate import generate  # noqa: E402
from decoderlm.cli import main  # noqa: E402
from decoderlm.lightning import LightningLM, window_loader  # noqa: E402
from decoderlm.lm import LanguageModel  # noqa: E402


def test_toy_trains_with_lightning_trainer(tmp_path, capsys):
    recipe = get_recipe("toy")
    data = TokenData.open(prepare(["toy"], "toy", tmp_path / "data", vocab_size=5, val_fraction=0.0, progress=False))
    tok = data.tokenizer
    L.seed_everything(recipe.train.seed, verbose=False)
    module = LightningLM(recipe.model, recipe.train)
    loader = window_loader(data.train, block_size=recipe.train.block_size, stride=recipe.train.stride,
                           batch_size=recipe.train.batch_size)
    assert len(loader) == 2
    trainer = L.Trainer(max_epochs=30, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert trainer.global_step == 60

    for prompt in ("what is statquest <EOS>", "statquest is what <EOS>"):
        ids = torch.tensor([tok.encode(prompt)])
        out = generate(module.model, ids, 2, temperature=0.0)
        assert tok.decode(out[0, ids.shape[1]:].tolist()) == "awesome <EOS>"

    # docs/training.md: generate afterwards, in Python and from a saved directory through the CLI.
    lm = LanguageModel.from_model(module.model.eval(), tokenizer=tok, recipe=recipe)
    assert lm.generate("what is statquest <EOS>", max_new_tokens=2, temperature=0) == "awesome"  # up to <EOS>
    lm.save(tmp_path / "toy-lightning")
    code = main(["generate", str(tmp_path / "toy-lightning"), "--prompt", "statquest is what <EOS>",
                 "--max-new-tokens", "2", "--temperature", "0", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["completions"][0] == {
        "text": "awesome", "token_ids": [tok.encode("awesome")[0]], "finish_reason": "eos"}
