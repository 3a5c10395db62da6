"""Compare: a table of runs, their curves overlaid, and accuracy against trainable parameters."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from . import fmt, plots, texts
from .guard import guarded
from .runner import Runner

__all__ = ["ComparePanel", "build", "bind", "table", "compare", "COLUMNS"]

COLUMNS = ["run", "method", "N", "m", "r", "dataset", "trainable params", "val acc", "test acc", "time",
           "status"]
# Ticked by default when the tab opens: the newest finished runs, a readable number of them.
DEFAULT_TICKED = 6


@dataclass
class ComparePanel:
    table: gr.Dataframe
    ticked: gr.CheckboxGroup
    refresh: gr.Button
    curves: gr.Plot
    scatter: gr.Plot


def build() -> ComparePanel:
    """Lay out the Compare tab (no events)."""
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="compare-table")
            with gr.Row():
                ticked = gr.CheckboxGroup([], label="Runs to compare", scale=5, elem_id="compare-ticked")
                refresh = gr.Button("↻ Refresh", scale=1, size="sm", elem_id="compare-refresh")
            scatter = gr.Plot(plots.empty_figure("Tick finished runs."), label="Accuracy vs parameters",
                              elem_id="compare-scatter")
            curves = gr.Plot(plots.empty_figure("Tick runs."), label="Curves", elem_id="compare-curves")
        with gr.Column(scale=1):
            gr.Markdown(texts.COMPARE, latex_delimiters=texts.LATEX_DELIMITERS)
    return ComparePanel(table, ticked, refresh, curves, scatter)


def _row(r: dict[str, Any]) -> list[Any]:
    return [r["run"], r["method"], r["N"], r["m"], r["r"], r["dataset"],
            r["trainable"] if r["trainable"] is not None else None,
            fmt.percent(r["val_acc"]), fmt.percent(r["test_acc"]), fmt.duration(r["seconds"]), r["status"]]


def table(runner: Runner, ticked: list[str] | None) -> tuple:
    """The runs table and the tick list (keeping the user's ticks, else the newest finished runs)."""
    rows = runner.compare_rows()
    choices = [(f"{r['run']} · {r['label']}", r["run"]) for r in rows]
    ids = {r["run"] for r in rows}
    kept = [t for t in (ticked or []) if t in ids]
    if not kept:
        kept = [r["run"] for r in rows if r["status"] == "completed"][:DEFAULT_TICKED]
    return [_row(r) for r in rows], gr.CheckboxGroup(choices=choices, value=kept)


def compare(runner: Runner, ticked: list[str] | None) -> tuple:
    """Overlaid curves and the accuracy-vs-parameters scatter for the ticked runs."""
    rows = {r["run"]: r for r in runner.compare_rows()}
    chosen = [rows[t] for t in (ticked or []) if t in rows]
    curves = {f"{r['label']} ({r['run'][-4:]})": (runner.epoch_curves(r["run"]), r["method"]) for r in chosen}
    points = [{"label": r["label"], "method": r["method"], "params": r["trainable"],
               "acc": r["test_acc"] if r["test_acc"] is not None else r["val_acc"]} for r in chosen]
    return plots.compare_curves(curves), plots.accuracy_vs_params(points)


def bind(p: ComparePanel, runner: Runner, tab: gr.Tab) -> None:
    """Wire the Compare tab: refresh on open or on the button; redraw when ticks change."""
    load, show = guarded(partial(table, runner)), guarded(partial(compare, runner))
    views = [p.curves, p.scatter]
    tab.select(load, p.ticked, [p.table, p.ticked], api_name="compare_table").then(
        show, p.ticked, views, api_visibility="private")
    p.refresh.click(load, p.ticked, [p.table, p.ticked], api_visibility="private").then(
        show, p.ticked, views, api_visibility="private")
    p.ticked.input(show, p.ticked, views, api_name="compare")
