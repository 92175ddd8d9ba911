"""MedMamba modules (Flax NNX)."""

from medmamba_jax.models.config import BLOCK_PARTS, BLOCKS, PRESETS, MedMambaConfig
from medmamba_jax.models.medmamba import (
    ConvBranch,
    MedMamba,
    PatchEmbed2D,
    PatchMerging2D,
    SSConvSSM,
    Stage,
    channel_shuffle,
    count_params,
    medmamba_b,
    medmamba_s,
    medmamba_t,
)
from medmamba_jax.models.ss2d import SS2D

__all__ = [
    "BLOCK_PARTS",
    "BLOCKS",
    "PRESETS",
    "ConvBranch",
    "MedMamba",
    "MedMambaConfig",
    "PatchEmbed2D",
    "PatchMerging2D",
    "SS2D",
    "SSConvSSM",
    "Stage",
    "channel_shuffle",
    "count_params",
    "medmamba_b",
    "medmamba_s",
    "medmamba_t",
]
