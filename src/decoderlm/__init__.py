"""decoderlm: build, train and run decoder-only transformer language models."""

from decoderlm.config import DataConfig, FinetuneConfig, ModelConfig, Recipe, TrainConfig
from decoderlm.errors import DecoderLMError
from decoderlm.presets import get_recipe, preset_names

__version__ = "0.1.0"

__all__ = [
    "DataConfig", "DecoderLM", "DecoderLMError", "FinetuneConfig", "KVCache", "ModelConfig", "Recipe", "TrainConfig",
    "get_recipe", "preset_names", "load",
]


def __getattr__(name):
    # The model (and with it torch) is imported on first use, so that processes needing only the
    # data pipeline (the encoder processes of `decoderlm prepare`) start in a fraction of a second.
    if name in ("DecoderLM", "KVCache"):
        from decoderlm import model

        return getattr(model, name)
    raise AttributeError(f"module 'decoderlm' has no attribute {name!r}")


def load(path, **kwargs):
    """Load a run directory or a Hugging Face checkpoint directory into a `LanguageModel`."""
    from decoderlm.lm import load as _load

    return _load(path, **kwargs)
