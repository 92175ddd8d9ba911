"""medmamba-jax: MedMamba in JAX / Flax NNX, with parity to the released PyTorch weights."""

__version__ = "0.1.0"  # the one place it is written: pyproject.toml and `medmamba --version` read it

from medmamba_jax.models import (
    SS2D,
    MedMamba,
    MedMambaConfig,
    PatchEmbed2D,
    PatchMerging2D,
    SSConvSSM,
    count_params,
    medmamba_b,
    medmamba_s,
    medmamba_t,
)
from medmamba_jax.ops import selective_scan

__all__ = [
    "SS2D",
    "__version__",
    "MedMamba",
    "MedMambaConfig",
    "PatchEmbed2D",
    "PatchMerging2D",
    "SSConvSSM",
    "count_params",
    "from_torch",
    "medmamba_b",
    "medmamba_s",
    "medmamba_t",
    "selective_scan",
    "to_torch_state_dict",
]


def __getattr__(name):
    # The converters import torch lazily; keep `import medmamba_jax` free of it.
    if name in ("from_torch", "to_torch_state_dict"):
        from medmamba_jax import params

        return getattr(params, name)
    raise AttributeError(f"module 'medmamba_jax' has no attribute {name!r}")
