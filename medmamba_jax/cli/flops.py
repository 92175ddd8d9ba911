r"""Parameters and FLOPs of MedMamba variants beside the paper's Table 1, or of the Table 7 blocks.

    python -m medmamba_jax.flops --model medmamba_t --image-size 224 [--num-classes 1000]
    python -m medmamba_jax.flops --all
    python -m medmamba_jax.flops --ablation          # Table 7's four blocks, at 9 classes
    python -m medmamba_jax.flops --all --no-xla      # seconds: MAC counts only, nothing compiled

No weights are needed: the model is built abstractly (shapes only) and traced. Per model:

* hooks GMACs: multiply-accumulates of convolutions and nn.Linear-style matrix products only,
  as a counter that hooks nn.Conv2d and nn.Linear modules (thop) reports them for the released
  PyTorch code, where SS2D's x_proj and dt_proj are torch.einsum calls and the selective scan a
  CUDA function, neither of which such a counter sees. This is the convention that reproduces
  the paper's FLOPs (Table 1's MedMamba-T, and every row of Table 7);
* fvcore+scan GMACs: the same plus those einsums and VMamba's selective-scan cost
  (9 L D N + L D per scan), as VMamba counts its own models with fvcore;
* XLA GFLOPs: every operation of the compiled forward, a multiply-add counted as 2 FLOPs,
  each selective-scan loop body counted once per iteration (see medmamba_jax.analysis.flop_count);
* the paper's values, and how far the hooks count is from them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from medmamba_jax import paper
from medmamba_jax.cli import common as cli
from medmamba_jax.models import BLOCK_PARTS, BLOCKS, PRESETS, MedMamba, MedMambaConfig, count_params

TABLE7_CLASSES = 9  # Table 7's parameter counts hold at 8 to 126 classes; PathMNIST has 9

EXPLANATION = """\
How the paper counted (the convention above reproduces it):
* MedMamba-T at 224 and 1000 classes: convolutions 1.399 G MACs + nn.Linear layers 0.608 G
  = 2.006 G, Table 1's 2.0. Module hooks miss SS2D's einsum projections (0.236 G) and the
  selective scan (VMamba's rule: 0.742 G), which fvcore with VMamba's scan handle adds (2.985 G).
* Table 1's S and B (23.5M, 3.5 G; 48.1M, 7.4 G) are not the released S (2,2,8,2) and B
  (2,2,12,2 at dims 128): depths (2,2,12,2) at dims 96 give 23,557,480 parameters and 3.457 G,
  depths (2,2,16,2) at dims 128 give 48,144,872 and 7.420 G, so the paper's S and B seem to
  have had 4 more stage-3 blocks than the released code (try --depths 2 2 12 2 --model medmamba_s).
* Table 7's rows (--ablation), at 9 classes: SSM + Conv without split 51.6M and 7.436 G (7.4),
  split with or without shuffle 14.5M and 2.006 G (2.0), SSM only 16.2M and 1.945 G, which
  the paper prints as 2.0 (2.8% more).
* XLA GFLOPs count a multiply-add as 2 and include elementwise work (norms, the scan's
  updates) but not exp, log or the logistic, which XLA counts apart; the associative scan does
  more arithmetic than a sequential one. They are a cost of this implementation, not the paper's.
* Parameters: the released code gives 15,221,608 / 19,389,544 / 40,883,688 for T / S / B at
  1000 classes, which this implementation matches."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.flops", __doc__)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", choices=sorted(PRESETS), default="medmamba_t", help="variant (default: medmamba_t)")
    which.add_argument("--all", action="store_true", help="all three variants, beside Table 1")
    which.add_argument("--ablation", action="store_true", help="MedMamba-T with each Table 7 block, beside Table 7")
    parser.add_argument("--block", choices=BLOCKS, default="full", help="the block (default: full, the released one)")
    parser.add_argument("--image-size", type=int, default=224, help="input side in pixels (default: 224)")
    parser.add_argument("--num-classes", type=cli.int_at_least(0),
                        help=f"head size (default: 1000 as Table 1; {TABLE7_CLASSES} with --ablation)")
    parser.add_argument("--depths", type=int, nargs="+", help="override the variant's depths (e.g. a tiny test model)")
    parser.add_argument("--dims", type=int, nargs="+", help="override the variant's dims")
    parser.add_argument("--scan-impl", choices=("associative", "reference"), default="associative",
                        help="selective-scan implementation to cost (default: associative)")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA count (no compilation: seconds, not minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per model instead of a table")
    args = parser.parse_args(argv)
    if args.num_classes is None:
        args.num_classes = TABLE7_CLASSES if args.ablation else 1000
    return args


def paper_values(name: str, block: str, args: argparse.Namespace, custom: bool) -> tuple[float | None, float | None]:
    """(params in M, GFLOPs) the paper gives for this model, or Nones where it gives none:
    Table 7 for --ablation (MedMamba-T), else Table 1 (1000 classes, the full block)."""
    if custom or args.image_size != 224:
        return None, None
    if args.ablation:
        parts = tuple(str(p) for p in BLOCK_PARTS[block])
        row = next(r for r in paper.table("table7_ablation")
                   if (r["ssm"], r["conv"], r["split"], r["shuffle"]) == parts)
        return float(row["params_M"]), float(row["flops_G"])
    if block != "full" or args.num_classes != 1000:
        return None, None
    row = next(r for r in paper.table("table1_variants") if r["model"] == name)
    return float(row["params_M"]), float(row["flops_G"])


def measure(name: str, block: str, args: argparse.Namespace) -> dict[str, Any]:
    """Parameters, MACs by convention and (unless --no-xla) XLA FLOPs of one model at ``args.image_size``."""
    from medmamba_jax.analysis import flop_count

    overrides = {k: tuple(v) for k, v in (("depths", args.depths), ("dims", args.dims)) if v}
    try:
        config = MedMambaConfig.preset(name, num_classes=args.num_classes, scan_impl=args.scan_impl, block=block,
                                       **overrides)
    except ValueError as err:  # a bad --depths/--dims/--num-classes: the config names it
        raise cli.ToolError(str(err)) from None
    model = MedMamba.abstract(config)  # weights as shapes only: costs need no values
    model.eval()
    if args.image_size < model.config.min_image_size:
        raise cli.ToolError(f"--image-size must be at least {model.config.min_image_size} for this model "
                            f"(patch size {model.config.patch_size}, {len(model.config.dims) - 1} merges), "
                            f"got {args.image_size}")
    costs = flop_count.forward_costs(model, args.image_size, xla=not args.no_xla)
    hooks = (costs["conv"] + costs["linear"]) / 1e9
    paper_params, paper_gflops = paper_values(name, block, args, bool(overrides))
    return {
        "model": name + (" (custom)" if overrides else ""), "block": block, "image_size": args.image_size,
        "num_classes": args.num_classes, "params": count_params(model),
        "hooks_gmacs": hooks, "fvcore_scan_gmacs": hooks + (costs["batched"] + costs["scan"]) / 1e9,
        "conv_gmacs": costs["conv"] / 1e9, "linear_gmacs": costs["linear"] / 1e9,
        "einsum_gmacs": costs["batched"] / 1e9, "scan_gmacs": costs["scan"] / 1e9,
        "xla_gflops": costs["xla_flops"] / 1e9 if "xla_flops" in costs else None,
        "xla_gflops_loop_bodies_once": costs["xla_flops_raw"] / 1e9 if "xla_flops_raw" in costs else None,
        "paper_params_m": paper_params, "paper_gflops": paper_gflops,
        "hooks_vs_paper_percent": 100 * (hooks / paper_gflops - 1) if paper_gflops else None,
    }


def _cell(value: float | None, width: int, spec: str) -> str:
    return (format(value, spec) if value is not None else "-").rjust(width)


def format_row(row: dict[str, Any]) -> str:
    return (f"{row['model']:<19} {row['block']:<16} {row['image_size']:>5} {row['params']:>12,} "
            f"{row['hooks_gmacs']:>8.3f} {row['fvcore_scan_gmacs']:>9.3f} {_cell(row['xla_gflops'], 9, '.3f')} "
            f"{_cell(row['paper_params_m'], 7, '.1f')} {_cell(row['paper_gflops'], 6, '.1f')} "
            f"{_cell(row['hooks_vs_paper_percent'], 7, '+.1f')}")


HEADER = (f"{'model':<19} {'block':<16} {'image':>5} {'params':>12} {'hooks':>8} {'fvcore':>9} {'XLA':>9} "
          f"{'paper':>7} {'paper':>6} {'hooks':>7}\n"
          f"{'':<19} {'':<16} {'':>5} {'':>12} {'GMACs':>8} {'+scan':>9} {'GFLOP':>9} "
          f"{'params':>7} {'GFLOPs':>6} {'vs %':>7}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ablation:
        jobs = [("medmamba_t", block) for block in BLOCKS]
    else:
        jobs = [(name, args.block) for name in (PRESETS if args.all else [args.model])]
    if not args.json:
        print(HEADER, flush=True)
    for name, block in jobs:  # a row as soon as it is counted: a model at 224 compiles for a minute
        row = measure(name, block, args)
        print(json.dumps(row) if args.json else format_row(row), flush=True)
    if not args.json:
        source = "Table 7 (MedMamba-T ablation)" if args.ablation else "Table 1"
        print(f"paper values: {source} of arXiv 2403.03849, at 224x224 and "
              f"{TABLE7_CLASSES if args.ablation else 1000} classes; '-' where the paper has no such model")
        print(EXPLANATION)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
