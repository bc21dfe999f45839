"""The model: `DecoderLM` built from a `ModelConfig`."""

from decoderlm.model.cache import KVCache
from decoderlm.model.summary import parameter_breakdown, format_breakdown
from decoderlm.model.transformer import DecoderLM

__all__ = ["DecoderLM", "KVCache", "parameter_breakdown", "format_breakdown"]
