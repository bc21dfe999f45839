"""Run lm-evaluation-harness tasks on a decoderlm model: check the request, load the tasks, evaluate.

Every check a user can fail (lm-eval missing, an unknown task, a task config or data file that does
not load, a bad --limit) happens before the model runs and becomes one DecoderLMError line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from decoderlm.errors import DecoderLMError

LM_EVAL_VERSION_HINT = "pip install 'decoderlm[eval]'"


@dataclass
class TaskRequest:
    tasks: list[str]
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: int | float | None = None
    batch_size: int = 8
    apply_chat_template: bool = False
    extra: dict = field(default_factory=dict)  # more simple_evaluate keyword arguments


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise DecoderLMError(f"task evaluation needs lm-evaluation-harness: {LM_EVAL_VERSION_HINT}") from None
    import decoderlm.evaluation.lm_eval_adapter  # noqa: F401 - registers the "decoderlm" model

    return lm_eval


def parse_limit(text) -> int | float | None:
    """--limit: a whole number of documents per task, or a fraction (0, 1) of each task."""
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or (value >= 1 and not value.is_integer()):
        raise DecoderLMError(f"--limit must be a whole number of documents >= 1 or a fraction between 0 and 1, "
                             f"got {text}")
    return int(value) if value >= 1 else value


def task_manager(names: list[str], include_path: str | None):
    """lm-eval's TaskManager. Indexing lm-eval's own ~14,000 task configs takes many seconds, so when
    every requested name is found under --include-path only that directory is indexed, and a name
    that no task file even mentions is refused before any indexing."""
    from lm_eval.tasks import TaskManager

    roots = [builtin_tasks_dir()]
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise DecoderLMError(f"--include-path {include_path} is not a directory")
        local = TaskManager(include_path=include_path, include_defaults=False)
        missing = [name for name in names if not local.match_tasks([name])]
        if not missing:
            return local
        check_task_yaml(Path(include_path), missing)
        roots.append(Path(include_path))
    unknown = unmentioned(names, roots)
    if unknown:
        raise DecoderLMError(f"unknown lm-eval task(s): {', '.join(unknown)} (check the name, or give "
                             f"--include-path DIR with its YAML)")
    return TaskManager(include_path=include_path)


def builtin_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def unmentioned(names: list[str], roots: list[Path]) -> list[str]:
    """Names that appear in no task YAML text under `roots` (so no task, group or tag has them).
    Reading the files takes a fraction of the time lm-eval needs to parse and index them."""
    candidates = {name for name in names if not any(c in name for c in "*?[") and not Path(name).is_file()}
    for root in roots:
        for path in root.rglob("*.yaml"):
            if not candidates:
                return []
            text = path.read_bytes()
            candidates = {name for name in candidates if name.encode() not in text}
    return [name for name in names if name in candidates]


def check_task_yaml(directory: Path, names: list[str]) -> None:
    """lm-eval skips task YAML it cannot parse without a word, and the task then looks unknown: name
    the file instead when one that mentions a missing task does not parse."""
    import yaml

    class Loader(yaml.SafeLoader):  # lm-eval's own tags (!function ...) need not resolve to check syntax
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    for path in sorted(directory.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if not any(name in text for name in names):
            continue
        try:
            yaml.load(text, Loader=Loader)
        except yaml.YAMLError as err:
            reason = " ".join(str(err).split())
            raise DecoderLMError(f"task file {path} does not load: {reason}") from None


def load_tasks(manager, names: list[str]) -> dict:
    """Build the tasks now (configs, data files, prompts) so that a broken one fails before the model runs."""
    unknown = [name for name in names if not manager.match_tasks([name]) and not Path(name).is_file()]
    if unknown:
        raise DecoderLMError(f"unknown lm-eval task(s): {', '.join(unknown)} (check the name, or give "
                             f"--include-path DIR with its YAML)")
    try:
        return manager.load(names)
    except Exception as err:  # lm-eval and datasets raise many types for a bad config or missing data
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DecoderLMError(f"cannot load task(s) {', '.join(names)}: {reason[:300]}") from None


def run_tasks(lm, request: TaskRequest) -> dict:
    """Evaluate `lm` (a LanguageModel) on the tasks; returns lm-eval's results dictionary."""
    lm_eval = require_lm_eval()
    from decoderlm.evaluation.lm_eval_adapter import DecoderLMEval

    if not request.tasks:
        raise DecoderLMError("no tasks given")
    limit = parse_limit(request.limit)
    if request.num_fewshot is not None and request.num_fewshot < 0:
        raise DecoderLMError(f"--num-fewshot must be >= 0, got {request.num_fewshot}")
    model = DecoderLMEval(lm, batch_size=request.batch_size)
    if request.apply_chat_template:
        model.chat_template(True)  # fails now, with one line, if the model has none
    manager = task_manager(request.tasks, request.include_path)
    load_tasks(manager, request.tasks)
    return lm_eval.simple_evaluate(model=model, tasks=request.tasks, task_manager=manager,
                                   num_fewshot=request.num_fewshot, limit=limit,
                                   apply_chat_template=request.apply_chat_template,
                                   fewshot_as_multiturn=request.apply_chat_template, **request.extra)


def task_scores(results: dict) -> dict[str, dict]:
    """eval.json entries: each task's metrics (lm-eval's "acc,none" keys become "acc"), shots and samples."""
    entries = {}
    for task, metrics in (results.get("results") or {}).items():
        entry = {}
        for key, value in metrics.items():
            name, _, filter_name = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and filter_name:
                entry[name if filter_name == "none" else f"{name} ({filter_name})"] = value
        entry["num_fewshot"] = (results.get("n-shot") or {}).get(task)
        samples = (results.get("n-samples") or {}).get(task) or {}
        entry["samples"] = samples.get("effective", samples.get("original"))
        entries[task] = entry
    return entries
