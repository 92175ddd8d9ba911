"""The atomic writes every layer uses: all or nothing, no temporary left behind, the usual permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from medmamba_jax import files


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    path = tmp_path / "curves.png"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(path, suffix=".tmp.png") as tmp:
            assert tmp.endswith(".tmp.png") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "w") as f:
                f.write("half of the new")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["curves.png"] and path.read_text() == "old"


def test_a_completed_write_replaces_the_file(tmp_path):
    path = tmp_path / "results.json"
    files.write_json(path, {"auc": 0.5})
    files.write_json(path, {"auc": 0.75, "loss": float("nan")})
    assert os.listdir(tmp_path) == ["results.json"]
    assert path.read_text() == '{\n  "auc": 0.75,\n  "loss": NaN\n}\n'


def test_written_files_get_the_umask_s_permissions_not_owner_only(tmp_path):
    previous = os.umask(0o027)
    try:
        files.write_json(tmp_path / "config.json", {})
        files.write_json_lines(tmp_path / "metrics.jsonl", [{"step": 1}])
    finally:
        os.umask(previous)
    for name in ("config.json", "metrics.jsonl"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name


def test_json_lines_round_trip_and_a_half_written_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    files.write_json_lines(path, [{"step": 1}, {"step": 2, "split": "val"}])
    with open(path, "a") as f:
        f.write(json.dumps({"step": 3})[:-2])  # a run killed while appending
    assert files.read_json_lines(path) == [{"step": 1}, {"step": 2, "split": "val"}]
