r"""Run one of the paper's tables as the paper ran it, and write our results beside the paper's.

    python -m medmamba_jax.reproduce table6 --model medmamba_t --workdir runs/table6 [--set download=True]
    python -m medmamba_jax.reproduce table7 --dataset pathmnist --workdir runs/table7
    python -m medmamba_jax.reproduce table6 --model medmamba_t --workdir runs/table6 --plan

table6 trains the model with the paper's MedMNIST recipe on each of the 10 data sets of
Table 6 (medmamba_x: MedMamba-T with the MedMamba-X recipe); table7 trains MedMamba-T's four
ablation blocks of Table 7 (config key ``block``) on one data set. Each run is an ordinary
train.py workdir, WORKDIR/<dataset> or WORKDIR/<block>, trained in sequence by
``train_and_evaluate``, on every local device (and several hosts with --set distributed=True,
as train.py). Run the same command again to go on: a finished run (it has results.json) is
kept, an unfinished one resumes from its latest checkpoint. WORKDIR/reproduce.json records
the settings; a WORKDIR made with other settings is refused. At the end WORKDIR/table6.md and
table6.csv (or table7.*) hold our test AUC and OA beside every row of the paper's table.

--set KEY=VALUE overrides a recipe key for every run (data_dir, download, batch_size, ...; a
tuple as (1,1,1,1)); --datasets runs only some of Table 6's data sets. --plan prints the
equivalent train.py commands, the MedMNIST files to download with their sizes, and an
estimated time on this machine's devices, and runs nothing.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import shlex
import sys
from typing import Any, Sequence

from medmamba_jax.analysis import reproduce_tables
from medmamba_jax.cli import common as cli
from medmamba_jax.analysis.reproduce_tables import ABLATION_BLOCKS, table6_datasets
from medmamba_jax.data import DataError, medmnist_source
from medmamba_jax.files import write_json
from medmamba_jax.training import preemption
from medmamba_jax.training.errors import ConfigError

# The recipe each --model trains with, and the architecture it trains.
RECIPES = {"medmamba_t": ("medmnist", "medmamba_t"), "medmamba_s": ("medmnist", "medmamba_s"),
           "medmamba_b": ("medmnist", "medmamba_b"), "medmamba_x": ("medmnist_x", "medmamba_t")}
SETTINGS_FILE = "reproduce.json"


@dataclasses.dataclass
class Run:
    """One train.py run of a table: its workdir name under WORKDIR and its config."""

    name: str
    config: Any


@dataclasses.dataclass
class Experiment:
    table: str  # "table6" or "table7"
    model: str  # a RECIPES key
    recipe: str  # module name under medmamba_jax.configs
    runs: list[Run]
    dataset: str = ""  # table7's one data set


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.reproduce", __doc__)
    parser.add_argument("table", choices=("table6", "table7"), help="the paper's table to reproduce")
    parser.add_argument("--workdir", required=True, help="one train.py workdir per run goes under it")
    parser.add_argument("--model", default="medmamba_t", help=f"{', '.join(RECIPES)} (default: medmamba_t)")
    parser.add_argument("--dataset", default="pathmnist", help="table7: the MedMNIST data set (default: pathmnist)")
    parser.add_argument("--datasets", help="table6: only these of its data sets, comma-separated (default: all 10)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a training config key for every run (repeatable)")
    parser.add_argument("--plan", action="store_true", help="print the commands, data and time estimate; run nothing")
    return parser.parse_args(argv)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """{key: value} of KEY=VALUE texts; a value is a Python literal if it parses as one, else text."""
    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise cli.ToolError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = text
    for key in ("dataset", "model", "block"):
        if key in overrides:
            raise cli.ToolError(f"--set {key}=... is chosen by the table; use --model, --dataset or --datasets")
    return overrides


def _recipe_config(recipe: str, model: str | None, overrides: dict[str, Any]):
    """The recipe's config with ``model`` (None: the recipe's own) and ``overrides``."""
    import importlib

    try:
        module = importlib.import_module(f"medmamba_jax.configs.{recipe}")
    except ModuleNotFoundError as err:
        if err.name != f"medmamba_jax.configs.{recipe}":  # the recipe is there and lacks a package
            raise
        raise cli.ToolError(f"this checkout has no {recipe} recipe (medmamba_jax/configs/{recipe}.py)") from None
    config = module.get_config()
    if model:
        config.model = model
    config.lock()  # an unknown --set key is an error, not a new key
    for key, value in overrides.items():
        try:
            config[key] = value
        except (AttributeError, KeyError):
            raise ConfigError(f"--set {key}: not a training config key (see medmamba_jax/training/config.py)") from None
        except TypeError as err:
            raise ConfigError(f"--set {key}={value!r}: {err}") from None
    return config


def _with(config, **values):
    copy = config.copy_and_resolve_references()
    copy.update(values)
    return copy


def experiment(args: argparse.Namespace) -> Experiment:
    """The runs that ``args`` ask for, each config validated; ToolError for a bad name."""
    from medmamba_jax.training import config as config_lib

    if args.model not in RECIPES:
        raise cli.ToolError(f"unknown model {args.model!r}; use one of {', '.join(RECIPES)}")
    recipe, architecture = RECIPES[args.model]
    base = _recipe_config(recipe, architecture, parse_overrides(args.overrides))
    known = table6_datasets()
    if args.table == "table6":
        chosen = known if not args.datasets else [d.strip() for d in args.datasets.split(",") if d.strip()]
        unknown = [d for d in chosen if d not in known]
        if unknown or not chosen:
            raise cli.ToolError(f"unknown Table 6 data set(s) {unknown or args.datasets!r}; use some of "
                                f"{', '.join(known)}")
        runs = [Run(d, _with(base, dataset=d)) for d in chosen]
        dataset = ""
    else:
        if args.datasets:
            raise cli.ToolError("--datasets is for table6; table7 trains on one --dataset")
        try:
            medmnist_source.info(args.dataset)
        except DataError:
            raise cli.ToolError(f"unknown data set {args.dataset!r}; table7 takes a MedMNIST flag, such as "
                                f"{', '.join(known)}") from None
        if "block" not in config_lib.default_config():
            raise cli.ToolError("this checkout has no `block` config key for Table 7's ablation blocks")
        runs = [Run(block, _with(base, dataset=args.dataset, block=block)) for block in ABLATION_BLOCKS.values()]
        dataset = args.dataset
    for run in runs:
        config_lib.validate(run.config)
    return Experiment(args.table, args.model, recipe, runs, dataset)


# Keys that may differ between invocations on one WORKDIR: where data and devices are and how
# progress is shown. Unlike a resumed train.py run, the length of training may not change: a
# finished run would otherwise sit in the table beside runs of another length.
FREE_KEYS = frozenset({"progress_bar", "log_every_steps", "prefetch", "eval_batch_size", "data_dir", "download",
                       "scan_impl", "checkpoint_every_steps", "distributed", "coordinator_address",
                       "num_processes", "process_id"})


def settings(exp: Experiment) -> dict[str, Any]:
    """What WORKDIR/reproduce.json records: the table, model and config of every run."""
    return {"table": exp.table, "model": exp.model, "dataset": exp.dataset,
            "config": {k: v for k, v in exp.runs[0].config.to_dict().items() if k not in ("dataset", "block")}}


def check_settings(workdir: str, exp: Experiment) -> None:
    """Refuses a WORKDIR that holds anything but runs of these settings."""
    import json

    from medmamba_jax.training import config as config_lib

    path = os.path.join(workdir, SETTINGS_FILE)
    if not os.path.exists(path):
        if os.path.isdir(workdir) and os.listdir(workdir):
            raise cli.ToolError(f"{workdir} is not empty and holds no {SETTINGS_FILE}: use a new --workdir")
        return
    with open(path) as f:
        saved = json.load(f)
    now = settings(exp)
    changed = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in ("table", "model", "dataset") if saved.get(k) != now[k]]
    old, new = config_lib.from_dict(saved["config"]), config_lib.from_dict(now["config"])
    changed += [f"{k} {a!r} -> {b!r}" for k, (a, b) in config_lib.run_changes(old, new).items()]
    changed += [f"{k} {old[k]!r} -> {new[k]!r}" for k in config_lib.RESUMABLE_KEYS - FREE_KEYS if old[k] != new[k]]
    if changed:
        raise cli.ToolError(f"{workdir} holds results of other settings ({', '.join(changed)}); "
                            "use the settings in its reproduce.json or a new --workdir")


def train_command(exp: Experiment, run: Run, workdir: str) -> str:
    """The train.py command line of one run: the recipe file and the keys that differ from it."""
    recipe = _recipe_config(exp.recipe, None, {})
    parts = ["python", "train.py", f"--config=configs/{exp.recipe}.py", f"--workdir={os.path.join(workdir, run.name)}"]
    first = ("dataset", "model", "block")  # what the table varies, then the --set keys
    for key in [k for k in first if k in run.config] + sorted(set(run.config.keys()) - set(first)):
        value = run.config[key]
        if key in first[:2] or key not in recipe or _plain(value) != _plain(recipe[key]):
            shown = "(" + ",".join(map(str, value)) + ")" if isinstance(value, tuple) else value
            parts.append(f"--config.{key}={shown}")
    return " ".join(shlex.quote(p) for p in parts)


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _start_hosts(config) -> None:
    """jax.distributed.initialize once for all runs, as train_and_evaluate would for one."""
    import jax

    explicit = int(config.num_processes) > 0
    jax.distributed.initialize(config.coordinator_address or None, int(config.num_processes) if explicit else None,
                               int(config.process_id) if explicit else None)


def run_all(exp: Experiment, workdir: str) -> None:
    """Trains each run not yet finished, in order, then writes the tables (process 0)."""
    import jax

    from medmamba_jax.training import checkpointing
    from medmamba_jax.training.train import train_and_evaluate

    several_hosts = bool(exp.runs[0].config.distributed)
    if several_hosts:  # once: a second jax.distributed.initialize fails
        _start_hosts(exp.runs[0].config)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        write_json(os.path.join(workdir, SETTINGS_FILE), settings(exp))
    for number, run in enumerate(exp.runs, 1):
        run_dir = os.path.join(workdir, run.name)
        if os.path.exists(os.path.join(run_dir, "results.json")):
            print(f"[{number}/{len(exp.runs)}] {run.name}: finished, kept ({run_dir}/results.json)", flush=True)
            continue
        print(f"[{number}/{len(exp.runs)}] {run.name}: training in {run_dir}", flush=True)
        if several_hosts:
            preemption.announce_start(max(checkpointing.steps_on_disk(run_dir, "latest"), default=0))
        train_and_evaluate(_with(run.config, distributed=False), run_dir)
    if jax.process_index() == 0:
        written = reproduce_tables.write(exp, workdir)
        print(f"wrote {', '.join(written)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exp = experiment(args)
    workdir = os.path.abspath(os.path.expanduser(args.workdir))
    if args.plan:
        from medmamba_jax.analysis import reproduce_plan

        print(reproduce_plan.describe(exp, workdir, [train_command(exp, run, workdir) for run in exp.runs]))
        return 0
    check_settings(workdir, exp)
    run_all(exp, workdir)
    return 0


if __name__ == "__main__":
    from medmamba_jax.runtime import prefer_low_memory_cpu_schedule

    prefer_low_memory_cpu_schedule()  # before JAX starts, as train.py
    sys.exit(cli.run(main))
