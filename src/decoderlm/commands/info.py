"""`decoderlm info PRESET_OR_PATH`: print a configuration and its parameter breakdown."""

from __future__ import annotations

import json
from pathlib import Path

from decoderlm.presets import get_recipe, preset_names


def register(sub):
    p = sub.add_parser("info", help="show a preset's or a checkpoint's configuration and parameter counts")
    p.add_argument("target", help=f"a preset ({', '.join(preset_names())}), a run directory or a Hugging Face directory")
    p.set_defaults(func=info)


def info(args) -> int:
    import torch

    from decoderlm.model import DecoderLM, format_breakdown, parameter_breakdown

    if Path(args.target).exists():
        from decoderlm.lm import load

        lm = load(args.target)
        config, model, title = lm.config, lm.model, str(args.target)
    else:
        recipe = get_recipe(args.target)
        config, title = recipe.model, f"preset {recipe.name}: {recipe.description}"
        with torch.device("meta"):  # counting needs shapes only: no memory, no initialisation
            model = DecoderLM(config)
    print(title)
    print(json.dumps(config.to_dict(), indent=2))
    print(format_breakdown(parameter_breakdown(model)))
    return 0
