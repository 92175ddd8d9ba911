"""MedMamba against the upstream PyTorch model's golden vectors, plus structural checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medmamba_jax import from_torch
from medmamba_jax.models import (
    MedMamba,
    MedMambaConfig,
    PatchMerging2D,
    channel_shuffle,
    count_params,
    medmamba_b,
    medmamba_s,
    medmamba_t,
)
from helpers import DATA, SHARED_PARITY, fresh_rng, rel_err

TOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(DATA / "tiny.npz"))


@pytest.fixture(scope="module")
def tiny(golden):
    # The golden vectors were made with drop_path_rate=0, so train mode is deterministic.
    return from_torch(DATA / "tiny.pth", drop_path_rate=0.0)


def nhwc(x_nchw):
    return jnp.asarray(x_nchw.transpose(0, 2, 3, 1))


@pytest.mark.parametrize(
    "factory,expected", [(medmamba_t, 15_221_608), (medmamba_s, 19_389_544), (medmamba_b, 40_883_688)]
)
def test_parameter_counts_match_upstream(factory, expected):
    model = nnx.eval_shape(lambda: factory(1000, rngs=nnx.Rngs(0)))
    assert count_params(model) == expected


def test_config_inferred_from_shapes(tiny, golden):
    cfg = tiny.config
    assert cfg.depths == tuple(golden["config_depths"])
    assert cfg.dims == tuple(golden["config_dims"])
    assert cfg.num_classes == int(golden["config_num_classes"])
    assert cfg.d_state == int(golden["config_d_state"])


def test_eval_logits_and_intermediates(tiny, golden):
    tiny.eval()
    x = nhwc(golden["x_nchw"])
    assert rel_err(tiny(x), golden["logits_eval"]) <= TOL
    intermediates = tiny.intermediates(x)
    expected_keys = {k for k in golden if k.startswith(("patch_embed", "stage"))}
    assert set(intermediates) == expected_keys
    for name in expected_keys:
        assert rel_err(intermediates[name], golden[name]) <= TOL, name


def test_first_ssm_branch(tiny, golden):
    block = tiny.layers[0].blocks[0]
    _, right = jnp.split(jnp.asarray(golden["patch_embed"]), 2, axis=-1)
    ssm_in = block.ln_1(right)
    assert rel_err(ssm_in, golden["block0_ssm_in"]) <= TOL
    assert rel_err(block.self_attention(ssm_in), golden["block0_ssm_out"]) <= TOL


def test_train_mode_uses_batch_statistics(tiny, golden):
    tiny.train()
    try:
        logits = tiny(nhwc(golden["x_nchw"]))
    finally:
        tiny.eval()
    assert rel_err(logits, golden["logits_train"]) <= TOL
    assert rel_err(logits, golden["logits_eval"]) > 1e-3  # the two modes really differ


def test_batch_norm_running_statistics_follow_pytorch():
    import torch

    from medmamba_jax.models.medmamba import BatchNorm

    rng = fresh_rng()
    ours = BatchNorm(6, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    theirs = torch.nn.BatchNorm2d(6, momentum=0.1, eps=1e-5).double()
    for _ in range(3):  # 2 * 4 * 3 = 24 values per channel: n / (n - 1) is a 4% difference
        x = rng.standard_normal((2, 4, 3, 6)) * rng.uniform(0.5, 3, 6) + rng.uniform(-2, 2, 6)
        y = ours(jnp.asarray(x, jnp.float32))
        expected = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
        assert rel_err(y, expected) <= 1e-5
    assert rel_err(ours.mean[...], theirs.running_mean.numpy()) <= 1e-6
    assert rel_err(ours.var[...], theirs.running_var.numpy()) <= 1e-6
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((1, 2, 2, 6))
    expected = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    assert rel_err(ours(jnp.asarray(x, jnp.float32)), expected) <= 1e-5


@pytest.mark.parametrize("field,value,message", [
    ("patch_size", 0, "patch_size must be an integer >= 1, got 0"),
    ("d_state", 2.5, "d_state must be an integer >= 1, got 2.5"),
    ("d_state", 0, "d_state must be an integer >= 1"),
    ("in_chans", "3", "in_chans must be an integer >= 1, got '3'"),
    ("num_classes", -5, "num_classes must be an integer >= 0"),
])
def test_bad_config_fields_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        MedMamba(MedMambaConfig(depths=(1, 1), dims=(8, 16), **{field: value}), rngs=nnx.Rngs(0))


def test_scan_impls_agree_in_the_whole_model(golden):
    x = nhwc(golden["x_nchw"])
    reference = from_torch(DATA / "tiny.pth", scan_impl="reference")(x)
    associative = from_torch(DATA / "tiny.pth", scan_impl="associative")(x)
    assert rel_err(associative, reference) <= 1e-5


def test_stochastic_depth_only_in_train_mode():
    model = MedMamba(MedMambaConfig((1, 1), (8, 16), num_classes=3, drop_path_rate=0.9), rngs=nnx.Rngs(0))
    deep = MedMamba(MedMambaConfig((2, 3), (8, 16), num_classes=3, drop_path_rate=0.5), rngs=nnx.Rngs(0))
    rates = [block.drop_path.rate for stage in deep.layers for block in stage.blocks]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.5, 5))  # growing with depth, from 0, as upstream
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))
    model.train()
    assert not np.allclose(model(x), model(x))  # a fresh mask per call


def test_ss2d_on_a_non_square_map_matches_upstreams_four_flipped_sequences():
    """The golden vectors are square, where mixing up H and W keeps every shape; on 3 x 5 it
    would not. The reference builds upstream's four sequences (row-major, column-major, and
    both reversed) with explicit flips and runs the mamba-layout scan on them."""
    from medmamba_jax.models.ss2d import cross_scan_and_merge
    from medmamba_jax.ops.selective_scan import selective_scan_reference

    rng = fresh_rng()
    b, H, W, d, N, R = 2, 3, 5, 4, 2, 1
    L = H * W
    x = rng.normal(size=(b, H, W, d)).astype(np.float32)
    x_proj = (rng.normal(size=(4, R + 2 * N, d)) * 0.5).astype(np.float32)
    dt_proj = (rng.normal(size=(4, d, R)) * 0.5).astype(np.float32)
    dt_bias = (rng.normal(size=(4, d)) * 0.5).astype(np.float32)
    A_logs = np.log(rng.uniform(1, 4, size=(4 * d, N))).astype(np.float32)
    Ds = rng.normal(size=(4 * d,)).astype(np.float32)
    got = cross_scan_and_merge(jnp.asarray(x), x_proj, dt_proj, dt_bias, A_logs, Ds, dt_rank=R, d_state=N,
                               impl="reference")

    rows = x.reshape(b, L, d).transpose(0, 2, 1)  # (b, d, L), row-major positions
    cols = x.transpose(0, 2, 1, 3).reshape(b, L, d).transpose(0, 2, 1)  # column-major
    xs = np.stack([rows, cols, rows[..., ::-1], cols[..., ::-1]], axis=1)  # (b, 4, d, L)
    dbl = np.einsum("bkdl,kcd->bkcl", xs, x_proj)
    dts = np.einsum("bkrl,kdr->bkdl", dbl[:, :, :R], dt_proj)
    ys = np.asarray(selective_scan_reference(
        xs.reshape(b, 4 * d, L), dts.reshape(b, 4 * d, L), -np.exp(A_logs), dbl[:, :, R:R + N],
        dbl[:, :, R + N:], Ds, dt_bias.reshape(-1), delta_softplus=True)).reshape(b, 4, d, L).copy()
    ys[:, 2:] = ys[:, 2:, :, ::-1]  # the reversed directions back in forward order
    to_rows = lambda y: y.reshape(b, d, W, H).transpose(0, 1, 3, 2).reshape(b, d, L)  # noqa: E731
    merged = ys[:, 0] + ys[:, 2] + to_rows(ys[:, 1]) + to_rows(ys[:, 3])
    want = merged.transpose(0, 2, 1).reshape(b, H, W, d)
    assert rel_err(got, want) <= 1e-5


def test_odd_sizes_drop_the_last_row_and_column():
    merge = PatchMerging2D(4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 7, 5, 4))
    out = merge(x)
    assert out.shape == (1, 3, 2, 8)
    np.testing.assert_allclose(out, merge(x[:, :6, :4]), rtol=0, atol=0)
    model = MedMamba(MedMambaConfig((1, 1, 1), (8, 16, 32), num_classes=2), rngs=nnx.Rngs(0))
    assert model(jnp.ones((1, 36, 44, 3))).shape == (1, 2)


def test_channel_shuffle_interleaves_halves():
    left, right = jnp.arange(3.0), 10 + jnp.arange(3.0)
    shuffled = channel_shuffle(jnp.concatenate([left, right])[None], 2)
    np.testing.assert_array_equal(shuffled[0], [0, 10, 1, 11, 2, 12])


def test_bad_input_shape_is_explained(tiny):
    with pytest.raises(ValueError, match="expected NHWC input with 3 channels"):
        tiny(jnp.ones((1, 3, 64, 64)))
    tiny.eval()
    side = tiny.config.min_image_size  # the smallest side whose last stage keeps a pixel
    assert np.isfinite(tiny(jnp.ones((1, side, side, 3)))).all()
    with pytest.raises(ValueError, match=f"input {side - 1}x{side} is smaller than this model's minimum"):
        tiny(jnp.ones((1, side - 1, side, 3)))


@pytest.mark.skipif(
    not (SHARED_PARITY / "medmamba_t.pth").exists(),
    reason="full-size MedMamba-T golden (58 MB) lives in ../shared/parity, absent here",
)
def test_medmamba_t_full_size_parity():
    golden = np.load(SHARED_PARITY / "medmamba_t.npz")
    model = from_torch(SHARED_PARITY / "medmamba_t.pth")
    assert model.config.depths == (2, 2, 4, 2) and model.config.num_classes == 9
    x = nhwc(golden["x_nchw"])
    forward = nnx.jit(lambda m, x: (m(x), m.intermediates(x)))
    logits, intermediates = forward(model, x)
    assert rel_err(logits, golden["logits_eval"]) <= TOL
    for name, value in intermediates.items():
        assert rel_err(value, golden[name]) <= TOL, name


def test_a_model_directory_written_before_the_config_restructuring_loads_unchanged(tmp_path):
    """tests/data/model_dir_v0 was written by save_model before MedMamba took a MedMambaConfig."""
    from medmamba_jax.model_files import load_model, save_model

    saved = np.load(DATA / "model_dir_v0_logits.npz")
    model = load_model(DATA / "model_dir_v0")
    card = model.card
    assert (model.config.block, model.config.d_state, card.label_names) == ("split_no_shuffle", 4, ("a", "b", "c"))
    graph, state = nnx.split(model)  # jitted: eager ops would compile one by one (20 s here)
    logits = jax.jit(lambda s, x: nnx.merge(graph, s)(x))(state, jnp.asarray(saved["x"]))
    np.testing.assert_allclose(logits, saved["logits"], rtol=1e-5, atol=1e-8)  # |logits| ~ 4e-3
    save_model(tmp_path, model)  # and it writes the same model_config.json
    written = (tmp_path / "model_config.json").read_text()
    assert written == (DATA / "model_dir_v0" / "model_config.json").read_text()


def test_a_training_workdir_written_before_the_config_restructuring_loads_unchanged():
    """tests/data/workdir_v0: configs/smoke.py trained on fake pathmnist by train.py before the
    restructuring (its tensorboard events and curves.png left out). The same weights into the same
    config give the same logits, checked on model_dir_v0 above; compiling a second model for its
    logits would cost seconds."""
    from medmamba_jax.model_files import weights_digest
    from medmamba_jax.training.checkpointing import load_trained

    model, config = load_trained(str(DATA / "workdir_v0"), "best")
    assert config.model == "medmamba_t" and model.config.to_dict() == {
        "depths": (1, 1), "dims": (8, 16), "d_state": 16, "num_classes": 9, "in_chans": 3, "patch_size": 4,
        "drop_path_rate": 0.1, "scan_impl": "auto", "dtype": "float32", "block": "full"}
    # weights_digest of the model load_trained gave before the restructuring
    assert weights_digest(model) == "0c36aff6064bbd969a8fd16428945553a67e7100b236f341b4a84cb1b197069e"


def test_presets_take_overrides_and_factories_wrap_them():
    config = MedMambaConfig.medmamba_b(num_classes=9, block="ssm_only")
    assert (config.depths, config.dims, config.num_classes, config.block) == (
        (2, 2, 12, 2), (128, 256, 512, 1024), 9, "ssm_only")
    assert MedMambaConfig.preset("medmamba_s", d_state=8) == MedMambaConfig.medmamba_s(d_state=8)
    with pytest.raises(ValueError, match=r"unknown model 'vit'; choose one of \('medmamba_t', 'medmamba_s', 'medmamba_b"):
        MedMambaConfig.preset("vit")
    small = {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}  # a fast build; the presets' own are counted above
    model = nnx.eval_shape(lambda: medmamba_s(3, rngs=nnx.Rngs(0), drop_path_rate=0.2, **small))
    assert model.config == MedMambaConfig.medmamba_s(num_classes=3, drop_path_rate=0.2, **small)
    with pytest.raises(TypeError, match="MedMamba takes a MedMambaConfig, .*; got dict"):
        MedMamba(model.config.to_dict(), rngs=nnx.Rngs(0))


def test_scan_settings_reach_every_ss2d_and_are_not_saved():
    from medmamba_jax.ops import ScanConfig

    scan = ScanConfig(tile=8, seg=2)
    config = MedMambaConfig((1, 2), (8, 16), scan_impl="pallas", scan_config=scan, scan_interpret=True)
    model = MedMamba.abstract(config)
    blocks = [block.self_attention for stage in model.layers for block in stage.blocks]
    assert len(blocks) == 3 and all((b.scan_config, b.scan_interpret) == (scan, True) for b in blocks)
    saved = config.to_dict()
    assert "scan_config" not in saved and "scan_interpret" not in saved
    assert MedMambaConfig.from_dict(saved) == dataclasses.replace(config, scan_config=ScanConfig(), scan_interpret=None)
    with pytest.raises(ValueError, match=r"unknown MedMamba config keys: \['scan_interpret'\]"):
        MedMambaConfig.from_dict({**saved, "scan_interpret": True})
