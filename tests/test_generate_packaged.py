"""The decoding step built ahead of time (decoderlm.generate.packaged): exact, kept on disk, found
again by a later process without compiling, and named by everything its code depends on."""

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from decoderlm import DecoderLM, ModelConfig
from decoderlm.compile_support import can_compile, use_persistent_cache
from decoderlm.generate import generate, packaged
from decoderlm.generate.defaults import choose_compile
from decoderlm.kernels import native
from decoderlm.quantize.swap import quantize_model

needs_compiler = pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="needs a C++ compiler")
CONFIG = ModelConfig(vocab_size=97, max_seq_len=64, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                     position="rope", ffn="swiglu", norm="rmsnorm", init_std=0.2)


def tiny() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(CONFIG).eval()


@pytest.fixture
def step_dir(tmp_path, monkeypatch):
    """Libraries go to a fresh folder (inductor's own caches stay where they are: faster builds)."""
    use_persistent_cache()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    packaged._LOADED.clear()
    return tmp_path / "decoderlm" / "decode-steps"


@needs_compiler
def test_built_once_then_loaded_by_a_new_process_without_compiling(step_dir, monkeypatch):
    model = tiny()
    prompt = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(1))
    eager = generate(model, prompt, 24, temperature=0, compile=False)
    assert len(set(eager[0, 6:].tolist())) > 3, "a meaningful comparison needs varied tokens"
    assert not choose_compile(None, model, 24, prompt_len=6)  # nothing built: too short to pay

    assert torch.equal(generate(model, prompt, 24, temperature=0, compile=True), eager)
    with pytest.warns(Warning):  # past the 64-token window: the cache is cropped, refilled, stepped on
        assert torch.equal(generate(model, prompt, 80, temperature=0, compile=True),
                           generate(model, prompt, 80, temperature=0, compile=False))
    libraries = list(step_dir.iterdir())
    assert len(libraries) == 1 and libraries[0].suffix == ".so" and len(libraries[0].stem) == 40

    # In this process: the loaded step; from now on the default uses it.
    assert packaged.packaged_step(model, 1, 64) is packaged.packaged_step(model, 1, 64)
    assert choose_compile(None, model, 24, prompt_len=6)
    # As a new process would: from disk, never building again.
    packaged._LOADED.clear()
    monkeypatch.setattr(packaged, "_build", lambda *a: pytest.fail("rebuilt a step that was on disk"))
    assert choose_compile(None, model, 24, prompt_len=6)
    assert torch.equal(generate(model, prompt, 24, temperature=0), eager)

    # A real new process: the default call loads the library and never imports the compiler.
    child = step_dir.parent / "child.py"
    child.write_text(textwrap.dedent(f"""
        import json, sys, torch
        from decoderlm import DecoderLM, ModelConfig
        from decoderlm.generate import generate
        torch.manual_seed(0)
        model = DecoderLM(ModelConfig.from_dict(json.loads({json.dumps(CONFIG.to_dict())!r}))).eval()
        out = generate(model, torch.tensor({prompt.tolist()}), 24, temperature=0)
        from decoderlm.generate import packaged
        print(json.dumps(out.tolist()), bool(packaged._LOADED), "torch._dynamo" in sys.modules)
        print("child: threads", torch.get_num_threads(), "native kernels", packaged.native.ensure(build=False),
              file=sys.stderr)
    """))
    if native.ensure():  # this machine's C++ kernels, where the child's cache folder expects them
        kernels = step_dir.parent / "kernels" / native._loaded_from[0].name
        kernels.parent.mkdir(exist_ok=True)
        if not kernels.exists():  # loaded from another cache folder before this test
            shutil.copy(native._loaded_from[0], kernels)
    env = {**os.environ, "XDG_CACHE_HOME": str(step_dir.parent.parent)}
    result = subprocess.run([sys.executable, str(child)], capture_output=True, text=True, env=env, check=True)
    ids, step_loaded, compiler_imported = result.stdout.strip().rsplit(" ", 2)
    assert json.loads(ids) == eager.tolist()
    parent = f"parent: threads {torch.get_num_threads()} native kernels {native.ensure(build=False)}"
    assert step_loaded == "True" and compiler_imported == "False", f"{parent}\n{result.stderr[-2000:]}"
    assert "compiling" not in result.stderr


def test_the_name_follows_weights_shapes_layers_and_code(monkeypatch):
    model = tiny()
    key = packaged._key(model, 1, 64)
    assert packaged._key(copy.deepcopy(model), 1, 64) == key  # same bytes, same library
    assert packaged._key(model, 2, 64) != key and packaged._key(model, 1, 128) != key
    assert packaged._key(copy.deepcopy(model).to(torch.bfloat16), 1, 64) != key
    with torch.no_grad():
        model.tok_emb.weight[0, 0] += 1  # one weight changed in place: another library
    assert packaged._key(model, 1, 64) != key
    changed = packaged._key(model, 1, 64)
    monkeypatch.setattr(packaged, "_source_hash", lambda: "another decoderlm")  # an upgrade: rebuilt
    assert packaged._key(model, 1, 64) != changed


def test_padded_batches_compile_in_process():
    model = tiny()
    assert packaged.supported(model, padded=False) == can_compile(torch.device("cpu"))
    assert not packaged.supported(model, padded=True)


@needs_compiler
def test_a_quantized_model_is_built_with_its_calls_beside_the_library(step_dir):
    """With decoderlm's int8/int4 kernels the library calls them through AOTInductor's proxy executor,
    which reads `<name>.json`; the built step computes the eager model's logits (bf16: up to rounding),
    in this process and in a later one."""
    from decoderlm.generate.compiled import _decode_step
    from decoderlm.kernels import native

    model = quantize_model(tiny(), "int8").to(torch.bfloat16)

    def logits(step) -> torch.Tensor:
        cache = model.new_cache(1, 64, static=True)
        return torch.cat([step(torch.tensor([[t]]), cache) for t in (5, 17, 3, 60, 8, 41)])

    with torch.no_grad():
        eager = logits(lambda tokens, cache: _decode_step(model, tokens, cache, None, None))
        built = logits(packaged.compiled_call(model, 1, 64))
        assert isinstance(packaged.compiled_call(model, 1, 64), packaged.PackagedStep)
        assert (built - eager).abs().max() <= 0.02 * eager.abs().max()
        (library,) = step_dir.glob("*.so")
        assert library.with_suffix(".json").is_file() == native.ensure()
        packaged._LOADED.clear()  # as a later process: both files are loaded, nothing is built
        assert torch.equal(logits(packaged.packaged_step(model, 1, 64)), built)
        assert list(step_dir.glob("*.so")) == [library]


def test_only_the_most_recently_used_libraries_of_ours_are_kept(tmp_path):
    mine = []
    for i in range(packaged.KEEP + 3):
        path = tmp_path / f"{i:040x}.so"
        path.write_bytes(b"x")
        path.with_suffix(".json").write_text("{}")  # a quantized step's calls go with its library
        os.utime(path, (1000 + i, 1000 + i))
        mine.append(path)
    other, other_json = tmp_path / "notes.txt", tmp_path / "settings.json"
    other.write_text("the user's")
    other_json.write_text("{}")
    stale_build, fresh_build = tmp_path / ".build-old", tmp_path / ".build-now"
    stale_build.mkdir()
    fresh_build.mkdir()
    os.utime(stale_build, (1000, 1000))
    packaged._forget_old(tmp_path)
    assert [p.exists() for p in mine] == [False] * 3 + [True] * packaged.KEEP
    assert [p.with_suffix(".json").exists() for p in mine] == [False] * 3 + [True] * packaged.KEEP
    assert other.exists() and other_json.exists() and fresh_build.exists() and not stale_build.exists()


def test_a_library_is_written_whole_or_not_at_all(step_dir, monkeypatch):
    """A build that fails leaves neither a library nor its build folder behind."""
    import torch._inductor

    def broken(*args, **kwargs):
        raise RuntimeError("compiler crashed")

    monkeypatch.setattr(torch._inductor, "aot_compile", broken)
    with pytest.raises(RuntimeError, match="compiler crashed"):
        packaged._build(tiny(), 1, 64, step_dir / ("0" * 40 + ".so"))
    assert list(step_dir.iterdir()) == []


@needs_compiler
def test_a_model_export_cannot_capture_falls_back_to_compiling_in_process(step_dir, monkeypatch):
    """Warned once; later generations with that model go straight to torch.compile."""
    monkeypatch.setattr(packaged, "_build", lambda *a: (_ for _ in ()).throw(RuntimeError("cannot export")))
    model = tiny()
    with pytest.warns(UserWarning, match="compiling it in this process instead"):
        assert not isinstance(packaged.compiled_call(model, 1, 64), packaged.PackagedStep)
    monkeypatch.setattr(packaged, "_build", lambda *a: pytest.fail("tried again"))
    assert not isinstance(packaged.compiled_call(model, 1, 64), packaged.PackagedStep)


def test_an_unreadable_library_is_replaced(step_dir, monkeypatch):
    model = tiny()
    path = step_dir / f"{packaged._key(model, 1, 64)}.so"
    step_dir.mkdir(parents=True)
    path.write_bytes(b"not a library")
    built = []

    def build(model, batch, cache_len, where, *kind_and_tokens):
        built.append(where)
        where.write_bytes(b"rebuilt")

    monkeypatch.setattr(packaged, "_build", build)
    monkeypatch.setattr(packaged, "_load", lambda p: (_ for _ in ()).throw(RuntimeError("bad ELF"))
                        if p.read_bytes() == b"not a library" else "runner")
    step = packaged.packaged_step(model, 1, 64)
    assert built == [path] and step.runner == "runner"
