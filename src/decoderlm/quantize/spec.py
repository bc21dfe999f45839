"""What a quantized model is: the bits of its linear layers, the int4 group size and the head's bits.

Saved as the `quantization` section of config.json, so `decoderlm.load` can rebuild the layout
before reading the weights. Bad values become one-line DecoderLMErrors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from decoderlm.errors import DecoderLMError

BITS = (8, 4)
GROUP_SIZES = (32, 64, 128, 256)  # what torch's CPU int4 kernel accepts
DEFAULT_GROUP_SIZE = 64
HEAD_BITS = (8, 16)  # the output head: int8, or 16 = kept in floating point


@dataclass(frozen=True)
class QuantSpec:
    bits: int  # 8: int8 per output channel; 4: int4 in groups of `group_size` input columns
    group_size: int | None = None  # int4 only (default 64)
    # The output head is int8 even in int4 models: it is the layer whose errors reach the logits
    # directly (docs/generation.md has the perplexity cost of each choice).
    head_bits: int = 8

    def validated(self) -> "QuantSpec":
        if self.bits not in BITS:
            raise DecoderLMError(f"--bits must be 8 or 4, got {self.bits}")
        if self.head_bits not in HEAD_BITS:
            raise DecoderLMError(f"head bits must be 8 or 16 (not quantized), got {self.head_bits}")
        group = self.group_size
        if self.bits == 8:
            if group is not None:
                raise DecoderLMError("--group-size applies to 4-bit quantization only (int8 is per output channel)")
            return self
        group = DEFAULT_GROUP_SIZE if group is None else group
        if group not in GROUP_SIZES:
            raise DecoderLMError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))} "
                                 f"(torch's CPU int4 kernel), got {group}")
        return QuantSpec(self.bits, group, self.head_bits)

    def to_dict(self) -> dict:
        return {"method": "weight-only", **asdict(self)}

    @classmethod
    def from_dict(cls, data, where: str = "config.json") -> "QuantSpec":
        if not isinstance(data, dict) or data.get("method") != "weight-only":
            raise DecoderLMError(f"{where}: the 'quantization' section is not one decoderlm wrote "
                                 f"(expected method 'weight-only')")
        try:
            return cls(bits=data["bits"], group_size=data.get("group_size"),
                       head_bits=data.get("head_bits", 8)).validated()
        except (KeyError, TypeError):
            raise DecoderLMError(f"{where}: the 'quantization' section lacks 'bits'") from None

    @property
    def label(self) -> str:
        group = f", groups of {self.group_size}" if self.bits == 4 else ""
        head = "float" if self.head_bits == 16 else f"int{self.head_bits}"
        return f"int{self.bits}{group}, head {head}"


def parse_mode(mode) -> QuantSpec:
    """'int8' | 'int4' | 8 | 4 | a QuantSpec -> a validated QuantSpec."""
    if isinstance(mode, QuantSpec):
        return mode.validated()
    names = {"int8": 8, "int4": 4, "8": 8, "4": 4}
    bits = names.get(str(mode).lower())
    if bits is None:
        raise DecoderLMError(f"quantize must be int8 or int4, got {mode!r}")
    return QuantSpec(bits).validated()
