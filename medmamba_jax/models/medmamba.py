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

A model is built from its config (models/config.py), as ``MedMamba(config, *, rngs)``; the
factories ``medmamba_t``/``_s``/``_b`` build the released variants.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medmamba_jax.models import init
from medmamba_jax.models.config import BLOCK_PARTS, DTYPES, MedMambaConfig
from medmamba_jax.models.ss2d import SS2D
from medmamba_jax.ops import ScanConfig

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
        scan_config: ScanConfig = ScanConfig(),
        scan_interpret: bool | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _, has_conv, self.split, self.shuffle = map(bool, BLOCK_PARTS[block])
        width = dim // 2 if self.split else dim
        self.ln_1 = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.self_attention = SS2D(width, d_state, scan_impl=scan_impl, scan_config=scan_config,
                                   scan_interpret=scan_interpret, dtype=dtype, rngs=rngs)
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
    """``len(drop_paths)`` blocks at one resolution, then an optional PatchMerging2D:
    (b, H, W, dim) -> (b, H, W, dim), or (b, H//2, W//2, 2 dim) with ``downsample``."""

    def __init__(self, dim: int, drop_paths: Sequence[float], config: MedMambaConfig, downsample: bool, *,
                 rngs: nnx.Rngs):
        dtype = DTYPES[config.dtype]
        self.blocks = nnx.List(
            [
                SSConvSSM(dim, rate, config.d_state, block=config.block, scan_impl=config.scan_impl,
                          scan_config=config.scan_config, scan_interpret=config.scan_interpret, dtype=dtype,
                          rngs=rngs)
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

    Built from a :class:`MedMambaConfig`: ``MedMamba(MedMambaConfig.medmamba_t(num_classes=9),
    rngs=nnx.Rngs(0))``; ``rngs`` needs a 'params' stream (and 'dropout' for training).

    ``model.train()`` uses BatchNorm batch statistics and stochastic depth (needs a
    'dropout' RNG stream); ``model.eval()`` uses running statistics and no dropout.

    With ``dtype`` bfloat16 or float16, convolutions, linears and the scan's inputs use that
    dtype and norms compute in float32. The residual stream is then float32 in the first stage
    (it leaves the patch embedding's LayerNorm) and the low dtype after the first patch merging
    (its linear's output), as under ``torch.autocast`` with the upstream model.
    """

    def __init__(self, config: MedMambaConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, MedMambaConfig):
            raise TypeError(f"MedMamba takes a MedMambaConfig, e.g. MedMambaConfig.medmamba_t(num_classes=9); "
                            f"got {type(config).__name__}")
        self.config = cfg = config
        self.patch_embed = PatchEmbed2D(cfg.patch_size, cfg.in_chans, cfg.dims[0], dtype=DTYPES[cfg.dtype],
                                        rngs=rngs)
        rates = np.linspace(0.0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        starts = np.cumsum((0,) + cfg.depths).tolist()
        self.layers = nnx.List(
            [
                Stage(dim, rates[starts[i] : starts[i + 1]], cfg, downsample=i < len(cfg.dims) - 1, rngs=rngs)
                for i, dim in enumerate(cfg.dims)
            ]
        )
        self.head = init.linear(cfg.dims[-1], cfg.num_classes, rngs=rngs) if cfg.num_classes > 0 else None

    @classmethod
    def abstract(cls, config: MedMambaConfig, *, seed: int = 0) -> MedMamba:
        """A model of ``config``'s structure whose weights are shapes only, ready to be loaded into.

        Nothing is allocated or initialised (random initialisation would compile one XLA
        program per parameter shape on the CPU); the RNG streams get real keys from ``seed``.
        """
        model = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1)))
        base = jax.random.key(seed)
        streams = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.RngStream)]
        for index, stream in enumerate(streams):
            stream.key.set_value(jax.random.fold_in(base, index))
            stream.count.set_value(jnp.zeros((), jnp.uint32))
        return model

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


def medmamba_t(num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides: Any) -> MedMamba:
    """A fresh MedMamba-T (``MedMambaConfig.medmamba_t``): 15,221,608 parameters at 1000 classes.
    ``overrides`` set other config fields, e.g. ``block`` or ``scan_impl``."""
    return MedMamba(MedMambaConfig.medmamba_t(num_classes=num_classes, **overrides), rngs=rngs)


def medmamba_s(num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides: Any) -> MedMamba:
    """A fresh MedMamba-S (``MedMambaConfig.medmamba_s``): 19,389,544 parameters at 1000 classes.
    ``overrides`` set other config fields."""
    return MedMamba(MedMambaConfig.medmamba_s(num_classes=num_classes, **overrides), rngs=rngs)


def medmamba_b(num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides: Any) -> MedMamba:
    """A fresh MedMamba-B (``MedMambaConfig.medmamba_b``): 40,883,688 parameters at 1000 classes.
    ``overrides`` set other config fields."""
    return MedMamba(MedMambaConfig.medmamba_b(num_classes=num_classes, **overrides), rngs=rngs)


def count_params(model: nnx.Module) -> int:
    """Trainable parameters (nnx.Param only; BatchNorm statistics excluded)."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
