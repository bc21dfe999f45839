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
HEAD_BITS = (4, 8, 16)  # the output head: int4 (int4 models only), int8, or 16 = kept in floating point


@dataclass(frozen=True)
class QuantSpec:
    bits: int  # 8: int8 per output channel; 4: int4 in groups of `group_size` input columns
    group_size: int | None = None  # int4 only (default 64)
    # The output head: by default as the other layers (int8 or int4, as gpt-fast and torchao do);
    # 8 or 16 keep more of the logits' precision (docs/generation.md has the perplexity cost).
    head_bits: int | None = None

    def validated(self) -> "QuantSpec":
        if self.bits not in BITS:
            raise DecoderLMError(f"--bits must be 8 or 4, got {self.bits}")
        head = self.bits if self.head_bits is None else self.head_bits
        if head not in HEAD_BITS:
            raise DecoderLMError(f"--head-bits must be 4, 8 or 16 (not quantized), got {head}")
        group = self.group_size
        if self.bits == 8:
            if group is not None:
                raise DecoderLMError("--group-size applies to 4-bit quantization only (int8 is per output channel)")
            if head == 4:
                raise DecoderLMError("an int4 head needs --bits 4 (its groups are the model's)")
            return QuantSpec(8, None, head)
        group = DEFAULT_GROUP_SIZE if group is None else group
        if group not in GROUP_SIZES:
            raise DecoderLMError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))} "
                                 f"(torch's CPU int4 kernel), got {group}")
        return QuantSpec(self.bits, group, head)

    def to_dict(self) -> dict:
        return {"method": "weight-only", **asdict(self)}

    @classmethod
    def from_dict(cls, data, where: str = "config.json") -> "QuantSpec":
        if not isinstance(data, dict) or data.get("method") != "weight-only":
            raise DecoderLMError(f"{where}: the 'quantization' section is not one decoderlm wrote "
                                 f"(expected method 'weight-only')")
        try:
            # files written before int4 heads existed have no head_bits: their heads are int8
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
