"""MedMamba modules (Flax NNX)."""

from medmamba_jax.models.medmamba import (
    BLOCK_PARTS,
    BLOCKS,
    VARIANT_CONFIGS,
    VARIANTS,
    ConvBranch,
    MedMamba,
    MedMambaConfig,
    PatchEmbed2D,
    PatchMerging2D,
    SSConvSSM,
    Stage,
    build_model,
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
    "VARIANT_CONFIGS",
    "VARIANTS",
    "ConvBranch",
    "MedMamba",
    "MedMambaConfig",
    "PatchEmbed2D",
    "PatchMerging2D",
    "SS2D",
    "SSConvSSM",
    "Stage",
    "build_model",
    "channel_shuffle",
    "count_params",
    "medmamba_b",
    "medmamba_s",
    "medmamba_t",
]
