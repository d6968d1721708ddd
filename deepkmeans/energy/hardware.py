"""The accelerator the energy model prices: an Eyeriss-like row-stationary (RS) chip.

Defaults are Eyeriss (Chen, Emer, Sze, ISCA 2016 / JSSC 2017): 16-bit words, a 12 x 14 PE array, a
108 kB global buffer (GLB) and per-PE register files (RF). Costs are normalized energies per 16-bit
access, relative to one 16-bit MAC (65 nm): RF 1, array (inter-PE network) 2, GLB 6, DRAM 200.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

LEVELS: tuple[str, ...] = ("DRAM", "GLB", "array", "RF")
"""Memory levels, outermost first; every access is charged at exactly one of them."""


@dataclass(frozen=True)
class Hardware:
    """Sizes and normalized access costs of the RS accelerator; every field is configurable.

    ``add_cost`` prices one psum addition of a reused 1-D result under weight sharing (no dense
    counterpart). It defaults to a full MAC, the conservative choice: it never overstates the saving.
    """

    word_bits: int = 16
    array_rows: int = 12
    array_cols: int = 14
    glb_bytes: int = 108 * 1024
    rf_ifmap_words: int = 12
    rf_filter_words: int = 224
    rf_psum_words: int = 24
    mac_cost: float = 1.0
    add_cost: float = 1.0
    rf_cost: float = 1.0
    array_cost: float = 2.0
    glb_cost: float = 6.0
    dram_cost: float = 200.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value <= 0:
                raise ValueError(f"Hardware.{f.name} must be > 0, got {value}")

    @property
    def glb_bits(self) -> int:
        """GLB capacity in bits, so that narrower data packs more values."""
        return self.glb_bytes * 8

    def level_cost(self, level: str) -> float:
        """Normalized energy of one word-wide access at ``level``."""
        return {
            "DRAM": self.dram_cost,
            "GLB": self.glb_cost,
            "array": self.array_cost,
            "RF": self.rf_cost,
        }[level]

    def access_scale(self, bits: float) -> float:
        """Memory access energy scales linearly with the word's bit-width."""
        return bits / self.word_bits

    def mac_scale(self, weight_bits: int, act_bits: int) -> float:
        """MAC energy: linear in one narrower operand, quadratic when both are narrower."""
        return (weight_bits / self.word_bits) * (act_bits / self.word_bits)


EYERISS = Hardware()
"""The default chip: Eyeriss as published (immutable, so safe to share)."""
