"""scripts/copy_finetune.py, which makes the prompt-lookup bench's model: its rows count the right
targets, and it runs end to end on a tiny run without touching the source."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import copy_finetune  # noqa: E402

from test_train_support import tiny_run  # noqa: E402


class Letters:
    def encode(self, text):
        return [3 + ord(c) % 20 for c in text]


def test_rows_count_the_second_copy_of_random_passages():
    rows = copy_finetune.CopyRows(Letters(), list(range(3, 40)) * 20, 64, seed=1)
    for phase in (1, 2):
        ids, counted = rows.batch(phase, 6, 64, random_share=1.0)
        assert ids.shape == (6, 65) and counted.shape == (6, 64)
        for row, mask in zip(ids.tolist(), counted.tolist()):
            targets = row[1:]
            for i, flag in enumerate(mask):
                if flag and i >= 1 and phase == 1:
                    # a counted target in a random row is a repeat: the token appeared earlier in the row
                    assert targets[i] in row[:i + 1]
            assert any(mask) and not all(mask)


def test_end_to_end_on_a_tiny_run(tmp_path):
    tiny_run(tmp_path)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    assert copy_finetune.main([str(tmp_path / "run"), str(tmp_path / "copy"), "--steps", "2", "2"]) == 0
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    import decoderlm
    tuned, source = decoderlm.load(tmp_path / "copy").model, decoderlm.load(tmp_path / "run").model
    assert not torch.equal(tuned.tok_emb.weight, source.tok_emb.weight)
    assert not (tmp_path / "copy" / "data").exists()
    assert copy_finetune.main([str(tmp_path / "run"), str(tmp_path / "copy")]) == 2  # never over a directory
    assert copy_finetune.main([str(tmp_path / "absent"), str(tmp_path / "copy2")]) == 2  # one line, no traceback
    assert not (tmp_path / "copy2").exists()
