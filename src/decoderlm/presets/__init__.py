"""Named recipes, one module each, found by file name (dashes in a preset name are underscores in
its module name). Each module defines `RECIPE`; a preset may start from another with `get_recipe`.

The registry lives here, not in `decoderlm.config`, so that the config classes import nothing from
the presets that are built out of them.
"""

from __future__ import annotations

import importlib
import pkgutil

from decoderlm.config import Recipe
from decoderlm.errors import DecoderLMError


def preset_names() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__))


def get_recipe(name: str) -> Recipe:
    """The preset `name`, as a fresh copy (changing it does not change the preset)."""
    if name not in preset_names():
        raise DecoderLMError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    return Recipe.from_dict(module.RECIPE.to_dict())  # to_dict copies every field
