"""Interoperability with other toolkits' checkpoint formats (Hugging Face transformers)."""

from decoderlm.interop.hf import (SUPPORTED_MODEL_TYPES, config_from_hf, hf_family, is_hf_config,
                                  read_hf_checkpoint, write_hf_checkpoint)

__all__ = ["SUPPORTED_MODEL_TYPES", "config_from_hf", "hf_family", "is_hf_config", "read_hf_checkpoint",
           "write_hf_checkpoint"]
