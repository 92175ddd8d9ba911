"""MedMamba (Yue & Li, 2024) in Flax NNX, following the released ``MedMamba.py`` (class VSSM).

Where the paper's prose and the released code differ, the code wins, because the
published weights were trained with it:

* the SS2D branch uses B-bar = dt * B (see ``medmamba_jax.ops``);
* the block concatenates (conv, ssm) halves, shuffles channels with 2 groups, and adds the residual;
* there is no norm before the head;
* LayerNorms use eps 1e-5 (upstream passes ``nn.LayerNorm`` to every block, overriding the
  block's 1e-6 default).

``block`` (default "full", the released block) selects one of the paper's Table 7 ablation
blocks instead; those have no released weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medmamba_jax.models import init
from medmamba_jax.models.ss2d import SS2D
from medmamba_jax.ops import SCAN_IMPLS

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

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
    """Everything needed to rebuild a MedMamba; JSON-serialisable through ``to_dict``."""

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
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")

    @property
    def min_image_size(self) -> int:
        """The smallest input side that leaves a pixel in the last stage: the patch embedding
        divides the side by patch_size and each merge halves it, rounding down."""
        return self.patch_size * 2 ** (len(self.dims) - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MedMambaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MedMamba config keys: {unknown}")
        return cls(**values)


class PatchEmbed2D(nnx.Module):
    """Non-overlapping patch_size x patch_size conv, then LayerNorm: (b,H,W,C) -> (b,H/p,W/p,dim)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.proj = init.conv(in_chans, dim, patch_size, stride=patch_size, dtype=dtype, rngs=rngs)
        self.norm = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(x))


class PatchMerging2D(nnx.Module):
    """2x2 space-to-depth, LayerNorm, linear 4C -> 2C: (b,H,W,C) -> (b,H//2,W//2,2C).

    An odd H or W drops the last row or column, as upstream does.
    """

    def __init__(self, dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(4 * dim, epsilon=1e-5, rngs=rngs)
        self.reduction = init.linear(4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _, height, width, _ = x.shape
        x = x[:, : height // 2 * 2, : width // 2 * 2]
        # Upstream's concatenation order: (even row, even col), (odd, even), (even, odd), (odd, odd).
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(jnp.concatenate(parts, axis=-1)))


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm whose running variance moves as PyTorch's BatchNorm2d's does: towards the
    unbiased batch variance (times n / (n - 1), n values per channel), while the batch itself is
    normalised with the biased one. Training from the released weights then keeps upstream's
    eval statistics. Input (..., C), normalised over every axis but the last."""

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        before = self.var[...]
        y = super().__call__(x, use_running_average)
        count = x.size // x.shape[-1]
        frozen = use_running_average if use_running_average is not None else self.use_running_average
        if not frozen and count > 1:
            moved = self.var[...]  # momentum * before + (1 - momentum) * biased
            self.var[...] = moved + (moved - self.momentum * before) / (count - 1)
        return y


class ConvBranch(nnx.Module):
    """BN -> conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1 -> ReLU, channels kept."""

    def __init__(self, dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        def batch_norm():  # PyTorch momentum 0.1 is Flax momentum 0.9
            return BatchNorm(dim, momentum=0.9, epsilon=1e-5, rngs=rngs)

        self.bn_in = batch_norm()
        self.conv1 = init.conv(dim, dim, 3, padding=1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm()
        self.conv2 = init.conv(dim, dim, 3, padding=1, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm()
        self.conv3 = init.conv(dim, dim, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.bn1(self.conv1(self.bn_in(x)))
        x = self.bn2(self.conv2(jax.nn.relu(x)))
        return jax.nn.relu(self.conv3(jax.nn.relu(x)))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """Interleaves channel groups: with 2 groups, output channel 2i is a[i] and 2i+1 is b[i]."""
    *lead, channels = x.shape
    x = x.reshape(*lead, groups, channels // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)


class SSConvSSM(nnx.Module):
    """The SS-Conv-SSM block, or one of its Table 7 ablations: (b,H,W,C) -> (b,H,W,C).

    ``block="full"`` (the released block): the left half of the channels goes through
    ``conv_branch``, the right half through LN + SS2D (with stochastic depth); the halves are
    concatenated, channel-shuffled, and added to the input. ``"split_no_shuffle"`` skips the
    shuffle. ``"no_split"`` runs both branches on all C channels and adds their outputs to the
    input; ``"ssm_only"`` is LN + SS2D on all C channels plus the input (no conv branch).
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        d_state: int = 16,
        *,
        block: str = "full",
        scan_impl: str = "auto",
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _, has_conv, self.split, self.shuffle = map(bool, BLOCK_PARTS[block])
        width = dim // 2 if self.split else dim
        self.ln_1 = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.self_attention = SS2D(width, d_state, scan_impl=scan_impl, dtype=dtype, rngs=rngs)
        # Stochastic depth is dropout with one mask value per sample.
        self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs)
        self.conv_branch = ConvBranch(width, dtype=dtype, rngs=rngs) if has_conv else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.split:
            out = self.drop_path(self.self_attention(self.ln_1(x)))
            if self.conv_branch is not None:
                out = out + self.conv_branch(x).astype(out.dtype)
            return out + x
        left, right = jnp.split(x, 2, axis=-1)
        right = self.drop_path(self.self_attention(self.ln_1(right)))
        left = self.conv_branch(left)
        out = jnp.concatenate([left.astype(right.dtype), right], axis=-1)
        return (channel_shuffle(out, 2) if self.shuffle else out) + x


class Stage(nnx.Module):
    """``depth`` blocks at one resolution, then an optional PatchMerging2D."""

    def __init__(
        self,
        dim: int,
        drop_paths: Sequence[float],
        d_state: int,
        downsample: bool,
        *,
        block: str = "full",
        scan_impl: str,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.blocks = nnx.List(
            [
                SSConvSSM(dim, rate, d_state, block=block, scan_impl=scan_impl, dtype=dtype, rngs=rngs)
                for rate in drop_paths
            ]
        )
        self.downsample = PatchMerging2D(dim, dtype=dtype, rngs=rngs) if downsample else None

    def __call__(self, x: jax.Array, record: dict | None = None, name: str = "") -> jax.Array:
        for block in self.blocks:
            x = block(x)
        if record is not None:
            record[f"{name}_blocks"] = x
        if self.downsample is not None:
            x = self.downsample(x)
            if record is not None:
                record[f"{name}_downsample"] = x
        return x


class MedMamba(nnx.Module):
    """MedMamba classifier. Input (b, H, W, in_chans) float NHWC; output (b, num_classes) logits.

    ``model.train()`` uses BatchNorm batch statistics and stochastic depth (needs a
    'dropout' RNG stream); ``model.eval()`` uses running statistics and no dropout.

    With ``dtype`` bfloat16 or float16, convolutions, linears and the scan's inputs use that
    dtype and norms compute in float32. The residual stream is then float32 in the first stage
    (it leaves the patch embedding's LayerNorm) and the low dtype after the first patch merging
    (its linear's output), as under ``torch.autocast`` with the upstream model.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 4, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        d_state: int = 16,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.1,
        patch_size: int = 4,
        scan_impl: str = "auto",
        dtype: str | jnp.dtype = "float32",
        block: str = "full",
        *,
        rngs: nnx.Rngs,
    ):
        self.config = MedMambaConfig(
            depths, dims, d_state, num_classes, in_chans, patch_size, drop_path_rate, scan_impl, dtype, block
        )
        cfg, compute = self.config, _DTYPES[self.config.dtype]
        self.patch_embed = PatchEmbed2D(cfg.patch_size, cfg.in_chans, cfg.dims[0], dtype=compute, rngs=rngs)
        rates = np.linspace(0.0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        starts = np.cumsum((0,) + cfg.depths).tolist()
        self.layers = nnx.List(
            [
                Stage(
                    dim,
                    rates[starts[i] : starts[i + 1]],
                    cfg.d_state,
                    downsample=i < len(cfg.dims) - 1,
                    block=cfg.block,
                    scan_impl=cfg.scan_impl,
                    dtype=compute,
                    rngs=rngs,
                )
                for i, dim in enumerate(cfg.dims)
            ]
        )
        self.head = init.linear(cfg.dims[-1], num_classes, rngs=rngs) if num_classes > 0 else None

    def features(self, x: jax.Array) -> jax.Array:
        """Globally pooled last-stage features: (b, H, W, C) -> (b, dims[-1]) float32."""
        return self._forward(x, None).mean(axis=(1, 2)).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        features = self.features(x)
        return features if self.head is None else self.head(features).astype(jnp.float32)

    def intermediates(self, x: jax.Array) -> dict[str, jax.Array]:
        """Named activations, keyed as in the parity files: patch_embed, stage{i}_blocks, ..."""
        record: dict[str, jax.Array] = {}
        self._forward(x, record)
        return record

    def last_stage(self, x: jax.Array) -> jax.Array:
        """Last-stage feature map (b, h, w, dims[-1]), the Grad-CAM target layer."""
        return self._forward(x, None)

    def _forward(self, x: jax.Array, record: dict | None) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.config.in_chans:
            raise ValueError(
                f"expected NHWC input with {self.config.in_chans} channels, got shape {x.shape}"
            )
        if min(x.shape[1:3]) < self.config.min_image_size:  # else the last stage is empty and the pool NaN
            raise ValueError(f"input {x.shape[1]}x{x.shape[2]} is smaller than this model's minimum "
                             f"{self.config.min_image_size}x{self.config.min_image_size}")
        x = self.patch_embed(x)
        if record is not None:
            record["patch_embed"] = x
        for i, stage in enumerate(self.layers):
            x = stage(x, record, f"stage{i}")
        return x


def build_model(config: MedMambaConfig, rngs: nnx.Rngs) -> MedMamba:
    """Builds a MedMamba from a config."""
    return MedMamba(**config.to_dict(), rngs=rngs)


# The released variants (at 1000 classes); a variant with overrides is
# dataclasses.replace(VARIANT_CONFIGS[name], **overrides), which checks them without building.
VARIANT_CONFIGS = {
    "medmamba_t": MedMambaConfig(depths=(2, 2, 4, 2), dims=(96, 192, 384, 768)),
    "medmamba_s": MedMambaConfig(depths=(2, 2, 8, 2), dims=(96, 192, 384, 768)),
    "medmamba_b": MedMambaConfig(depths=(2, 2, 12, 2), dims=(128, 256, 512, 1024)),
}


def _variant(name: str, params: str):
    base = VARIANT_CONFIGS[name]

    def factory(num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> MedMamba:
        kwargs = dict(depths=base.depths, dims=base.dims, num_classes=num_classes) | overrides
        return MedMamba(**kwargs, rngs=rngs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name}: depths {base.depths}, dims {base.dims}; {params} parameters at 1000 classes."
    return factory


medmamba_t = _variant("medmamba_t", "15,221,608")
medmamba_s = _variant("medmamba_s", "19,389,544")
medmamba_b = _variant("medmamba_b", "40,883,688")

VARIANTS = {"medmamba_t": medmamba_t, "medmamba_s": medmamba_s, "medmamba_b": medmamba_b}


def count_params(model: nnx.Module) -> int:
    """Trainable parameters (nnx.Param only; BatchNorm statistics excluded)."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
