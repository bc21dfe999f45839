"""Weight-only int8 / int4 quantization of a DecoderLM's linear layers, applied from outside.

`quantize_model(model, "int8" | "int4" | QuantSpec)` swaps the layers in place; `decoderlm.load(dir)`
rebuilds a saved quantized model, `decoderlm.load(dir, quantize="int4")` quantizes while loading,
and `decoderlm quantize RUN_DIR --bits 4 --out DIR` writes one. See docs/generation.md.
"""

from decoderlm.quantize.linear import Int4Linear, Int8Linear
from decoderlm.quantize.spec import QuantSpec, parse_mode
from decoderlm.quantize.swap import linear_weight_bytes, prepare_layout, quantization_of, quantize_model

__all__ = ["Int4Linear", "Int8Linear", "QuantSpec", "linear_weight_bytes", "parse_mode", "prepare_layout",
           "quantization_of", "quantize_model"]
