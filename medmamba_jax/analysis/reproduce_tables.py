"""The tables ``reproduce`` writes: our test AUC and OA beside the paper's Table 6 or Table 7.

Ours come from each run's results.json (the test split, scored with the checkpoint of the
best validation ``best_metric``): ``auc`` is the macro one-vs-rest AUC and ``accuracy`` the
OA, as MedMNIST's evaluator computes them. A run that has not finished shows "-".
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from medmamba_jax import paper

# Table 7's rows (ssm, conv, split, shuffle) and the value of the ``block`` config key that builds each.
ABLATION_BLOCKS = {"1000": "ssm_only", "1100": "no_split", "1110": "split_no_shuffle", "1111": "full"}
PAPER_NAMES = {"medmamba_t": "MedMamba-T", "medmamba_s": "MedMamba-S", "medmamba_b": "MedMamba-B",
               "medmamba_x": "MedMamba-X"}


def table6_datasets() -> list[str]:
    """The MedMNIST flags of Table 6's columns, in the paper's order."""
    columns = paper.table("table6_medmnist")[0]
    return [c[: -len("_auc")] for c in columns if c.endswith("_auc")]


def dataset_name(flag: str) -> str:
    """The paper's name of a MedMNIST flag ("PathMNIST" for "pathmnist"), from Table 2."""
    return next((r["name"] for r in paper.table("table2_datasets") if r["name"].casefold() == flag), flag)


def _results(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(values: list[float | None]) -> float | None:
    return None if not values or None in values else sum(values) / len(values)


def _write(workdir: str, name: str, title: str, notes: list[str], header: list[str], rows: list[list[str]],
           csv_header: list[str]) -> list[str]:
    """WORKDIR/NAME.md (a title, notes and a Markdown table) and WORKDIR/NAME.csv (the same rows).
    Plain writes: every run of reproduce remakes them from the results.json files."""
    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header)
    writer.writerows(rows)
    paths = [os.path.join(workdir, f"{name}.md"), os.path.join(workdir, f"{name}.csv")]
    for path, text in zip(paths, ("\n".join(lines) + "\n", buffer.getvalue())):
        with open(path, "w") as f:
            f.write(text)
    return paths


def table6(exp, workdir: str) -> list[str]:
    """table6.md and table6.csv: every method of the paper's Table 6, then ours and ours less the
    paper's value for the same model. The average OA of every row is over the data sets we have
    results for (all 10 when none is finished), so that the rows compare like with like."""
    datasets = table6_datasets()
    ours = {d: r for d in datasets if (r := _results(os.path.join(workdir, d, "results.json")))}
    averaged = [d for d in datasets if d in ours] or datasets
    paper_rows = paper.table("table6_medmnist")
    method = PAPER_NAMES[exp.model]
    ours_values = {f"{d}_{k}": (ours[d]["auc"] if k == "auc" else ours[d]["accuracy"]) if d in ours else None
                   for d in datasets for k in ("auc", "oa")}
    rows = []
    for row in paper_rows:
        average = _mean([float(row[f"{d}_oa"]) for d in averaged])
        rows.append([row["method"], *(row[f"{d}_{k}"] for d in datasets for k in ("auc", "oa")), _number(average, 3)])
    average = _mean([ours_values[f"{d}_oa"] for d in averaged])
    rows.append([f"ours: {method}", *(_number(ours_values[f"{d}_{k}"], 4) for d in datasets for k in ("auc", "oa")),
                 _number(average, 4)])
    same = next(r for r in paper_rows if r["method"] == method)
    differences = [None if ours_values[key] is None else ours_values[key] - float(same[key])
                   for key in (f"{d}_{k}" for d in datasets for k in ("auc", "oa"))]
    paper_average = _mean([float(same[f"{d}_oa"]) for d in averaged])
    rows.append([f"ours - paper {method}", *(_number(v, 4) for v in differences),
                 _number(None if average is None else average - paper_average, 4)])
    header = ["method", *(f"{dataset_name(d)} {k}" for d in datasets for k in ("AUC", "OA")), "average OA"]
    csv_header = ["method", *(f"{d}_{k}" for d in datasets for k in ("auc", "oa")), "average_oa"]
    missing = [d for d in datasets if d not in ours]
    notes = [f"Ours: {method} trained with `{exp.recipe}` in {workdir}/<dataset>, test split, checkpoint of the "
             "best validation AUC; AUC is the macro one-vs-rest ROC AUC and OA the overall accuracy.",
             f"Average OA over {len(averaged)} data set(s): {', '.join(averaged)}."
             + (f" Not finished: {', '.join(missing)}." if missing else "")]
    return _write(workdir, "table6", f"Table 6 (MedMNIST): the paper and {method} here", notes, header, rows,
                  csv_header)


def table7(exp, workdir: str) -> list[str]:
    """table7.md and table7.csv: Table 7's four ablation rows for the data set, the paper's numbers
    (or "-" where Table 7 has no such data set) beside ours."""
    paper_rows = {"".join(r[k] for k in ("ssm", "conv", "split", "shuffle")): r for r in paper.table("table7_ablation")
                  if r["dataset"].replace(" ", "").casefold() == exp.dataset.casefold()}
    rows = []
    for parts, block in ABLATION_BLOCKS.items():
        theirs = paper_rows.get(parts, {})
        result = _results(os.path.join(workdir, block, "results.json"))
        rows.append([*parts, block, *(theirs.get(k, "-") for k in ("params_M", "flops_G", "oa_percent", "auc")),
                     _number(None if result is None else 100 * result["accuracy"], 1),
                     _number(None if result is None else result["auc"], 4)])
    header = ["SSM", "Conv", "Split", "Shuffle", "block", "paper params (M)", "paper FLOPs (G)", "paper OA (%)",
              "paper AUC", "our OA (%)", "our AUC"]
    csv_header = ["ssm", "conv", "split", "shuffle", "block", "paper_params_M", "paper_flops_G", "paper_oa_percent",
                  "paper_auc", "oa_percent", "auc"]
    notes = [f"Ours: MedMamba-T blocks (config key `block`) trained with `{exp.recipe}` on {exp.dataset} in "
             f"{workdir}/<block>, test split, checkpoint of the best validation AUC."
             + ("" if paper_rows else f" Table 7 has no {exp.dataset} rows: the paper's columns are '-'.")]
    return _write(workdir, "table7", f"Table 7 (ablation) on {dataset_name(exp.dataset)}: the paper and ours", notes, header, rows,
                  csv_header)


def write(exp, workdir: str) -> list[str]:
    """The table files of ``exp`` (a ``reproduce.Experiment``) in ``workdir``; their paths."""
    return table6(exp, workdir) if exp.table == "table6" else table7(exp, workdir)
