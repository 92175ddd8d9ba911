"""reproduce: the paper's Table 6 / Table 7 protocol as one command, on two fake data sets with a tiny model."""

from __future__ import annotations

import csv
import json
import os

import pytest

from medmamba_jax import paper
from medmamba_jax.cli import reproduce
from medmamba_jax.cli import common as cli
from medmamba_jax.analysis.reproduce_tables import ABLATION_BLOCKS, table6_datasets
from medmamba_jax.training import config as config_lib

# configs/smoke.py's settings, so the runs compile the programs test_train's smoke runs compile.
TINY = ["depths=(1,1)", "dims=(8,16)", "image_size=32", "batch_size=8", "eval_batch_size=32", "num_epochs=1",
        "lr_milestones=()", "log_every_steps=1", "progress_bar=False"]


def _argv(table, workdir, data_dir, *extra, tiny=TINY):
    sets = [arg for pair in (*tiny, f"data_dir={data_dir}") for arg in ("--set", pair)]
    return [table, "--workdir", str(workdir), *sets, *extra]


def _csv(path):
    with open(path) as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_table6_trains_each_data_set_then_writes_the_table(fake_medmnist_dir, tmp_path, capsys):
    workdir = tmp_path / "table6"
    argv = _argv("table6", workdir, fake_medmnist_dir, "--datasets", "pathmnist,breastmnist")
    assert cli.run(reproduce.main, argv) == 0
    results = {d: json.load(open(workdir / d / "results.json")) for d in ("pathmnist", "breastmnist")}
    for d in results:
        assert json.load(open(workdir / d / "config.json"))["dataset"] == d
    rows = _csv(workdir / "table6.csv")
    ours = rows["ours: MedMamba-T"]
    for d, result in results.items():
        assert float(ours[f"{d}_auc"]) == pytest.approx(result["auc"], abs=5e-5)
        assert float(ours[f"{d}_oa"]) == pytest.approx(result["accuracy"], abs=5e-5)
    assert all(ours[f"{d}_oa"] == "-" for d in table6_datasets() if d not in results)
    mean_oa = (results["pathmnist"]["accuracy"] + results["breastmnist"]["accuracy"]) / 2
    assert float(ours["average_oa"]) == pytest.approx(mean_oa, abs=5e-5)
    paper_t = next(r for r in paper.table("table6_medmnist") if r["method"] == "MedMamba-T")
    assert rows["MedMamba-T"]["pathmnist_auc"] == paper_t["pathmnist_auc"]  # every paper row, unchanged
    assert len(rows) == len(paper.table("table6_medmnist")) + 2
    assert float(rows["MedMamba-T"]["average_oa"]) == pytest.approx(
        (float(paper_t["pathmnist_oa"]) + float(paper_t["breastmnist_oa"])) / 2, abs=5e-4)  # over the same two
    assert float(rows["ours - paper MedMamba-T"]["breastmnist_oa"]) == pytest.approx(
        results["breastmnist"]["accuracy"] - float(paper_t["breastmnist_oa"]), abs=1e-4)
    table = (workdir / "table6.md").read_text()
    assert "| ours: MedMamba-T |" in table and "Average OA over 2 data set(s): pathmnist, breastmnist" in table
    capsys.readouterr()

    # Again: both are finished and kept. With one results.json gone, that run resumes from its
    # last checkpoint (training done) and is only tested again.
    stamp = os.path.getmtime(workdir / "pathmnist" / "results.json")
    os.remove(workdir / "breastmnist" / "results.json")
    assert cli.run(reproduce.main, argv) == 0
    out = capsys.readouterr().out
    assert "[1/2] pathmnist: finished, kept" in out and "resuming from step 6: 1 of 1 epochs trained" in out
    assert os.path.getmtime(workdir / "pathmnist" / "results.json") == stamp
    again = json.load(open(workdir / "breastmnist" / "results.json"))
    assert again["accuracy"] == results["breastmnist"]["accuracy"] and again["auc"] == results["breastmnist"]["auc"]

    # Other settings are refused, not mixed in; so is a workdir that reproduce did not make.
    assert cli.run(reproduce.main, [*argv, "--set", "num_epochs=2"]) == 1
    assert "holds results of other settings (num_epochs 1 -> 2)" in capsys.readouterr().err
    assert cli.run(reproduce.main, [*argv, "--model", "medmamba_s"]) == 1
    assert "model 'medmamba_t' -> 'medmamba_s'" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli.run(reproduce.main, _argv("table6", tmp_path / "other", fake_medmnist_dir)) == 1
    assert "is not empty and holds no reproduce.json" in capsys.readouterr().err


def test_plan_prints_commands_data_and_time_and_runs_nothing(fake_medmnist_dir, tmp_path, capsys):
    workdir = tmp_path / "planned"
    argv = _argv("table6", workdir, fake_medmnist_dir, "--plan", tiny=["num_epochs=3"])
    assert cli.run(reproduce.main, argv) == 0
    out = capsys.readouterr().out
    assert not workdir.exists()
    assert (f"python train.py --config=configs/medmnist.py --workdir={workdir}/dermamnist --config.dataset=dermamnist "
            f"--config.model=medmamba_t --config.data_dir={fake_medmnist_dir} --config.num_epochs=3") in out
    assert out.count("python train.py") == 10
    assert "pathmnist.npz                252.2 MB  present" in out  # 107,180 x 28 x 28 x 3 + labels
    assert "breastmnist.npz                0.6 MB  present" in out and "dermamnist.npz" in out
    assert "to download: 495.2 MB" not in out  # two of the files are there
    assert "estimated time on this machine, from" in out and "(89,996 training images x 3 epochs)" in out
    assert cli.run(reproduce.main, [*argv, "--set", "depths=(1,1,1,1)"]) == 0
    assert "estimated time: no measured figure" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["table6", "--datasets", "pathmnist,chestmnist"], "unknown Table 6 data set(s) ['chestmnist']"),
    (["table6", "--model", "vit"], "unknown model 'vit'; use one of medmamba_t, medmamba_s"),
    (["table7", "--dataset", "cifar10"], "unknown data set 'cifar10'"),
    (["table6", "--set", "learning_rat=0.1"], "--set learning_rat: not a training config key"),
    (["table6", "--set", "num_epochs"], "--set takes KEY=VALUE"),
    (["table6", "--set", "dataset=octmnist"], "chosen by the table"),
])
def test_bad_names_are_one_line_errors(argv, message, tmp_path, capsys):
    assert cli.run(reproduce.main, [*argv, "--workdir", str(tmp_path / "w"), "--plan"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_table7_rows_are_the_papers_ablation_rows():
    rows = {"".join(r[k] for k in ("ssm", "conv", "split", "shuffle")) for r in paper.table("table7_ablation")}
    assert set(ABLATION_BLOCKS) == rows
    assert set(ABLATION_BLOCKS.values()) == {"full", "split_no_shuffle", "no_split", "ssm_only"}


@pytest.mark.skipif("block" not in config_lib.default_config(),
                    reason="the `block` config key (issue 20 part 2, Table 7's ablation blocks) is not in this checkout")
def test_table7_trains_the_four_blocks(fake_medmnist_dir, tmp_path, capsys):
    workdir = tmp_path / "table7"
    assert cli.run(reproduce.main, _argv("table7", workdir, fake_medmnist_dir, "--dataset", "pathmnist")) == 0
    with open(workdir / "table7.csv") as f:
        rows = {row["block"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(ABLATION_BLOCKS.values())
    for block, row in rows.items():
        result = json.load(open(workdir / block / "results.json"))
        assert json.load(open(workdir / block / "config.json"))["block"] == block
        assert float(row["auc"]) == pytest.approx(result["auc"], abs=5e-5)
        assert float(row["oa_percent"]) == pytest.approx(100 * result["accuracy"], abs=0.05)
    assert rows["full"]["paper_oa_percent"] == "95.3" and rows["no_split"]["paper_params_M"] == "51.6"
