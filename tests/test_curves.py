"""Training curves: metrics.jsonl read back on an epoch axis, the figure, and the command."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from helpers import assert_png_not_blank

from medmamba_jax.cli import curves as curves_cli
from medmamba_jax.analysis import curves
from medmamba_jax.cli import common as cli
from medmamba_jax.cli.common import ToolError
from medmamba_jax.training import reporting

METRICS = ("accuracy", "auc", "precision", "sensitivity", "specificity", "f1")


def _records(steps_per_epoch: int, epochs: int, log_every: int, aucs, tested_epoch: int | None = None) -> list[dict]:
    """What train.py logs: a train record every log_every micro-steps, then val and epoch
    records at each epoch's end; the rate drops tenfold after the first epoch."""
    records = []
    for e in range(epochs):
        lr = 1e-3 if e == 0 else 1e-4
        end = (e + 1) * steps_per_epoch
        for step in range(e * steps_per_epoch + 1, end + 1):
            if step % log_every == 0:
                records.append({"step": step, "epoch": e, "split": "train", "loss": 1.0 / step, "lr": lr,
                                "images_per_sec": 10.0})
        records.append({"step": end, "epoch": e, "split": "val", **{m: aucs[e] / 2 for m in METRICS},
                        "auc": aucs[e]})
        records.append({"step": end, "epoch": e, "split": "epoch", "loss": 1.0 / (e + 1), "lr": lr, "seconds": 1.0,
                        "images_per_sec": 10.0})
    if tested_epoch is not None:
        records.append({"step": (tested_epoch + 1) * steps_per_epoch, "epoch": tested_epoch, "split": "test",
                        **{m: 0.25 for m in METRICS}})
    return records


def _write(workdir, records, torn_tail: bool = False) -> str:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        if torn_tail:  # a run killed while writing a line
            f.write('{"step": 99, "epoch": 1, "spl')
    return str(workdir)


def test_records_are_placed_on_the_epoch_axis(tmp_path):
    aucs = [0.5, 0.75, math.nan]  # a NaN validation AUC is shown as a gap and never the best
    workdir = _write(tmp_path, _records(6, 3, 4, aucs, tested_epoch=1), torn_tail=True)
    run = curves.read_history(workdir, "run")
    np.testing.assert_allclose(run.train_x, np.array([4, 8, 12, 16]) / 6)  # micro-step / steps per epoch
    np.testing.assert_allclose(run.train_loss, 1.0 / np.array([4, 8, 12, 16]))
    np.testing.assert_array_equal(run.epoch_x, [1, 2, 3])
    np.testing.assert_allclose(run.epoch_loss, [1, 1 / 2, 1 / 3])
    np.testing.assert_array_equal(run.val["auc"], aucs)
    np.testing.assert_array_equal(run.val["f1"], np.array(aucs) / 2)
    assert run.best("auc") == (2.0, 0.75) and run.best("missing") is None
    # Learning rates of train and epoch records, in order: 1e-3 through epoch 1, 1e-4 after.
    np.testing.assert_allclose(run.lr_x, [4 / 6, 1, 8 / 6, 2, 12 / 6, 16 / 6, 3])
    np.testing.assert_allclose(run.lr, [1e-3, 1e-3] + [1e-4] * 5)
    assert run.test == {m: 0.25 for m in METRICS} and run.test_epoch == 2


def test_the_first_highest_value_is_the_best_as_in_training(tmp_path):
    run = curves.read_history(_write(tmp_path, _records(2, 3, 1, [0.5, 0.9, 0.9])))
    assert run.best("auc") == (2.0, 0.9)
    assert curves.read_history(_write(tmp_path, _records(2, 2, 1, [math.nan] * 2))).best("auc") is None


def test_what_cannot_be_plotted_is_one_clear_error(tmp_path):
    with pytest.raises(ToolError, match="is not a train.py workdir"):
        curves.read_history(str(tmp_path / "missing"))
    with pytest.raises(ToolError, match="has not logged anything yet"):
        curves.read_history(str(tmp_path))
    first_epoch = [r for r in _records(6, 1, 2, [0.5]) if r["split"] == "train"]  # killed before validating
    with pytest.raises(ToolError, match="no epoch has been validated yet"):
        curves.read_history(_write(tmp_path, first_epoch))


def test_the_command_compares_runs_on_one_figure(tmp_path, capsys):
    first = _write(tmp_path / "a" / "run", _records(6, 3, 2, [0.5, 0.75, 0.6], tested_epoch=1))
    second = _write(tmp_path / "b" / "run", _records(4, 2, 1, [0.8, 0.7]))
    out = str(tmp_path / "compare.png")
    assert curves_cli.main([first, second, "--out", out, "--metric", "auc"]) == 0
    assert_png_not_blank(out)
    err = capsys.readouterr().err
    # Two runs named "run": each is shown by its whole path.
    assert f"{os.path.normpath(first)}: 3 epochs, best val auc 0.7500 at epoch 2" in err
    assert f"{os.path.normpath(second)}: 2 epochs, best val auc 0.8000 at epoch 1" in err
    # One workdir: the figure goes into it, starring auc when there is no config.json to ask.
    assert curves_cli.main([second]) == 0 and os.path.isfile(os.path.join(second, "curves.png"))


def test_the_starred_metric_defaults_to_the_runs_best_metric(tmp_path, capsys):
    from configs import smoke
    from medmamba_jax.training.checkpointing import write_json

    workdir = _write(tmp_path / "run", _records(2, 1, 1, [0.5]))
    config = smoke.get_config()
    config.best_metric = "f1"
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
    assert curves_cli.main([workdir]) == 0
    assert "run: 1 epoch, best val f1 0.2500 at epoch 1" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["a", "b"], "--out is required with several workdirs"),
    (["a", "--metric", "loss"], "invalid choice: 'loss'"),
])  # fmt: skip
def test_command_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        curves_cli.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_every_metric_can_be_the_starred_one(tmp_path, capsys):
    runs = [_write(tmp_path / name, _records(2, 3, 1, [0.5, 0.7, 0.6])) for name in ("a", "b")]
    for metric in METRICS:
        out = str(tmp_path / f"{metric}.png")
        assert curves_cli.main([*runs, "--out", out, "--metric", metric]) == 0
        assert_png_not_blank(out)


def test_a_figure_that_fails_to_draw_is_closed(tmp_path):
    import matplotlib.pyplot as plt

    run = curves.read_history(_write(tmp_path / "run", _records(2, 2, 1, [0.5, 0.6])))
    broken = run._replace(train_loss=run.train_loss[:-1])  # x and y of different lengths
    with pytest.raises(ValueError):
        curves.draw([broken], "auc", str(tmp_path / "c.png"))
    assert plt.get_fignums() == [] and os.listdir(tmp_path) == ["run"]  # no figure open, no temporary file left


def test_command_errors_are_one_line(tmp_path, capsys):
    workdir = _write(tmp_path / "run", _records(2, 1, 1, [0.5]))
    assert cli.run(curves_cli.main, [workdir, "--out", str(tmp_path)]) == 1
    assert "is a directory; give the name of the PNG file to write" in capsys.readouterr().err
    assert cli.run(curves_cli.main, [workdir, "--out", str(tmp_path / "no" / "such" / "dir" / "c.png")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot write")
    assert cli.run(curves_cli.main, [str(tmp_path / "elsewhere")]) == 1
    assert "is not a train.py workdir" in capsys.readouterr().err


def test_the_reporter_draws_after_epochs_and_a_failure_only_warns(tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path)
    reporter = reporting.Reporter(workdir, best_metric="f1", curves_every_s=0)
    for record in _records(2, 1, 1, [0.5]):
        reporter.write(record["split"], record["step"], record["epoch"],
                       {k: v for k, v in record.items() if k not in ("split", "step", "epoch")})
    assert_png_not_blank(os.path.join(workdir, "curves.png"))

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(curves, "draw", broken)
    reporter.write("epoch", 4, 1, {"loss": 0.5, "lr": 1e-3, "seconds": 1.0, "images_per_sec": 1.0})
    reporter.close()
    assert f"warning: could not draw {workdir}/curves.png: RuntimeError: no fonts" in capsys.readouterr().err
    assert json.loads(open(os.path.join(workdir, "metrics.jsonl")).readlines()[-1])["step"] == 4


def test_the_reporter_redraws_after_an_epoch_at_most_every_interval_and_always_after_the_test(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(curves, "draw", lambda histories, metric, path: drawn.append(len(histories[0].epoch_x)))
    reporter = reporting.Reporter(str(tmp_path), curves_every_s=3600)
    for record in _records(2, 3, 1, [0.5, 0.6, 0.7], tested_epoch=2):
        reporter.write(record["split"], record["step"], record["epoch"],
                       {k: v for k, v in record.items() if k not in ("split", "step", "epoch")})
    reporter.close()
    assert drawn == [1, 3]  # the first epoch, then the test; epochs 2 and 3 fell within the hour
