"""A suite's numbers: per-task means with 95% intervals over seeds, group means, and the Markdown table.

Everything here reads the ``runs`` list of a ``suite.json`` document (one entry per task × method ×
seed [× shot], with the run's accuracies) and nothing else, so a table can be redrawn at any time.

Aggregates (a group mean, the mean of the group means, the mean of all tasks) are computed per seed
first, over the seeds for which every task involved has finished, then averaged over those seeds
with a t-interval: the interval is the spread a re-run with new seeds would show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PAPER_VTAB1K_MEAN", "t975", "mean_ci", "vtab_results", "fewshot_results", "results", "render_markdown"]

# arXiv 2502.06779 (KARST, ICASSP 2025), Tables 1–2: KARST's VTAB-1K mean accuracy (%) with a
# ViT-B/16 pre-trained on ImageNet-21k and with Swin-B. Only the means are given here: the per-group
# figures of those tables are not reproduced. The paper shows its few-shot results as curves only.
PAPER_VTAB1K_MEAN: dict[str, float] = {"ViT-B/16": 78.1, "Swin-B": 78.6}
_PAPER_BACKBONES = {"ViT-B/16": "vit_base_patch16_224", "Swin-B": "swin_base_patch4_window7_224"}

# Which mean the paper's 78.1 is: the PETL tables KARST compares against give the VTAB-1K "Mean" as
# the mean of the three group means, not of the 19 tasks. JieShibo/PETL-ViT README.md (by the FacT
# authors) states it: "VTAB-1k Average = (Natural + Specialized + Structured) / 3", with full
# fine-tuning at 68.96 = (75.88 + 83.36 + 47.64) / 3, while its 19 task figures average 65.57. So
# 78.1 is set beside our mean of the group means; the mean of the tasks is reported too, labelled.
PAPER_MEAN_KIND = "mean of the three group means"

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard tables).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a 95% two-sided interval)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # Cornish-Fisher expansion around the normal quantile; < 1e-3 off for df > 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> dict[str, Any] | None:
    """``{"mean", "ci", "n"}``: the mean and the half-width of its 95% t-interval (None for one value)."""
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "ci": t975(n - 1) * sd / math.sqrt(n), "n": n}


def _accuracies(runs: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple, float]:
    """``{(task, method, shot, seed): accuracy}`` of the finished runs that have ``metric``."""
    return {(r["task"], r["method"], r.get("shot"), r["seed"]): r[metric] for r in runs
            if r.get("status") == "completed" and r.get(metric) is not None}


def _aggregate(acc: dict[tuple, float], method: str, seeds: Sequence[int], parts: Sequence[Sequence[str]],
               shot: int | None = None) -> dict[str, Any] | None:
    """Mean ± CI over seeds of the mean over ``parts`` of the mean over each part's tasks.

    One part of all tasks is a plain mean over tasks; one part per group is the mean of group means.
    Only seeds for which every task has a value count.
    """
    per_seed = []
    for seed in seeds:
        values = [[acc.get((t, method, shot, seed)) for t in part] for part in parts]
        if all(v is not None for part in values for v in part):
            per_seed.append(sum(sum(part) / len(part) for part in values) / len(values))
    return mean_ci(per_seed)


def vtab_results(doc: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """Per task, per group, the mean of the group means and the mean of all tasks, for each method."""
    acc = _accuracies(doc["runs"], metric)
    spec, tasks = doc["spec"], doc["protocol_info"]["tasks"]
    methods, seeds = spec["methods"], spec["seeds"]
    groups: dict[str, list[str]] = {}
    for t in tasks:
        groups.setdefault(t["group"], []).append(t["name"])
    return {
        "tasks": {t["name"]: {m: _aggregate(acc, m, seeds, [[t["name"]]]) for m in methods} for t in tasks},
        "groups": {g: {m: _aggregate(acc, m, seeds, [names]) for m in methods} for g, names in groups.items()},
        "mean_of_groups": {m: _aggregate(acc, m, seeds, list(groups.values())) for m in methods},
        "mean_of_tasks": {m: _aggregate(acc, m, seeds, [[t["name"] for t in tasks]]) for m in methods},
    }


def fewshot_results(doc: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """Per dataset and shot, and the average over datasets per shot, for each method."""
    acc = _accuracies(doc["runs"], metric)
    spec, tasks = doc["spec"], [t["name"] for t in doc["protocol_info"]["tasks"]]
    methods, seeds, shots = spec["methods"], spec["seeds"], spec["shots"]
    return {
        "tasks": {t: {str(k): {m: _aggregate(acc, m, seeds, [[t]], k) for m in methods} for k in shots} for t in tasks},
        "average": {str(k): {m: _aggregate(acc, m, seeds, [tasks], k) for m in methods} for k in shots},
    }


def results(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``results`` of a suite document: final-epoch test accuracy and the best periodic evaluation."""
    compute = vtab_results if doc["spec"]["protocol"] == "vtab1k" else fewshot_results
    return {"final": compute(doc, "test_acc"), "best": compute(doc, "best_test_acc")}


# -------------------------------------------------------------------------------------------- tables
def _pct(stat: Mapping[str, Any] | None, bold: bool = False) -> str:
    if not stat:
        return "–"
    text = f"{100 * stat['mean']:.1f}"
    text = f"**{text}**" if bold else text
    return text + (f" ± {100 * stat['ci']:.1f}" if stat.get("ci") is not None else "")


def _row(label: Sequence[str], final: Mapping[str, Any], best: Mapping[str, Any] | None, methods: Sequence[str],
         paper: str | None = None) -> str:
    """One table row: the label cells, then final (best in bold) and best-of-evaluations per method."""
    means = {m: final[m]["mean"] for m in methods if final.get(m)}
    top = max(means.values()) if len(means) > 1 else None
    cells = [*label]
    for m in methods:
        cells.append(_pct(final.get(m), bold=top is not None and means.get(m) == top))
        if best is not None:
            cells.append(_pct(best.get(m)))
    return "| " + " | ".join(cells + ([paper] if paper is not None else [])) + " |"


def _paper_cell(backbone: str, official: bool) -> str:
    for label, arch in _PAPER_BACKBONES.items():
        if arch in backbone and official:
            return f"{PAPER_VTAB1K_MEAN[label]} ({label})"
    figures = ", ".join(f"{v} ({k})" for k, v in PAPER_VTAB1K_MEAN.items())
    return f"{figures}; other backbone or tasks"


def _header(first: Sequence[str], methods: Sequence[str], vtab: bool) -> list[str]:
    """VTAB-1K: final and best* per method, and the paper's figure; few-shot: final per method."""
    per_method = (lambda m: (m, f"{m} best*")) if vtab else (lambda m: (m,))
    cols = [*first, *(c for m in methods for c in per_method(m)), *(["paper (KARST)"] if vtab else [])]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _vtab_table(doc: Mapping[str, Any]) -> list[str]:
    res, methods = doc["results"], doc["spec"]["methods"]
    final, best = res["final"], res["best"]
    lines = _header(("group", "task"), methods, vtab=True)
    group_of = {t["name"]: t["group"] for t in doc["protocol_info"]["tasks"]}
    for task, row in final["tasks"].items():
        lines.append(_row((group_of[task], task), row, best["tasks"][task], methods, ""))
    for group, row in final["groups"].items():
        lines.append(_row((f"**{group} mean**", ""), row, best["groups"][group], methods, ""))
    paper = _paper_cell(doc["spec"].get("backbone", ""), doc["protocol_info"].get("official", False))
    lines.append(_row(("**Mean** (of the group means)", ""), final["mean_of_groups"], best["mean_of_groups"],
                      methods, paper))
    n = len(group_of)
    lines.append(_row((f"mean of the {n} tasks", ""), final["mean_of_tasks"], best["mean_of_tasks"], methods, ""))
    return lines


def _fewshot_table(doc: Mapping[str, Any]) -> list[str]:
    final, methods = doc["results"]["final"], doc["spec"]["methods"]
    lines = _header(("dataset", "shots"), methods, vtab=False)
    for task, shots in final["tasks"].items():
        for k, row in shots.items():
            lines.append(_row((task, k), row, None, methods))
    for k, row in final["average"].items():
        lines.append(_row(("**average**", k), row, None, methods))
    return lines


_BEST_NOTE = (" **best\\*** = best of the periodic evaluations, *chosen on the test set* (how PETL papers "
              "report; optimistic, since the test set picks the epoch).")


def render_markdown(doc: Mapping[str, Any]) -> str:
    """``suite.md``: what was run, the table, and how to read it."""
    spec, info = doc["spec"], doc["protocol_info"]
    done = sum(r.get("status") == "completed" for r in doc["runs"])
    vtab = spec["protocol"] == "vtab1k"
    shots = "" if vtab else f", shots {' '.join(map(str, spec['shots']))}"
    lines = [
        f"# {info['title']} suite `{doc['suite_id']}`", "",
        f"Data: `{spec['data_root']}` ({len(info['tasks'])} tasks). Backbone `{spec.get('backbone', '?')}`, "
        f"recipe `{spec['recipe']}`, methods {', '.join(spec['methods'])}, seeds "
        f"{' '.join(map(str, spec['seeds']))}{shots}. {done} of {len(doc['runs'])} runs completed; "
        f"status: {doc['status']}.", "",
        "Test accuracy (%) after the last epoch: mean ± 95% interval over seeds (t-distribution); the best "
        "method of each row in bold." + (_BEST_NOTE if vtab else "") + " Aggregates count the seeds for which "
        "every task involved has finished; – = not yet.", "",
        *(_vtab_table(doc) if vtab else _fewshot_table(doc)), "",
    ]
    if vtab:
        lines.append(f"The paper's VTAB-1K figure is the {PAPER_MEAN_KIND} (the PETL convention: "
                     "JieShibo/PETL-ViT README, 'VTAB-1k Average = (Natural + Specialized + Structured) / 3'); "
                     "compare it with the **Mean** row. Source: arXiv 2502.06779, Tables 1–2; its per-group "
                     "figures are not reproduced here.")
    else:
        lines.append("The paper shows its few-shot results as curves only; no published figures are set beside these.")
    if not info.get("official", False):
        lines.append("This root names its own tasks (protocol.json): the paper's figures are for the published "
                     "tasks and a large backbone, shown for orientation only.")
    return "\n".join(lines) + "\n"
