"""The Pallas selective scan's tuning knobs, apart from the kernel so that a model config can
hold them without importing Pallas."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """Tuning knobs. ``tile``: max channels per program (a power of two); ``seg``: steps
    unrolled per segment; ``ckpt_segs``: segments per checkpoint chunk (memory of the
    saved states is L*N/(seg*ckpt_segs) floats per channel); ``num_warps``: Triton warps."""

    # Measured on an H100 (benchmarks/RESULTS.md): the least MedMamba-T-weighted fwd+bwd
    # time of the sweeps there. One warp per forward program keeps 16 state elements per
    # thread; the adjoint, with four reductions per step, is fastest on two warps.
    tile: int = 32
    seg: int = 4
    ckpt_segs: int = 2
    num_warps: int = 1
    # The adjoint keeps more live state and does more reductions per step: it may want
    # another tile and warp count. None: the forward's.
    bwd_tile: int | None = None
    bwd_warps: int | None = 2
    # 1: the kernels read B and C position-major, (L, N), so a position's N values are one
    # vectorised load; the wrapper transposes them (an XLA copy, unless fused upstream).
    bc_rows: int = 0
    # 1: the forward loads the next segment while computing this one (software pipelining
    # through the loop carry). The carried values stay in their compact load layout and are
    # broadcast through shared memory each step: fewer registers, more instructions.
    prefetch: int = 0

    def __post_init__(self):
        warp_counts = (1, 2, 4, 8, 16, 32)  # Triton launches a power of two of warps
        rules = {
            "tile": (self.tile >= 1, "at least 1"),
            "seg": (self.seg >= 1, "at least 1"),
            "ckpt_segs": (self.ckpt_segs >= 1, "at least 1"),
            "num_warps": (self.num_warps in warp_counts, "a power of two, 1 to 32"),
            "bwd_tile": (self.bwd_tile is None or self.bwd_tile >= 1, "at least 1, or None"),
            "bwd_warps": (self.bwd_warps is None or self.bwd_warps in warp_counts, "a power of two, 1 to 32, or None"),
            "bc_rows": (self.bc_rows in (0, 1), "0 or 1"),
            "prefetch": (self.prefetch in (0, 1), "0 or 1"),
        }
        bad = [f"{name}={getattr(self, name)} (must be {rule})" for name, (ok, rule) in rules.items() if not ok]
        if bad:
            raise ValueError(f"bad ScanConfig: {', '.join(bad)}")

    def tile_cap(self, backward: bool) -> int:
        return (self.bwd_tile or self.tile) if backward else self.tile

    def warps(self, backward: bool) -> int:
        return (self.bwd_warps or self.num_warps) if backward else self.num_warps

    @classmethod
    def parse(cls, text: str) -> "ScanConfig":
        """'tile=32,seg=8,ckpt=2,warps=4,bwd_warps=1' -> ScanConfig (omitted fields keep defaults)."""
        fields = {}
        for item in filter(None, text.split(",")):
            key, _, value = item.partition("=")
            if key not in _CONFIG_KEYS or not value.isdigit():
                raise ValueError(f"bad scan config item {item!r}; keys: {sorted(_CONFIG_KEYS)}")
            fields[_CONFIG_KEYS[key]] = int(value)
        return cls(**fields)

    def describe(self) -> dict:
        """The fields under parse()'s short keys."""
        return {short: getattr(self, name) for short, name in _CONFIG_KEYS.items()}


_CONFIG_KEYS = {
    "tile": "tile", "seg": "seg", "ckpt": "ckpt_segs", "warps": "num_warps",
    "bwd_tile": "bwd_tile", "bwd_warps": "bwd_warps", "bc_rows": "bc_rows", "prefetch": "prefetch",
}  # fmt: skip
