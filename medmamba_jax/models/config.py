"""MedMamba's configuration: one frozen dataclass, with the released variants as presets.

``MedMamba(MedMambaConfig.medmamba_t(num_classes=9), rngs=nnx.Rngs(0))`` builds a model;
``to_dict``/``from_dict`` are the JSON form a model directory's ``model_config.json`` and a
training checkpoint's metadata hold.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from medmamba_jax.ops import SCAN_IMPLS, ScanConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# The block of each row of the paper's Table 7 (MedMamba-T with parts removed), by which of
# (SSM branch, Conv branch, channel split, channel shuffle) it keeps. "full" is the released
# SS-Conv-SSM block; the others exist only to reproduce the ablation (no released weights).
BLOCK_PARTS = {
    "full": (1, 1, 1, 1),
    "split_no_shuffle": (1, 1, 1, 0),
    "no_split": (1, 1, 0, 0),
    "ssm_only": (1, 0, 0, 0),
}
BLOCKS = tuple(BLOCK_PARTS)

# The released variants, each a classmethod of MedMambaConfig.
PRESETS = ("medmamba_t", "medmamba_s", "medmamba_b")

# How this process runs the scan, not what the weights are: never written to JSON, so a saved
# model loads on any machine with that machine's settings.
_RUN_ONLY_FIELDS = ("scan_config", "scan_interpret")


def _int_at_least(name: str, given: Any, minimum: int) -> int:
    """``given`` as a whole number >= ``minimum``, else a ValueError naming ``name``."""
    whole = isinstance(given, (int, float, np.integer, np.floating)) and not isinstance(given, bool)
    if not whole or not float(given).is_integer() or given < minimum:  # 8.5, "8" or True is not 8 or 1
        raise ValueError(f"{name} must be an integer >= {minimum}, got {given!r}")
    return int(given)


def _int_tuple(name: str, given: Any, minimum: int) -> tuple[int, ...]:
    """``given`` as a non-empty tuple of whole numbers >= ``minimum``, else a ValueError naming ``name``."""
    try:
        ints = tuple(_int_at_least(name, v, minimum) for v in given)
    except (TypeError, ValueError):  # not a sequence, or a bad entry
        ints = ()
    if not ints:
        raise ValueError(f"{name} must be a non-empty sequence of integers >= {minimum}, got {given!r}")
    return ints


@dataclasses.dataclass(frozen=True)
class MedMambaConfig:
    """Everything a MedMamba's structure depends on; JSON-serialisable through ``to_dict``.

    ``depths``/``dims``: blocks and channels per stage (each dim twice the one before);
    ``block``: the released block ("full") or a Table 7 ablation (see BLOCKS);
    ``scan_impl``: see ``medmamba_jax.ops.SCAN_IMPLS``; ``scan_config`` and ``scan_interpret``:
    the Pallas kernel's block sizes, and whether it runs in Pallas's interpreter (None: exactly
    when the backend is not a GPU). The last two are settings of this process, not of the
    weights, and are not saved.
    """

    depths: tuple[int, ...] = (2, 2, 4, 2)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    d_state: int = 16
    num_classes: int = 1000
    in_chans: int = 3
    patch_size: int = 4
    drop_path_rate: float = 0.1
    scan_impl: str = "auto"
    dtype: str = "float32"
    block: str = "full"  # one of BLOCKS: the released block, or a Table 7 ablation
    scan_config: ScanConfig = ScanConfig()
    scan_interpret: bool | None = None

    def __post_init__(self):
        # Each check names the field and what it accepts: the training config's model
        # settings are checked here before a run loads any data (training/config.py).
        object.__setattr__(self, "depths", _int_tuple("depths", self.depths, minimum=0))
        object.__setattr__(self, "dims", _int_tuple("dims", self.dims, minimum=2))
        if any(d % 2 for d in self.dims):
            raise ValueError(f"dims must be even (blocks split channels in two), got {self.dims}")
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {self.depths} and dims {self.dims} must have the same length (one per stage)")
        if any(b != 2 * a for a, b in zip(self.dims, self.dims[1:])):
            raise ValueError(f"each of dims must be twice the one before (patch merging doubles the channels), "
                             f"got {self.dims}")
        for name, minimum in (("d_state", 1), ("num_classes", 0), ("in_chans", 1), ("patch_size", 1)):
            object.__setattr__(self, name, _int_at_least(name, getattr(self, name), minimum))
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.scan_impl not in SCAN_IMPLS:
            raise ValueError(f"scan_impl must be one of {SCAN_IMPLS}, got {self.scan_impl!r}")
        try:  # any spelling NumPy knows (jnp.bfloat16, "f4") is stored by its canonical name
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        except TypeError:
            pass  # not a dtype at all: rejected just below
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if not isinstance(self.scan_config, ScanConfig):
            raise ValueError(f"scan_config must be a ScanConfig, got {self.scan_config!r}")
        if self.scan_interpret not in (None, True, False):
            raise ValueError(f"scan_interpret must be True, False or None, got {self.scan_interpret!r}")

    @classmethod
    def medmamba_t(cls, **overrides: Any) -> MedMambaConfig:
        """MedMamba-T: depths (2, 2, 4, 2), dims (96, 192, 384, 768); ``overrides`` set other fields."""
        return cls(**{"depths": (2, 2, 4, 2), "dims": (96, 192, 384, 768), **overrides})

    @classmethod
    def medmamba_s(cls, **overrides: Any) -> MedMambaConfig:
        """MedMamba-S: depths (2, 2, 8, 2), dims (96, 192, 384, 768); ``overrides`` set other fields."""
        return cls(**{"depths": (2, 2, 8, 2), "dims": (96, 192, 384, 768), **overrides})

    @classmethod
    def medmamba_b(cls, **overrides: Any) -> MedMambaConfig:
        """MedMamba-B: depths (2, 2, 12, 2), dims (128, 256, 512, 1024); ``overrides`` set other fields."""
        return cls(**{"depths": (2, 2, 12, 2), "dims": (128, 256, 512, 1024), **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MedMambaConfig:
        """The preset called ``name`` (one of PRESETS), e.g. ``preset("medmamba_t", num_classes=9)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown model {name!r}; choose one of {PRESETS}")
        return getattr(cls, name)(**overrides)

    @property
    def min_image_size(self) -> int:
        """The smallest input side that leaves a pixel in the last stage: the patch embedding
        divides the side by patch_size and each merge halves it, rounding down."""
        return self.patch_size * 2 ** (len(self.dims) - 1)

    def to_dict(self) -> dict[str, Any]:
        """The saved fields (all but the run-only scan settings), as ``from_dict`` reads them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _RUN_ONLY_FIELDS}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MedMambaConfig:
        """The config ``to_dict`` gave; a key it does not write is an error."""
        known = {f.name for f in dataclasses.fields(cls)} - set(_RUN_ONLY_FIELDS)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MedMamba config keys: {unknown}")
        return cls(**values)
