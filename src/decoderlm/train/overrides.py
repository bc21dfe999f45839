"""`--set section.key=value` overrides of a recipe, checked against the config dataclasses."""

from __future__ import annotations

import dataclasses
import json

from decoderlm.config import DataConfig, FinetuneConfig, ModelConfig, Recipe, TrainConfig
from decoderlm.errors import DecoderLMError

SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "finetune": FinetuneConfig}


def parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    """["train.lr=1e-3", "n_layer=2"] -> {"train": {"lr": 0.001}, "model": {"n_layer": 2}}.

    A bare key means the train section if TrainConfig has it (else model, else data). Values are
    read as JSON where they parse (numbers, true/false, null, lists), else as text; a comma list
    becomes a tuple for tuple fields (`train.betas=0.9,0.95`)."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DecoderLMError(f"--set expects key=value (e.g. train.lr=1e-3), got {item!r}")
        section, dot, name = key.rpartition(".")
        if not dot:
            section = next((s for s, cls in SECTIONS.items() if name in _fields(cls)), "train")
        if section not in SECTIONS:
            raise DecoderLMError(f"unknown --set section {section!r} in {item!r}; use model., train., data. or finetune.")
        cls = SECTIONS[section]
        if name not in _fields(cls):
            raise DecoderLMError(f"unknown --set key {key!r}: {cls.__name__} has no field {name!r}")
        out.setdefault(section, {})[name] = _coerce(raw.strip(), _fields(cls)[name], f"{section}.{name}")
    return out


def apply_overrides(recipe: Recipe, overrides: dict[str, dict[str, object]]) -> Recipe:
    changes = {}
    for section, values in overrides.items():
        current = getattr(recipe, section)
        try:
            changes[section] = current.replace(**values)
        except (TypeError, ValueError) as err:
            raise DecoderLMError(f"invalid --set for {section}: {err}") from None
    return recipe.replace(**changes)


def _fields(cls) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def _coerce(raw: str, annotation: str, key: str):
    """The text of a --set value as the field's type (annotations are strings such as "int | None")."""
    types = {t.strip() for t in annotation.split("|")}
    if raw.lower() in ("none", "null", ""):
        if "None" in types:
            return None
        raise DecoderLMError(f"{key} cannot be empty or none")
    if annotation.startswith("tuple"):
        items = json.loads(raw) if raw.startswith("[") else [_scalar(p.strip()) for p in raw.split(",") if p.strip()]
        return tuple(items)
    value = _scalar(raw)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if "bool" in types and isinstance(value, bool):
        return value
    if "int" in types and is_number and float(value).is_integer():
        return int(value)
    if "float" in types and is_number:
        return float(value)
    if "str" in types:
        return raw
    wanted = " or ".join(sorted(types - {"None"}))
    raise DecoderLMError(f"{key} expects {wanted}, got {raw!r}")


def _scalar(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        lowered = raw.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return raw
