"""The FLOP counting conventions, and `flops` beside the paper's Table 1 and Table 7."""

import json

import jax
import jax.numpy as jnp
import pytest

from medmamba_jax.cli import flops
from medmamba_jax.analysis import flop_count
from medmamba_jax.cli.common import run
from medmamba_jax.models import BLOCKS, MedMamba, MedMambaConfig


def test_products_with_batch_dimensions_are_counted_apart():
    """SS2D's per-direction projections (torch.einsum upstream) are "batched"; nn.Linear is "linear"."""
    x, w = jax.ShapeDtypeStruct((2, 4, 10, 8), jnp.float32), jax.ShapeDtypeStruct((4, 3, 8), jnp.float32)
    counted = flop_count.macs(lambda a, b: jnp.einsum("bkld,kcd->bkcl", a, b) @ jnp.ones((10, 5)), x, w)
    assert counted == {"conv": 0.0, "linear": 2 * 4 * 3 * 10 * 5, "batched": 2 * 4 * 10 * 3 * 8}


def test_scan_cost_is_vmambas_9_l_d_n_plus_l_d():
    model = MedMamba.abstract(MedMambaConfig((1, 1), (8, 16), num_classes=3))
    # Stage 1: 8x8 pixels, 4 directions x d_inner 8; stage 2: 4x4, 4 x 16; d_state 16.
    expected = sum(9 * length * d * 16 + length * d for length, d in ((64, 32), (16, 64)))
    assert flop_count.scan_macs(model, 32) == expected == 445_440


def test_medmamba_t_hooks_count_is_table1s_flops(capsys):
    """Conv + nn.Linear MACs, what module hooks see, give Table 1's 2.0 G at 224 and 1000 classes."""
    assert run(flops.main, ["--no-xla", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["paper_params_m"], row["paper_gflops"], round(row["params"] / 1e6, 1)) == (15.2, 2.0, 15.2)
    assert abs(row["hooks_vs_paper_percent"]) < 1 and row["xla_gflops"] is None
    assert row["fvcore_scan_gmacs"] == pytest.approx(row["hooks_gmacs"] + row["einsum_gmacs"] + row["scan_gmacs"])


def test_ablation_prints_a_row_per_block(capsys):
    tiny = ["--depths", "1", "1", "--dims", "8", "16", "--image-size", "32", "--no-xla"]
    assert run(flops.main, ["--ablation", *tiny, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["block"] for row in rows] == list(BLOCKS) and {row["num_classes"] for row in rows} == {9}
    by_block = {row["block"]: row for row in rows}
    assert by_block["full"]["hooks_gmacs"] == by_block["split_no_shuffle"]["hooks_gmacs"]
    assert by_block["no_split"]["hooks_gmacs"] > 2 * by_block["full"]["hooks_gmacs"]  # both branches at full width
    assert run(flops.main, ["--ablation", *tiny]) == 0
    assert "Table 7 (MedMamba-T ablation)" in capsys.readouterr().out
