"""The MedMamba paper's tables as data (Yue & Li, arXiv 2403.03849), for side-by-side comparisons.

Copied from the paper: ``table1_variants`` (parameters and FLOPs of T/S/B at 224 px and 1000
classes), ``table2_datasets``, ``table6_medmnist`` (AUC and OA of every method on 10 MedMNIST
sets) and ``table7_ablation``. They are facts to compare with, never settings to tune to.
"""

from __future__ import annotations

import csv
import functools
import io
from importlib import resources

TABLES = ("table1_variants", "table2_datasets", "table6_medmnist", "table7_ablation")


@functools.cache
def _rows(name: str) -> tuple[dict[str, str], ...]:
    text = resources.files(__name__).joinpath(f"{name}.csv").read_text(encoding="utf-8")
    return tuple(csv.DictReader(io.StringIO(text)))


def table(name: str) -> list[dict[str, str]]:
    """The rows of table ``name`` (one of ``TABLES``) as {column: text}, in the paper's order."""
    if name not in TABLES:
        raise ValueError(f"unknown paper table {name!r}; one of {', '.join(TABLES)}")
    return [dict(row) for row in _rows(name)]
