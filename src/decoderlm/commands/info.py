"""`decoderlm info PRESET_OR_PATH`: print a configuration and its parameter breakdown.

Only the switches that do something for this model are shown (no expert count for a dense model,
no rope_theta without rotary positions, ...), then the training and data settings of the preset or run.
"""

from __future__ import annotations

import json
from pathlib import Path

from decoderlm.presets import get_recipe, preset_names


def register(sub):
    p = sub.add_parser("info", help="show a preset's or a checkpoint's configuration, parameter counts and "
                                    "evaluation results")
    p.add_argument("target", help=f"a preset ({', '.join(preset_names())}), a run directory or a Hugging Face directory")
    p.set_defaults(func=info)


def _unused_model_keys(model: dict) -> set[str]:
    """ModelConfig fields that the model with these settings never reads."""
    moe = ("n_experts", "experts_per_token", "shared_expert", "moe_aux_loss_coef")
    rules = [
        (model["position"] != "rope", ("rope_theta",)),
        (model["ffn"] != "mlp", ("activation",)),
        (model["ffn"] == "none", ("d_ff", "mlp_bias")),
        (model["ffn"] != "moe", moe),
        (not model["attn_out_proj"], ("attn_out_bias",)),
        (model["norm"] != "layernorm", ("norm_bias",)),
        (model["norm"] == "none", ("norm_eps", "pre_norm", "final_norm")),
    ]
    return {key for unused, keys in rules if unused for key in keys}


def _unused_train_keys(train: dict) -> set[str]:
    """TrainConfig fields that the loop never reads with these settings."""
    rules = [
        (train["optimizer"] != "muon", ("muon_lr",)),
        (train["schedule"] != "wsd", ("decay_fraction",)),
        (train["schedule"] == "constant", ("min_lr",)),
        (not train["warmup_steps"], ("warmup_start_factor",)),
        (train["sampler"] != "sequential", ("stride",)),
        (not train["eval_every"], ("eval_batches", "early_stop_patience")),
    ]
    return {key for unused, keys in rules if unused for key in keys}


def applicable_settings(config, recipe=None) -> dict:
    """{"model": ..., "train": ..., "data": ...} without the switches that do not apply."""
    model = config.to_dict()
    shown = {"model": {k: v for k, v in model.items() if k not in _unused_model_keys(model)}}
    if recipe is not None:
        train = recipe.train.to_dict()
        shown["train"] = {k: v for k, v in train.items() if k not in _unused_train_keys(train)}
        shown["data"] = recipe.data.to_dict()
    return shown


def info(args) -> int:
    import torch

    from decoderlm.model import DecoderLM, format_breakdown, parameter_breakdown

    if Path(args.target).exists():
        from decoderlm.lm import load
        from decoderlm.lora import merge_lora

        lm = load(args.target)
        config, model, recipe, title = lm.config, lm.model, lm.recipe, str(args.target)
        if lm.adapters is not None:
            title, model = _adapters_title(lm), merge_lora(lm.model)  # the breakdown of the merged model
        elif recipe is None:
            title += " (a Hugging Face checkpoint: no training settings)"
    else:
        recipe = get_recipe(args.target)
        config, title = recipe.model, f"preset {recipe.name}: {recipe.description}"
        with torch.device("meta"):  # counting needs shapes only: no memory, no initialisation
            model = DecoderLM(config)
    print(title)
    print(json.dumps(applicable_settings(config, recipe), indent=2))
    print(format_breakdown(parameter_breakdown(model)))
    if Path(args.target).exists():
        _print_evaluations(lm)
    return 0


def _adapters_title(lm) -> str:
    from decoderlm.lora import lora_config_of, lora_state_dict

    config = lora_config_of(lm.model)
    targets = ",".join(config.targets + (("head",) if config.head else ()))
    params = sum(t.numel() for t in lora_state_dict(lm.model).values())
    return (f"{lm.path}: LoRA adapters (rank {config.rank}, alpha {config.alpha:g}, targets {targets}; "
            f"{params:,} parameters) on the base {lm.adapters.base}")


def _print_evaluations(lm) -> None:
    """The scores `decoderlm eval` kept in a run directory's eval.json, if any."""
    from decoderlm.evaluation.results import format_eval_results, read_eval_results

    if lm.source_format != "native" or lm.path is None:
        return
    lines = format_eval_results(read_eval_results(lm.path))
    if lines:
        print("evaluations (eval.json):")
        print(lines)
