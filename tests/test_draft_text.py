"""scripts/draft_text.py, which writes a model's own text to distil a speculative draft on: the
files, the same text on a second run, and bad input refused before anything is written."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import draft_text  # noqa: E402

from test_train_support import tiny_run  # noqa: E402


def test_writes_the_models_text_reproducibly_and_refuses_bad_input(tmp_path):
    tiny_run(tmp_path)
    small = ["--batches", "2", "--rows", "3", "--tokens", "40", "--no-compile"]
    assert draft_text.main([str(tmp_path / "run"), str(tmp_path / "text"), *small]) == 0
    files = sorted((tmp_path / "text").iterdir())
    assert [f.name for f in files] == ["text-0000.txt", "text-0001.txt"]
    import decoderlm
    lm = decoderlm.load(tmp_path / "run", dtype="float32")
    for batch, f in enumerate(files):  # greedy after 28 sampled tokens, then samples: 3 texts each
        texts = draft_text.model_text(lm.model, lm.tokenizer, batch, 3, 40, compile=False)
        assert len(texts) == 3 and all(texts)
        assert f.read_text() == "".join(t + "\n\n" for t in texts)
    assert draft_text.main([str(tmp_path / "run"), str(tmp_path / "again"), *small]) == 0
    assert [f.read_text() for f in sorted((tmp_path / "again").iterdir())] == [f.read_text() for f in files]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    # refused with one line and exit 2, nothing written
    assert draft_text.main([str(tmp_path / "run"), str(tmp_path / "text"), *small]) == 2  # exists
    assert draft_text.main([str(tmp_path / "absent"), str(tmp_path / "t2"), *small]) == 2
    assert draft_text.main([str(tmp_path / "run"), str(tmp_path / "t3"), "--tokens", "100", "--no-compile"]) == 2
    assert draft_text.main([str(tmp_path / "run"), str(tmp_path / "t4"), "--batches", "0"]) == 2
    assert not any((tmp_path / name).exists() for name in ("t2", "t3", "t4"))
