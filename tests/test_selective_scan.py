"""The XLA selective-scan implementations against the float64 golden and each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medmamba_jax.ops import cross_selective_scan, selective_scan
from medmamba_jax.ops.selective_scan import selective_scan_associative
from helpers import DATA, NAMES, as_float32, fresh_rng, rel_err, value_and_grads

XLA_IMPLS = ("reference", "associative")


def random_inputs(rng, batch, groups, dim, n_state, length):
    channels = groups * dim
    return dict(
        u=rng.standard_normal((batch, channels, length)),
        delta=rng.standard_normal((batch, channels, length)) * 0.5,
        A=-np.exp(rng.standard_normal((channels, n_state)) * 0.5),
        B=rng.standard_normal((batch, groups, n_state, length)),
        C=rng.standard_normal((batch, groups, n_state, length)),
        D=rng.standard_normal(channels),
        delta_bias=rng.standard_normal(channels) * 0.5,
    )


@pytest.mark.parametrize("impl", XLA_IMPLS)
def test_matches_float64_golden(impl):
    golden = np.load(DATA / "selective_scan.npz")
    fn = lambda *a: selective_scan(*a, delta_softplus=True, impl=impl)
    y, grads = value_and_grads(fn, as_float32(golden), golden["dy"])
    assert rel_err(y, golden["y"]) <= 1e-5
    for name in NAMES:
        assert rel_err(grads[name], golden[f"grad_{name}"]) <= 1e-5, name


@pytest.mark.parametrize("length,chunk,n_state", [(37, 8, 1), (64, 16, 4), (5, 64, 16)])
def test_associative_matches_reference(length, chunk, n_state):
    rng = fresh_rng()
    inputs = random_inputs(rng, 2, 3, 5, n_state, length)
    dy = rng.standard_normal((2, 15, length))
    ref = lambda *a: selective_scan(*a, delta_softplus=True, impl="reference")
    assoc = lambda *a: selective_scan_associative(*a, delta_softplus=True, chunk_size=chunk)
    y_ref, g_ref = value_and_grads(ref, as_float32(inputs), dy)
    y, g = value_and_grads(assoc, as_float32(inputs), dy)
    assert rel_err(y, y_ref) <= 1e-5
    for name in NAMES:
        assert rel_err(g[name], g_ref[name]) <= 1e-5, name


def test_optional_terms_and_low_precision_inputs():
    rng = fresh_rng()
    inputs = random_inputs(rng, 1, 2, 4, 4, 20)
    bf16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in inputs.items()}
    y = selective_scan(bf16["u"], bf16["delta"], bf16["A"], bf16["B"], bf16["C"], impl="associative")
    y_ref = selective_scan(
        *(bf16[k].astype(jnp.float32) for k in ("u", "delta", "A", "B", "C")), impl="reference"
    )
    assert y.dtype == jnp.float32
    assert rel_err(y, y_ref) <= 1e-5


def test_associative_backward_never_holds_the_full_state():
    batch, channels, length, n_state = 2, 64, 2048, 16
    rng = np.random.default_rng(0)
    inputs = {k: jnp.asarray(v, jnp.float32) for k, v in random_inputs(rng, batch, 4, 16, n_state, length).items()}
    loss = lambda u: selective_scan(u, *(inputs[n] for n in NAMES[1:]), delta_softplus=True).sum()
    compiled = jax.jit(jax.grad(loss)).lower(inputs["u"]).compile()
    full_state_bytes = batch * channels * length * n_state * 4
    assert compiled.memory_analysis().temp_size_in_bytes < full_state_bytes / 4


def test_cross_scan_reverses_directions_two_and_three():
    rng = fresh_rng()
    batch, dim, n_state, length = 2, 3, 4, 9
    u2 = rng.standard_normal((batch, 2, dim, length))
    delta = rng.standard_normal((batch, 4, dim, length))
    A = -np.exp(rng.standard_normal((4 * dim, n_state)))
    B, C = rng.standard_normal((2, batch, 4, n_state, length))
    D, bias = rng.standard_normal((2, 4 * dim))
    minor = lambda a: np.swapaxes(a, 2, 3)  # the op takes and returns channels-minor sequences
    y = minor(np.asarray(cross_selective_scan(minor(u2), minor(delta), A, B, C, D, bias, impl="reference")))
    # Build upstream's layout explicitly: flipped copies for directions 2 and 3.
    flip = lambda a: a[..., ::-1]
    u4 = np.concatenate([u2, flip(u2)], axis=1).reshape(batch, 4 * dim, length)
    d4 = np.concatenate([delta[:, :2], flip(delta[:, 2:])], axis=1).reshape(batch, 4 * dim, length)
    b4 = np.concatenate([B[:, :2], flip(B[:, 2:])], axis=1)
    c4 = np.concatenate([C[:, :2], flip(C[:, 2:])], axis=1)
    expected = np.array(selective_scan(u4, d4, A, b4, c4, D, bias, True, impl="reference"))
    expected = expected.reshape(batch, 4, dim, length)
    expected[:, 2:] = flip(expected[:, 2:])
    assert rel_err(y, expected) <= 1e-6


def test_bad_shapes_and_impl_are_rejected():
    inputs = random_inputs(np.random.default_rng(0), 1, 2, 2, 4, 6)
    with pytest.raises(ValueError, match="delta must have u's shape"):
        selective_scan(inputs["u"], inputs["delta"][..., :5], inputs["A"], inputs["B"], inputs["C"])
    with pytest.raises(ValueError, match="not a multiple"):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"][:, :1].repeat(3, 1), inputs["C"][:, :1].repeat(3, 1))
    with pytest.raises(ValueError, match="unknown scan impl"):
        selective_scan(*(inputs[n] for n in NAMES[:5]), impl="cuda")


@pytest.mark.parametrize("impl", ["reference", "associative", "pallas"])
@pytest.mark.parametrize("name", ["D", "delta_bias"])
def test_a_per_channel_vector_of_another_length_is_rejected_not_broadcast(impl, name):
    inputs = random_inputs(np.random.default_rng(0), 1, 2, 2, 4, 6)
    inputs[name] = inputs[name][:1]  # (1,) would broadcast over the 4 channels
    with pytest.raises(ValueError, match=rf"{name} must be \(4,\), got \(1,\)"):
        selective_scan(*(inputs[n] for n in NAMES), impl=impl)
