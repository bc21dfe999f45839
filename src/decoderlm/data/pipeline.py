"""`prepare`: text sources -> tokenizer -> token shards, streaming, in memory that does not grow
with the corpus, resumable after a crash.

Stages, each over the sources in order:
  1. look at each source's first documents to choose its split rule (splits.py);
  2. train the tokenizer on every piece, or on a sample (tokenizer_sample.py), or load it;
  3. read, split and cut the documents (pieces.py), encode the pieces on all cores (stream.py)
     and append the ids to fixed-size shards (shard_files.py).
Everything is built in `.NAME.partial` beside the output and swapped into place when complete.
After each finished shard the state (shards, counts, and how many documents of which source are
done) is committed to its `progress.json`; `resume=True` continues from the last commit and gives
a byte-identical result. A failure other than an interruption removes the partial directory.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from decoderlm.data import splits as split_rules
from decoderlm.data.mixture import normalise_weights
from decoderlm.data.pieces import CHUNK_SAFE_KINDS, Tally, drop_blank, source_pieces
from decoderlm.data.shard_files import SPLITS, SplitShards, empty_state, restore_files, write_json_atomic
from decoderlm import fileio
from decoderlm.data.shards import KIND, _check_out_dir, token_dtype
from decoderlm.data.sources import iter_chunks, source_size
from decoderlm.data.stream import Encoders, batches, default_processes, encode_in_order
from decoderlm.data.tokenizer_kinds import TRAINABLE
from decoderlm.data.tokenizer_sample import Sample, parse_size
from decoderlm.data.tokenizers import build_tokenizer, load_tokenizer
from decoderlm.errors import DecoderLMError

FORMAT_VERSION = 2
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per uint16 shard
PROGRESS_FILE = "progress.json"
SEPARATOR = "eos after each document unless its tokens already end with eos"


@dataclass(frozen=True)
class Plan:
    """Everything that decides the output's bytes: a resumed run must have the same plan."""

    sources: tuple[str, ...]
    weights: tuple[float, ...] | None
    text_field: str
    tokenizer: str
    vocab_size: int
    val_fraction: float
    seed: int
    max_docs: int | None
    shard_tokens: int
    tokenizer_sample: int | None


@dataclass(frozen=True)
class Reading:
    """How sources are fetched (not part of the plan: the bytes they give are hashed instead)."""

    mirror: str | None
    cache_dir: object
    progress: bool

    def chunks(self, plan: Plan, spec: str, progress=None):
        return iter_chunks(spec, mirror=self.mirror, max_docs=plan.max_docs, cache_dir=self.cache_dir,
                           text_field=plan.text_field, progress=progress)


def prepare(sources: list[str], tokenizer: str, out_dir, *, vocab_size: int = 4096, val_fraction: float = 0.1,
            seed: int = 1337, mirror: str | None = None, max_docs: int | None = None, progress: bool = True,
            cache_dir=None, text_field: str = "text", weights: list[float] | None = None,
            tokenizer_sample: str | int | None = None, processes: int | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, resume: bool = False) -> Path:
    """Read `sources`, build the tokenizer, write the token shards to `out_dir`; returns its path.
    `weights` (one per source) makes training sample the sources in those proportions."""
    plan = make_plan(list(sources) or ["shakespeare"], tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
                     seed=seed, max_docs=max_docs, text_field=text_field, weights=weights,
                     tokenizer_sample=tokenizer_sample, shard_tokens=shard_tokens)
    processes = default_processes() if processes is None else processes
    if processes < 1:
        raise DecoderLMError(f"--processes must be at least 1, got {processes}")
    out = Path(out_dir).expanduser()
    _check_out_dir(out)
    # `out` must be new, empty or a data directory decoderlm made; it stays locked while this runs.
    fileio.recover_swap(out, require_marker=True)  # out's parent is the user's: touch only our own
    lock, created = fileio.claim_directory(out, KIND, "replace")
    try:
        fileio.remove_stale(out.parent, out.name)  # what a killed `prepare` of `out` left beside it
        _prepare_locked(plan, out, resume, Reading(mirror, cache_dir, progress), processes)
    except BaseException:
        if created:  # nothing was there before: leave nothing (an interrupted one's partial stays beside)
            fileio.remove_tree(out)
        raise
    finally:
        lock.release()
    return out


def _prepare_locked(plan: Plan, out: Path, resume: bool, reading: Reading, processes: int) -> None:
    partial = partial_dir(out)
    state = _start_or_resume(plan, out, partial, resume)
    if state is None:
        return  # resuming a prepare that had finished: nothing to do
    try:
        _build(plan, partial, state, reading, processes)
        _publish(partial, out)
    except KeyboardInterrupt:
        print(f"decoderlm: the partial output is kept in {partial}: run the same command with --resume "
              "to continue", file=sys.stderr)
        raise
    except OSError as err:  # e.g. the disk filled up: nothing half-written is left behind
        shutil.rmtree(partial, ignore_errors=True)
        raise DecoderLMError(f"cannot write {out}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def make_plan(sources: list[str], tokenizer: str, *, vocab_size: int, val_fraction: float, seed: int,
              max_docs: int | None, text_field: str, weights, tokenizer_sample, shard_tokens: int) -> Plan:
    """The checked plan; every argument error is found here, before anything is read or written."""
    if not 0 <= val_fraction < 1:
        raise DecoderLMError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_docs is not None and max_docs <= 0:
        raise DecoderLMError(f"max_docs must be positive, got {max_docs}")
    if shard_tokens < 1:
        raise DecoderLMError(f"--shard-tokens must be positive, got {shard_tokens}")
    if not text_field:
        raise DecoderLMError("--text-field must name a field")
    normalised = normalise_weights(weights, len(sources))
    return Plan(tuple(s.strip() for s in sources), tuple(normalised) if normalised else None, text_field,
                tokenizer, vocab_size, float(val_fraction), seed, max_docs, shard_tokens, parse_size(tokenizer_sample))


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


# --- starting, resuming, finishing --------------------------------------------------------------

def _start_or_resume(plan: Plan, out: Path, partial: Path, resume: bool) -> dict | None:
    if partial.exists():
        state = _read_progress(partial)
        if not resume:
            raise DecoderLMError(f"an interrupted prepare of {out} is in {partial}: continue it with --resume, "
                                 "or delete that directory to start over")
        _check_same_plan(state["plan"], plan, partial)
        for stale in partial.glob(f".{PROGRESS_FILE}.*"):  # the temporary of a commit cut short
            stale.unlink()
        restore_files(partial, state["splits"], np.dtype(state.get("dtype") or "uint8").itemsize)
        return state
    if resume and (out / "meta.json").is_file():
        return None
    try:
        partial.mkdir(parents=True)
    except OSError as err:  # a read-only file system, no permission, ...
        raise DecoderLMError(f"cannot write {out}: {err.strerror or err}") from None
    state = {"plan": asdict(plan), "stage": "tokenizer", "position": {"source": 0, "documents": 0, "sha256": None},
             "dtype": None, "splits": {name: empty_state() for name in SPLITS}, "stats": [], "tokenizer_sample": None}
    _commit(partial, state)
    return state


def _read_progress(partial: Path) -> dict:
    try:
        state = json.loads((partial / PROGRESS_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or "plan" not in state:
            raise ValueError
        return state
    except (OSError, ValueError):
        raise DecoderLMError(f"{partial} is in the way and is not an interrupted decoderlm prepare: "
                             "move it away") from None


def _check_same_plan(saved: dict, plan: Plan, partial: Path) -> None:
    now = json.loads(json.dumps(asdict(plan)))  # tuples as lists, as saved
    differ = [f"{key} {saved.get(key)!r}, now {value!r}" for key, value in now.items() if saved.get(key) != value]
    if differ:
        raise DecoderLMError(f"the interrupted prepare in {partial} had other settings ({'; '.join(differ)}): "
                             "resume with the same ones, or delete that directory to start over")


def _commit(partial: Path, state: dict) -> None:
    write_json_atomic(partial / PROGRESS_FILE, state)


def _publish(partial: Path, out: Path) -> None:
    """The one place the finished directory replaces the output (atomically, old kept until then)."""
    fileio.write_marker(partial, KIND)
    fileio.replace_dir(partial, out, require_marker=True)


# --- the stages -----------------------------------------------------------------------------------

def _build(plan: Plan, partial: Path, state: dict, reading: Reading, processes: int) -> None:
    rules = [_split_rule(plan, reading, index, spec) for index, spec in enumerate(plan.sources)]
    tok = _tokenizer_stage(plan, partial, state, reading)
    dtype = np.dtype(state["dtype"])
    encoders = Encoders(tok, partial, processes, dtype)
    shards = {name: SplitShards(partial, name, plan.shard_tokens, dtype, state["splits"][name]) for name in SPLITS}
    try:
        _encode_stage(plan, partial, state, reading, rules, tok, encoders, shards)
    finally:
        encoders.close()
        for split in shards.values():
            split.close()
    meta = _meta(plan, state, tok, rules)
    (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (partial / PROGRESS_FILE).unlink()


def _split_rule(plan: Plan, reading: Reading, index: int, spec: str):
    """By document when the source has enough documents to hold one out, else by document tail;
    reads only as far as needed to tell (all of a source only when it has few documents)."""
    needed = split_rules.documents_needed(plan.val_fraction)
    rule = split_rules.DocumentSplit(plan.val_fraction, plan.seed, index)
    lengths, current = [], 0
    for _, text, end in drop_blank((None, c.text, c.end) for c in reading.chunks(plan, spec)):
        current += len(text)
        if end:
            lengths.append(current)
            current = 0
            if needed is None or len(lengths) >= needed:
                return rule
    if not lengths:
        raise DecoderLMError(f"source {spec!r} holds no text (empty corpus)")
    return split_rules.TailSplit(plan.val_fraction, lengths)


def _tokenizer_stage(plan: Plan, partial: Path, state: dict, reading: Reading):
    if state["stage"] == "tokenizer":
        if plan.tokenizer in TRAINABLE:
            texts, sample = _training_texts(plan, reading)
            tok = build_tokenizer(plan.tokenizer, texts, plan.vocab_size,
                                  progress=reading.progress and sys.stderr.isatty())
            state["tokenizer_sample"] = sample.describe() if sample else None
        else:
            tok = build_tokenizer(plan.tokenizer)
        if tok.eos_id is None:
            raise DecoderLMError(f"tokenizer {plan.tokenizer} has no end-of-text token to join documents with")
        _save_tokenizer(tok, partial)
        state["stage"], state["dtype"] = "encode", token_dtype(tok.vocab_size).name
        _commit(partial, state)
    # Every run, fresh or resumed, and every encoder process encodes with the saved tokenizer.
    return load_tokenizer(partial)


def _save_tokenizer(tok, partial: Path) -> None:
    try:
        tok.save(partial)
    except OSError:
        raise
    except Exception as err:  # the Rust tokenizers library reports a failed write as a bare Exception
        if "os error" in str(err):
            raise OSError(str(err).split("(os error")[0].strip() or "write failed") from None
        raise


def _training_texts(plan: Plan, reading: Reading):
    """The pieces to train the tokenizer on: all of them, or a sample (then the corpus is read once
    more first, to measure it)."""
    def pieces():
        for spec in plan.sources:
            yield from (p.text for p in source_pieces(reading.chunks(plan, spec), None, True, Tally()))

    if plan.tokenizer_sample is None:
        return pieces(), None
    total = 0
    with _bar(reading, plan, "measuring") as bar:
        for spec in plan.sources:
            tally = Tally()
            for _ in _numbered_only(reading.chunks(plan, spec, bar.update), tally):
                pass
            total += tally.bytes
    sample = Sample(plan.tokenizer_sample, total, plan.seed)
    return sample.keep(pieces()), sample


def _numbered_only(chunks, tally: Tally):
    for _, text, end in drop_blank((None, c.text, c.end) for c in chunks):
        tally.bytes += len(text.encode("utf-8"))
        yield text


def _bar(reading: Reading, plan: Plan, desc: str):
    from tqdm.auto import tqdm

    sizes = [source_size(spec) for spec in plan.sources]
    total = None if None in sizes else sum(sizes)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                disable=not reading.progress or None, smoothing=0.1)


def _encode_stage(plan, partial, state, reading, rules, tok, encoders, shards) -> None:
    safe = tok.kind in CHUNK_SAFE_KINDS
    with _bar(reading, plan, "encoding") as bar:
        for index, spec in enumerate(plan.sources):
            position = state["position"]
            if index < position["source"]:
                continue
            if index == len(state["stats"]):
                state["stats"].append(_new_stats(spec))
            skip = position["documents"] if index == position["source"] else 0
            tally = Tally()
            named = source_size(spec) is None
            chunks = reading.chunks(plan, spec, None if named else bar.update)
            pieces = source_pieces(chunks, rules[index], safe, tally, skip=skip,
                                   skip_sha=position["sha256"] if skip else None)
            writer = _Writer(partial, state, shards, index)
            for batch, result in encode_in_order(batches(pieces), encoders):
                written = writer.write(batch, *result)
                if named:
                    bar.update(written)
            writer.finish_source(tally, rules[index])


def _new_stats(spec: str) -> dict:
    return {"spec": spec, **{name: {"documents": 0, "tokens": 0, "separators": 0, "bytes": 0} for name in SPLITS}}


class _Writer:
    """Appends one source's encoded batches to the shards, in order, and commits the state at the
    first document boundary after a shard is finished (and at the source's end)."""

    def __init__(self, partial: Path, state: dict, shards: dict, source: int):
        self.partial, self.state, self.shards, self.source = partial, state, shards, source
        self.stats = state["stats"][source]

    def write(self, batch, tokens: np.ndarray, counts: np.ndarray, added: np.ndarray) -> int:
        """Write a batch's pieces; returns the UTF-8 bytes of their text."""
        ends = np.cumsum(counts)
        written = 0
        for piece, start, end, eos in zip(batch, (ends - counts).tolist(), ends.tolist(), added.tolist()):
            if piece.prefix is not None and any(split.completed for split in self.shards.values()):
                # Every document before this one is written: a point to resume from.
                self.commit({"source": self.source, "documents": piece.doc, "sha256": piece.prefix.hexdigest()})
            name = SPLITS[piece.split]
            self.shards[name].write(tokens[start:end], self.source)
            size = len(piece.text.encode("utf-8"))
            stats = self.stats[name]
            stats["tokens"] += end - start
            stats["bytes"] += size
            stats["separators"] += int(eos)
            stats["documents"] += int(piece.last)
            written += size
        return written

    def commit(self, position: dict) -> None:
        for split in self.shards.values():
            split.sync()
            split.completed = False
        self.state["splits"] = {name: split.state() for name, split in self.shards.items()}
        self.state["position"] = position
        _commit(self.partial, self.state)

    def finish_source(self, tally: Tally, rule) -> None:
        for split in self.shards.values():
            split.finish()
        self.stats.update(documents=tally.documents, bytes=tally.bytes, sha256=tally.sha.hexdigest(),
                          split_unit=rule.unit)
        self.commit({"source": self.source + 1, "documents": 0, "sha256": None})


def _meta(plan: Plan, state: dict, tok, rules) -> dict:
    stats = state["stats"]
    keys = ("tokens", "documents", "separators", "bytes")
    totals = {name: {key: sum(s[name][key] for s in stats) for key in keys} for name in SPLITS}
    if not totals["train"]["tokens"]:  # a tiny single document: its "tail" is all of it
        raise DecoderLMError(f"no training text is left after holding out {plan.val_fraction:.0%} for validation: "
                             "add more text or use --val-fraction 0")
    units = sorted({rule.unit for rule in rules})
    return {
        "format": FORMAT_VERSION,
        "dtype": state["dtype"],
        "vocab_size": tok.vocab_size,
        "tokenizer": tok.kind,
        "tokenizer_spec": plan.tokenizer,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "separator": SEPARATOR,
        **{f"{name}_{key}": value for name, total in totals.items() for key, value in total.items()},
        "val_fraction": plan.val_fraction,
        "seed": plan.seed,
        "split_unit": units[0] if len(units) == 1 else "per source",
        "split_rule": split_rules.RULE,
        "shard_tokens": plan.shard_tokens,
        "shards": {name: state["splits"][name]["done"] for name in SPLITS},
        "weights": list(plan.weights) if plan.weights else None,
        "tokenizer_sample": state["tokenizer_sample"],
        "sources": [_source_meta(s, plan.weights[i] if plan.weights else None) for i, s in enumerate(stats)],
    }


def _source_meta(stats: dict, weight: float | None) -> dict:
    return {"spec": stats["spec"], "documents": stats["documents"], "bytes": stats["bytes"], "sha256": stats["sha256"],
            "split_unit": stats["split_unit"], "weight": weight,
            **{f"{name}_{key}": stats[name][key] for name in SPLITS for key in ("documents", "tokens")}}
