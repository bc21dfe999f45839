"""decoderlm: build, train and run decoder-only transformer language models."""

from decoderlm.config import DataConfig, ModelConfig, Recipe, TrainConfig
from decoderlm.errors import DecoderLMError
from decoderlm.model import DecoderLM, KVCache
from decoderlm.presets import get_recipe, preset_names

__version__ = "0.1.0"

__all__ = [
    "DataConfig", "DecoderLM", "DecoderLMError", "KVCache", "ModelConfig", "Recipe", "TrainConfig",
    "get_recipe", "preset_names", "load",
]


def load(path, **kwargs):
    """Load a run directory or a Hugging Face checkpoint directory into a `LanguageModel`."""
    from decoderlm.lm import load as _load

    return _load(path, **kwargs)
