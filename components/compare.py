"""Compare: a table of runs, their curves overlaid, accuracy against trainable parameters, and benchmark suites."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from karst.suites import list_suites, suite_markdown

from . import fmt, plots, texts
from .guard import guarded
from .runner import Runner

__all__ = ["ComparePanel", "build", "bind", "table", "compare", "suite_choices", "suite_table", "COLUMNS"]

# Accuracy right after the run's label, and the label pinned: both stay in view on a 1024 px screen.
COLUMNS = ["run", "val acc", "test acc", "trainable params", "method", "N", "m", "r", "re-scaling", "lr", "epochs",
           "batch", "train images", "dataset", "time", "status", "id"]
_WIDTHS = ["230px", "72px", "72px", "84px", "70px", "44px", "44px", "44px", "84px", "64px", "64px", "60px", "80px",
           "120px", "64px", "90px", "220px"]
# Ticked by default when the tab opens: the newest finished runs, a readable number of them.
DEFAULT_TICKED = 6


@dataclass
class ComparePanel:
    table: gr.Dataframe
    ticked: gr.CheckboxGroup
    refresh: gr.Button
    curves: gr.Plot
    scatter: gr.Plot
    suite: gr.Dropdown
    suite_md: gr.Markdown


def build() -> ComparePanel:
    """Lay out the Compare tab (no events)."""
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, pinned_columns=1, max_height=420,
                                 column_widths=_WIDTHS, elem_id="compare-table")
            with gr.Row():
                ticked = gr.CheckboxGroup([], label="Runs to compare", scale=5, elem_id="compare-ticked")
                refresh = gr.Button("↻ Refresh", scale=1, size="sm", elem_id="compare-refresh")
            scatter = gr.Plot(plots.empty_figure("Tick finished runs."), label="Accuracy vs parameters",
                              elem_id="compare-scatter")
            curves = gr.Plot(plots.empty_figure("Tick runs."), label="Curves", elem_id="compare-curves")
            with gr.Accordion("Benchmark suites (karst suite …)", open=False):
                suite = gr.Dropdown([], label="Suite", elem_id="compare-suite")
                suite_md = gr.Markdown("Run `karst suite make-demo DIR` then `karst suite vtab1k --data-root DIR`.",
                                       elem_id="compare-suite-table")
        with gr.Column(scale=1):
            gr.Markdown(texts.COMPARE, latex_delimiters=texts.LATEX_DELIMITERS)
    return ComparePanel(table, ticked, refresh, curves, scatter, suite, suite_md)


def _row(r: dict[str, Any]) -> list[Any]:
    return [r["label"], fmt.percent(r["val_acc"]), fmt.percent(r["test_acc"]), fmt.count(r["trainable"]), r["method"],
            r["N"], r["m"], r["r"], r["rescale"], None if r["lr"] is None else f"{r['lr']:g}", r["epochs"],
            r["batch_size"], r["train_images"], r["dataset"], fmt.duration(r["seconds"]), r["status"], r["run"]]


def table(runner: Runner, ticked: list[str] | None) -> tuple:
    """The runs table and the tick list (keeping the user's ticks, else the newest finished runs)."""
    rows = runner.compare_rows()
    choices = [(f"{r['label']} ({r['run'][-4:]})", r["run"]) for r in rows]
    ids = {r["run"] for r in rows}
    kept = [t for t in (ticked or []) if t in ids]
    if not kept:
        kept = [r["run"] for r in rows if r["status"] == "completed"][:DEFAULT_TICKED]
    return [_row(r) for r in rows], gr.CheckboxGroup(choices=choices, value=kept)


def compare(runner: Runner, ticked: list[str] | None) -> tuple:
    """Overlaid curves and the accuracy-vs-parameters scatter for the ticked runs."""
    rows = {r["run"]: r for r in runner.compare_rows()}
    chosen = [rows[t] for t in (ticked or []) if t in rows]
    # Labels tell apart the ticked runs (not all runs); a run's colour is the same in every plot.
    labels, colors = runner.run_labels([r["run"] for r in chosen]), runner.run_colors()
    curves = {labels[r["run"]]: (runner.epoch_curves(r["run"]), colors.get(r["run"])) for r in chosen}
    points = [{"label": labels[r["run"]], "color": colors.get(r["run"]), "method": r["method"],
               "params": r["trainable"], "acc": r["test_acc"] if r["test_acc"] is not None else r["val_acc"]}
              for r in chosen]
    return plots.compare_curves(curves), plots.accuracy_vs_params(points)


def suite_choices(runner: Runner, chosen: str | None) -> gr.Dropdown:
    """The suites of this runs directory (``<runs>/suites``), newest first; keeps the chosen one."""
    found = list_suites(runner.runs_dir)
    choices = [(f"{s['suite_id']} · {s['title']} · {s['completed']}/{s['runs']} runs · {s['status']}", s["suite_id"])
               for s in found]
    ids = [s["suite_id"] for s in found]
    return gr.Dropdown(choices=choices, value=chosen if chosen in ids else (ids[0] if ids else None))


def suite_table(runner: Runner, suite_id: str | None) -> str:
    """A suite as its table: tasks × methods with group means, the best method of each row in bold."""
    return suite_markdown(suite_id, runner.runs_dir) if suite_id else "No suite in this runs directory yet."


def bind(p: ComparePanel, runner: Runner, tab: gr.Tab) -> None:
    """Wire the Compare tab: refresh on open or on the button; redraw when ticks change."""
    load, show = guarded(partial(table, runner)), guarded(partial(compare, runner))
    views = [p.curves, p.scatter]
    tab.select(load, p.ticked, [p.table, p.ticked], api_name="compare_table").then(
        show, p.ticked, views, api_visibility="private")
    p.refresh.click(load, p.ticked, [p.table, p.ticked], api_visibility="private").then(
        show, p.ticked, views, api_visibility="private")
    p.ticked.input(show, p.ticked, views, api_name="compare")
    tab.select(guarded(partial(suite_choices, runner)), p.suite, p.suite, api_visibility="private")
    p.suite.change(guarded(partial(suite_table, runner)), p.suite, p.suite_md, api_name="suite_table")
