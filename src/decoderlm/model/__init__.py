"""The model: `DecoderLM` built from a `ModelConfig`, in plain PyTorch.

Reading order: positions.py, attention.py, feedforward.py, transformer.py (Block, Head, DecoderLM),
cache.py. Faster training layers are applied from outside by decoderlm.kernels.
"""

from decoderlm.model.cache import KVCache
from decoderlm.model.summary import format_breakdown, parameter_breakdown
from decoderlm.model.transformer import IGNORE_INDEX, DecoderLM

__all__ = ["DecoderLM", "IGNORE_INDEX", "KVCache", "format_breakdown", "parameter_breakdown"]
