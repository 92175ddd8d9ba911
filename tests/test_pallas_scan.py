"""Tests of the Pallas selective scan (issue 4).

Structured like JAX's own Pallas op tests: ``PallasScanTest`` runs the compiled kernel
and needs a GPU; ``PallasScanInterpretTest`` re-runs every test with
``interpret=True`` passed to the kernels, so the CPU CI checks the same kernel code.
``TritonLoweringTest`` lowers the kernels for a CUDA target on any host, so the CPU CI
also catches operations that the interpreter runs but the Triton lowering rejects.
Plain ``unittest`` classes, so they also run without pytest:
``python -m unittest tests.test_pallas_scan``.
"""

from __future__ import annotations

import functools
import itertools
import unittest

import jax
import jax.numpy as jnp
import numpy as np

from medmamba_jax.ops import cross_selective_scan, selective_scan
from medmamba_jax.ops import pallas_scan
from medmamba_jax.ops.pallas_scan import ScanConfig, cross_selective_scan_pallas, selective_scan_pallas
from medmamba_jax.ops.selective_scan import selective_scan_reference
from medmamba_jax.ops.triton_lowering import lower_to_triton
from helpers import DATA, NAMES, as_float32, fresh_rng, random_inputs, rel_err, value_and_grads

# Small unrolled segments keep interpret-mode compile times short; the defaults are tested too.
SMALL = ScanConfig(tile=8, seg=2, ckpt_segs=2)
# Lowered for CUDA on any host, so never interpreted.
COMPILED_CROSS_SCAN = functools.partial(cross_selective_scan_pallas, interpret=False)


def cross_layout(u, delta, dim: int) -> tuple[jax.Array, jax.Array]:
    """Mamba-layout u, delta (b, 4*dim, L) as the cross scan's u2 (b, 2, L, dim), the first two
    directions' sequences, and delta (b, 4, L, dim)."""
    batch, _, length = u.shape
    minor = lambda x: jnp.swapaxes(x.reshape(batch, 4, dim, length), 2, 3)  # noqa: E731
    return minor(u)[:, :2], minor(delta)


def pallas_outputs(jaxpr) -> list[int]:
    """The number of outputs of each pallas_call in a jaxpr, nested ones included, in order."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            found.append(len(eqn.outvars))
            continue
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)  # a ClosedJaxpr holds its Jaxpr
            if hasattr(inner, "eqns"):
                found += pallas_outputs(inner)
    return found


class PallasScanTest(unittest.TestCase):
    INTERPRET = False

    def setUp(self):
        if not self.INTERPRET and jax.default_backend() != "gpu":
            self.skipTest("the compiled Triton kernel needs a GPU; the interpret-mode class covers CPU")
        self.rng = fresh_rng()  # fresh inputs every run; the seed is printed

    def scan(self, *args, **kwargs) -> jax.Array:
        """``selective_scan_pallas``, compiled or interpreted as this class says."""
        return selective_scan_pallas(*args, interpret=self.INTERPRET, **kwargs)

    def cross_scan(self, *args, **kwargs) -> jax.Array:
        """``cross_selective_scan_pallas``, compiled or interpreted as this class says."""
        return cross_selective_scan_pallas(*args, interpret=self.INTERPRET, **kwargs)

    def assert_close(self, got, want, tol, what=""):
        self.assertTrue(np.all(np.isfinite(np.asarray(got, np.float32))), f"non-finite values in {what}")
        self.assertLessEqual(rel_err(got, want), tol, what)

    def test_golden_forward_and_grads(self):
        z = np.load(DATA / "selective_scan.npz")  # the small golden case, copied from ../shared/parity
        args = as_float32(z)
        fn = lambda *a: selective_scan(*a, delta_softplus=True, impl="pallas", interpret=self.INTERPRET)  # noqa: E731
        y, grads = value_and_grads(fn, args, jnp.asarray(z["dy"], jnp.float32))
        self.assert_close(y, z["y"], 1e-5, "y")
        for name in NAMES:
            self.assert_close(grads[name], z[f"grad_{name}"], 1e-5, f"grad {name}")

    def check_against_reference(self, args, config, softplus, tol=1e-5, grad_tol=1e-5, low_grad_tol=1e-2):
        """Grads of bf16/fp16 args are rounded to that dtype, so they get ``low_grad_tol``."""
        batch, kd, length = args[0].shape
        dy = jnp.asarray(self.rng.standard_normal((batch, kd, length)), jnp.float32)
        got = value_and_grads(lambda *a: self.scan(*a, delta_softplus=softplus, config=config), args, dy)
        want = value_and_grads(lambda *a: selective_scan_reference(*a, delta_softplus=softplus), args, dy)
        self.assertEqual(got[0].dtype, jnp.float32)
        self.assert_close(got[0], want[0], tol, "y")
        for name, g in got[1].items():
            self.assertEqual(g.dtype, want[1][name].dtype, name)
            self.assert_close(g, want[1][name], grad_tol if g.dtype == jnp.float32 else low_grad_tol, f"grad {name}")

    def test_ragged_length_n1_no_skip(self):
        # L = 19 is not a multiple of the 8-step chunk; D = 12 is not a multiple of the tile 8.
        args = random_inputs(self.rng, 1, 2, 12, 1, 19, extras=False)
        args[1] = jnp.abs(args[1]) * 0.3  # without softplus, dt must stay positive to be stable
        self.check_against_reference(args, SMALL, softplus=False)

    def test_n4_one_group_one_segment_per_chunk(self):
        args = random_inputs(self.rng, 2, 1, 16, 4, 37)
        config = ScanConfig(tile=16, seg=2, ckpt_segs=1, bc_rows=1, prefetch=1)
        self.check_against_reference(args, config, softplus=True)

    def test_multi_segment_chunks_and_narrower_backward_tile(self):
        # L = 29: three chunks of 3 segments of 3 steps, then a 2-step tail.
        args = random_inputs(self.rng, 1, 4, 4, 16, 29)
        # B and C read per state (N, L) or per position (L, N); loads in the segment, or a
        # segment ahead across the chunk boundaries.
        for bc_rows, prefetch in ((0, 0), (1, 1)):
            config = ScanConfig(tile=4, seg=3, ckpt_segs=3, bwd_tile=2, bc_rows=bc_rows, prefetch=prefetch)
            self.check_against_reference(args, config, softplus=True)

    def test_bf16_inputs(self):
        args = random_inputs(self.rng, 1, 2, 8, 16, 21, dtype=jnp.bfloat16)
        # y and the fp32 parameters' grads are fp32 sums; bf16 grads are rounded to bf16.
        self.check_against_reference(args, SMALL, softplus=True)

    def test_a_forward_alone_writes_no_chunk_states(self):
        args = random_inputs(self.rng, 1, 2, 8, 4, 13)
        fn = lambda *a: self.scan(*a, delta_softplus=True, config=SMALL)  # noqa: E731
        grad = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))
        # Outputs of each kernel launch: the forward alone writes y; under grad, y and hs, then 7 grads.
        self.assertEqual(pallas_outputs(jax.make_jaxpr(fn)(*args).jaxpr), [1])
        self.assertEqual(pallas_outputs(jax.make_jaxpr(grad)(*args).jaxpr), [2, 7])
        np.testing.assert_array_equal(fn(*args), jax.vjp(fn, *args)[0])

    def test_tile_divides_the_channel_axis(self):
        # Channels are the last axis: L = 49 (odd) must not shrink the tile, and a
        # 96-channel group takes 32-wide tiles even when 64 are allowed.
        u = jnp.zeros((1, 2, 49, 96))
        delta, A = jnp.zeros((1, 4, 49, 96)), jnp.zeros((4, 16, 96))
        plan = pallas_scan._Plan(u, delta, A, ScanConfig(tile=64), rev_from=2, softplus=True)
        self.assertEqual((plan.tile, plan.n_tiles, plan.length), (32, 3, 49))

    def test_no_nan_on_extreme_inputs(self):
        # L = 3 is shorter than a segment: only the one-step tail path runs.
        u, delta, A, B, C, D, bias = random_inputs(self.rng, 1, 2, 8, 4, 3)
        # Huge and tiny dt (softplus overflow / underflow paths), decays of exactly 0 and 1.
        delta = delta * 60.0
        A = A.at[0].set(-1e4).at[1].set(0.0)
        args = [u * 50, delta, A, B, C, D, bias]
        dy = jnp.ones(u.shape, jnp.float32)
        y, grads = value_and_grads(lambda *a: self.scan(*a, delta_softplus=True, config=SMALL), args, dy)
        for name, value in [("y", y), *grads.items()]:
            self.assertTrue(np.all(np.isfinite(np.asarray(value))), f"non-finite {name}")

    def test_cross_scan_matches_generic_path(self):
        batch, dim, n, length = 2, 12, 4, 23
        u, delta, A, B, C, D, bias = random_inputs(self.rng, batch, 4, dim, n, length)
        args = [*cross_layout(u, delta, dim), A, B, C, D, bias]
        dy = jnp.asarray(self.rng.standard_normal((batch, 4, length, dim)), jnp.float32)
        got = value_and_grads(lambda *a: self.cross_scan(*a, config=SMALL), args, dy)
        want = value_and_grads(lambda *a: cross_selective_scan(*a, impl="reference"), args, dy)
        self.assert_close(got[0], want[0], 1e-5, "y")
        for name, g in got[1].items():
            self.assert_close(g, want[1][name], 1e-5, f"grad {name}")

    def test_cross_scan_without_skip_and_bias(self):
        batch, dim, n, length = 1, 8, 4, 9
        u, delta, A, B, C, _, _ = random_inputs(self.rng, batch, 4, dim, n, length, extras=False)
        args = (*cross_layout(u, delta, dim), A, B, C, None, None)
        want = cross_selective_scan(*args, impl="reference")
        self.assert_close(self.cross_scan(*args, config=SMALL), want, 1e-5, "y")

    def test_medmamba_forward_matches_associative(self):
        from flax import nnx

        from medmamba_jax.models import MedMamba, MedMambaConfig

        x = jnp.asarray(self.rng.standard_normal((2, 32, 32, 3)), jnp.float32)
        logits = {}
        for impl in ("pallas", "associative"):
            # SMALL: shorter interpret compiles; the model passes it, and the mode, to every scan.
            config = MedMambaConfig((1, 1, 1, 1), (8, 16, 32, 64), num_classes=3, scan_impl=impl, scan_config=SMALL,
                                    scan_interpret=self.INTERPRET)
            model = MedMamba(config, rngs=nnx.Rngs(0))
            model.eval()
            logits[impl] = nnx.jit(lambda m, x: m(x))(model, x)
        self.assert_close(logits["pallas"], logits["associative"], 1e-5, "logits")


class PallasScanInterpretTest(PallasScanTest):
    INTERPRET = True


class ScanInputChecksTest(unittest.TestCase):
    """Inputs and settings that must give a clear error or the reference's answer, not a crash."""

    def test_bad_config_values_are_named(self):
        for text, named in (("ckpt=0", "ckpt_segs=0"), ("warps=3", "num_warps=3"), ("bwd_warps=0", "bwd_warps=0"),
                            ("seg=0", "seg=0"), ("prefetch=2", "prefetch=2"), ("bc_rows=7", "bc_rows=7")):
            with self.assertRaisesRegex(ValueError, f"bad ScanConfig: {named} "):
                ScanConfig.parse(text)

    def test_cross_scan_needs_one_b_and_c_per_direction(self):
        rng = fresh_rng()
        batch, dim, n, length = 1, 4, 2, 5
        for groups in (1, 2):
            u, delta, A, B, C, D, bias = random_inputs(rng, batch, 4, dim, n, length)
            for impl in ("reference", "associative", "pallas"):
                with self.assertRaisesRegex(ValueError, "one group per direction"):
                    cross_selective_scan(*cross_layout(u, delta, dim), A, B[:, :groups], C[:, :groups], D, bias,
                                         impl=impl)

    def test_empty_sequences_give_empty_outputs(self):
        args = random_inputs(fresh_rng(), 2, 2, 4, 3, 0)
        y = selective_scan_pallas(*args, delta_softplus=True)
        self.assertEqual((y.shape, y.dtype), ((2, 8, 0), jnp.float32))
        grads = jax.grad(lambda u: jnp.sum(selective_scan_pallas(u, *args[1:])))(args[0])
        self.assertEqual(grads.shape, args[0].shape)

    def test_softplus_derivative_is_finite_at_infinite_delta(self):
        from medmamba_jax.ops.pallas_kernels import _dt

        x = jnp.array([-jnp.inf, -80.0, -3.0, 0.0, 3.0, 80.0, jnp.inf])
        dt, slope = _dt(x, jnp.zeros_like(x), softplus=True)
        np.testing.assert_allclose(dt, jax.nn.softplus(x), rtol=1e-6)
        np.testing.assert_allclose(slope, jax.nn.sigmoid(x), rtol=1e-6)


class TritonLoweringTest(unittest.TestCase):
    """Runs on every host, GPU or not."""

    def kernels(self, fn, args) -> dict[str, int]:
        """{kernel name: num_warps} of the lowered gradient program of sum(fn(*args))."""
        loss = lambda *a: jnp.sum(fn(*a))  # noqa: E731
        launches = lower_to_triton(jax.grad(loss, argnums=tuple(range(len(args)))), *args)
        return {k.name: k.num_warps for k in launches}

    def test_cross_scan_and_its_adjoint_lower_at_medmamba_t_shapes(self):
        config = ScanConfig()
        expected = {"forward_kernel": config.warps(False), "backward_kernel": config.warps(True)}
        for length, dim in ((3136, 96), (49, 768)):  # MedMamba-T's first and last stage
            for dtype in (jnp.float32, jnp.bfloat16):
                seq = lambda groups: jnp.zeros((1, groups, length, dim), dtype)  # noqa: E731
                bc = jnp.zeros((1, 4, 16, length), dtype)
                params = jnp.zeros((4 * dim,), jnp.float32)
                args = (seq(2), seq(4), -jnp.ones((4 * dim, 16)), bc, bc, params, params)
                self.assertEqual(self.kernels(COMPILED_CROSS_SCAN, args), expected, (length, dim, dtype))

    def test_candidate_configs_lower_at_medmamba_t_shapes(self):
        candidates = [ScanConfig(seg=2, ckpt_segs=4, bwd_warps=1, bc_rows=1, prefetch=prefetch) for prefetch in (0, 1)]
        for config, (length, dim) in itertools.product(candidates, ((3136, 96), (49, 768))):
            seq = lambda groups: jnp.zeros((1, groups, length, dim))  # noqa: E731
            bc, params = jnp.zeros((1, 4, 16, length)), jnp.zeros((4 * dim,))
            args = (seq(2), seq(4), -jnp.ones((4 * dim, 16)), bc, bc, params, params)
            fn = functools.partial(COMPILED_CROSS_SCAN, config=config)
            self.assertEqual(self.kernels(fn, args), {"forward_kernel": 1, "backward_kernel": 1}, (config, length))

    def test_mamba_layout_scan_lowers_with_ragged_shapes(self):
        # 3 groups of 20 channels, N = 5 and L = 37: every axis needs padding or a tail.
        args = random_inputs(fresh_rng(), 1, 3, 20, 5, 37)
        fn = lambda *a: selective_scan_pallas(*a, delta_softplus=True, interpret=False)  # noqa: E731
        self.assertEqual(set(self.kernels(fn, args)), {"forward_kernel", "backward_kernel"})

    def test_triton_ir_is_captured_per_kernel(self):
        args = random_inputs(fresh_rng(), 1, 1, 8, 4, 6)
        fn = lambda *a: selective_scan_pallas(*a, config=SMALL, interpret=False)  # noqa: E731
        (launch,) = lower_to_triton(fn, *args, with_ir=True)
        self.assertEqual((launch.name, launch.grid), ("forward_kernel", (1, 1, 1)))
        self.assertTrue(launch.ir.startswith("module @forward_kernel"), launch.ir[:80])
        self.assertIn("tt.func", launch.ir)


if __name__ == "__main__":
    unittest.main()
