"""The numba CPU selective scan (issue 23) against the float64 golden, the plain-JAX
reference and, in a tiny whole model, the associative scan."""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("numba", reason="impl='cpu' needs numba (requirements.txt)")

from medmamba_jax.models import MedMamba, MedMambaConfig  # noqa: E402
from medmamba_jax.ops import cross_selective_scan, resolve_impl, selective_scan  # noqa: E402
from medmamba_jax.ops.cpu_scan import cross_selective_scan_cpu, selective_scan_cpu  # noqa: E402
from helpers import DATA, NAMES, as_float32, fresh_rng, random_inputs, rel_err, value_and_grads  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_matches(got, want, tol=1e-5):
    """got, want: (y, {name: grad}) from value_and_grads; every value finite and within tol."""
    pairs = [("y", got[0], want[0])] + [(name, g, want[1][name]) for name, g in got[1].items()]
    for name, actual, expected in pairs:
        assert actual.dtype == expected.dtype, name
        assert np.all(np.isfinite(np.asarray(actual, np.float32))), name
        assert rel_err(actual, expected) <= tol, name


def test_auto_picks_the_cpu_kernel_on_a_cpu():
    assert jax.default_backend() != "cpu" or resolve_impl("auto") == "cpu"


def test_golden_forward_and_seven_grads():
    golden = np.load(DATA / "selective_scan.npz")
    fn = lambda *a: selective_scan(*a, delta_softplus=True, impl="cpu")  # noqa: E731
    y, grads = value_and_grads(fn, as_float32(golden), golden["dy"])
    assert rel_err(y, golden["y"]) <= 1e-5
    for name in NAMES:
        assert rel_err(grads[name], golden[f"grad_{name}"]) <= 1e-5, name


@pytest.mark.parametrize(
    "length,n_state,chunk,tile,softplus,extras",
    [(37, 1, 8, 4, False, False), (19, 4, 5, 8, True, True), (50, 16, 32, 32, True, True)],
)
def test_matches_reference_on_ragged_shapes(length, n_state, chunk, tile, softplus, extras):
    # D = 6 channels per group: not a multiple of tile 4 or 8; L not a multiple of chunk.
    rng = fresh_rng()
    args = random_inputs(rng, 2, 3, 6, n_state, length, extras=extras)
    if not softplus:  # without softplus, dt must stay positive to be stable
        args[1] = jnp.abs(args[1]) * 0.3
    dy = rng.standard_normal((2, 18, length))
    cpu = lambda *a: selective_scan_cpu(*a, delta_softplus=softplus, chunk=chunk, tile=tile)  # noqa: E731
    ref = lambda *a: selective_scan(*a, delta_softplus=softplus, impl="reference")  # noqa: E731
    assert_matches(value_and_grads(cpu, args, dy), value_and_grads(ref, args, dy))


def cross_inputs(rng, batch, dim, n_state, length):
    """Cross-scan arguments: u2 (b, 2, L, dim), delta (b, 4, L, dim), A, B, C, D, bias."""
    u, delta, A, B, C, D, bias = random_inputs(rng, batch, 4, dim, n_state, length)
    minor = lambda x: jnp.swapaxes(x.reshape(batch, 4, dim, length), 2, 3)  # noqa: E731
    return [minor(u)[:, :2], minor(delta), A, B, C, D, bias]


@pytest.mark.parametrize("n_state", [1, 4, 16])
def test_cross_scan_matches_reference(n_state):
    rng = fresh_rng()
    args = cross_inputs(rng, 2, 5, n_state, 23)
    dy = rng.standard_normal(args[1].shape)
    cpu = lambda *a: cross_selective_scan_cpu(*a, chunk=4, tile=4)  # noqa: E731
    ref = lambda *a: cross_selective_scan(*a, impl="reference")  # noqa: E731
    assert_matches(value_and_grads(cpu, args, dy), value_and_grads(ref, args, dy))


def test_bf16_inputs():
    rng = fresh_rng()
    args = [a if i in (2, 5, 6) else a.astype(jnp.bfloat16) for i, a in enumerate(random_inputs(rng, 1, 2, 8, 4, 20))]
    dy = rng.standard_normal((1, 16, 20))
    got = value_and_grads(lambda *a: selective_scan(*a, delta_softplus=True, impl="cpu"), args, dy)
    want = value_and_grads(lambda *a: selective_scan(*a, delta_softplus=True, impl="reference"), args, dy)
    assert got[0].dtype == jnp.float32
    assert rel_err(got[0], want[0]) <= 1e-5
    for name, grad in got[1].items():  # bf16 grads are rounded to bf16: compare at its precision
        assert grad.dtype == want[1][name].dtype, name
        assert rel_err(grad, want[1][name]) <= (1e-5 if grad.dtype == jnp.float32 else 1e-2), name


@pytest.mark.parametrize("scale", [0.0, 1e4, -1e4, 1e30])
def test_no_nan_for_extreme_delta(scale):
    rng = np.random.default_rng(0)
    args = cross_inputs(rng, 1, 4, 4, 12)
    args[1] = jnp.full_like(args[1], scale)
    y, grads = value_and_grads(cross_selective_scan_cpu, args, np.ones(args[1].shape))
    for name, value in [("y", y), *grads.items()]:
        assert np.all(np.isfinite(np.asarray(value))), name


def test_vmap_matches_a_loop():
    rng = fresh_rng()
    stacked = [jnp.stack([a, a * 0.5]) for a in random_inputs(rng, 1, 2, 4, 4, 9)]
    scan = lambda *a: selective_scan_cpu(*a, delta_softplus=True)  # noqa: E731
    mapped = jax.jit(jax.vmap(jax.grad(lambda *a: scan(*a).sum(), argnums=(0, 2))))(*stacked)
    for i in range(2):
        looped = jax.grad(lambda *a: scan(*a).sum(), argnums=(0, 2))(*(a[i] for a in stacked))
        for got, want in zip(mapped, looped):
            assert rel_err(got[i], want) <= 1e-6


def test_concurrent_calls_from_two_threads_agree():
    # XLA runs independent custom calls, and the devices of a data-parallel step, from
    # several threads at once: numba's parallel launches must survive that.
    args = cross_inputs(np.random.default_rng(0), 2, 8, 4, 40)
    scan = jax.jit(jax.grad(lambda *a: cross_selective_scan_cpu(*a, chunk=8, tile=4).sum(), argnums=1))
    want = np.asarray(scan(*args))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: [np.asarray(scan(*args)) for _ in range(10)], range(2)))
    for got in (g for per_thread in results for g in per_thread):
        np.testing.assert_array_equal(got, want)


def test_backward_saves_chunk_states_not_every_state():
    batch, dim, n_state, length = 1, 32, 16, 512
    args = cross_inputs(np.random.default_rng(0), batch, dim, n_state, length)
    _, vjp = jax.vjp(lambda *a: cross_selective_scan_cpu(*a, chunk=32), *args)
    saved = [leaf.size for leaf in jax.tree.leaves(vjp)]
    every_state = batch * 4 * dim * length * n_state
    # Inputs, dt and their softplus residuals: a few (b, 4, L, dim) arrays, each 1/N of it.
    assert max(saved) <= every_state / n_state and sum(saved) < every_state / 2


def tiny_model(impl: str) -> MedMamba:
    config = MedMambaConfig(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=3, scan_impl=impl)
    return MedMamba(config, rngs=nnx.Rngs(0))


def test_whole_model_forward_and_grads_match_associative():
    x = jnp.asarray(fresh_rng().standard_normal((1, 32, 32, 3)), jnp.float32)

    def logits_and_grads(impl):
        model = tiny_model(impl)
        model.eval()  # BatchNorm reads its running statistics instead of updating them
        graph, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            logits = nnx.merge(graph, p, rest)(x)
            return jnp.sum(logits**2), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return logits, grads

    logits, grads = logits_and_grads("cpu")
    want_logits, want_grads = logits_and_grads("associative")
    assert rel_err(logits, want_logits) <= 1e-5
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        if np.any(want):
            assert rel_err(got, want) <= 1e-4
        else:  # a parameter the loss does not reach in eval mode
            assert not np.any(got)


def test_data_parallel_jit_over_two_devices():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from medmamba_jax.ops import cross_selective_scan
        rng = np.random.default_rng(0)
        b, L, d, n = 4, 10, 3, 4
        args = [rng.standard_normal(s).astype(np.float32) for s in
                [(b, 2, L, d), (b, 4, L, d), (4 * d, n), (b, 4, n, L), (b, 4, n, L), (4 * d,), (4 * d,)]]
        args[2] = -np.exp(args[2])
        mesh = Mesh(np.asarray(jax.devices()), ("data",))
        data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        shardings = [data, data, repl, data, data, repl, repl]
        loss = lambda *a: cross_selective_scan(*a, impl="cpu").sum()
        step = jax.jit(jax.value_and_grad(loss, argnums=(1, 2)), in_shardings=shardings)
        (value, grads) = step(*[jax.device_put(a, s) for a, s in zip(args, shardings)])
        want, want_grads = jax.value_and_grad(lambda *a: cross_selective_scan(*a, impl="reference").sum(),
                                              argnums=(1, 2))(*args)
        assert jax.device_count() == 2
        for got, ref in [(value, want), *zip(grads, want_grads)]:
            err = np.linalg.norm(np.asarray(got) - np.asarray(ref)) / np.linalg.norm(np.asarray(ref))
            assert err <= 1e-5, err
        print("ok")
        """
    )
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env = {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
