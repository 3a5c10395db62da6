"""Sweeps in the Compare tab: each trial's validation accuracy against its trainable parameters, the
chosen setting, and its test accuracy once retrained on train+val (``karst sweep``, karst/sweep.py)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from . import plots
from .guard import guarded
from .runner import Runner

__all__ = ["SweepsPanel", "build", "bind", "choices", "show"]

_HINT = "No sweep in this runs directory yet: `karst sweep --space space.json --ray local` (README: 'Sweeps')."


@dataclass
class SweepsPanel:
    sweep: gr.Dropdown
    table: gr.Markdown
    scatter: gr.Plot


def build() -> SweepsPanel:
    """Lay out the sweeps section (no events); it sits under the Compare tab's runs."""
    with gr.Accordion("Sweeps (karst sweep --space FILE)", open=False):
        sweep = gr.Dropdown([], label="Sweep", elem_id="compare-sweep")
        table = gr.Markdown(_HINT, elem_id="compare-sweep-table")
        scatter = gr.Plot(plots.empty_figure("Pick a sweep."), label="Accuracy vs trainable parameters",
                          elem_id="compare-sweep-scatter")
    return SweepsPanel(sweep, table, scatter)


def choices(runner: Runner, chosen: str | None) -> gr.Dropdown:
    """The sweeps of the runs directory, newest first; keeps the one already chosen."""
    found = runner.sweeps()
    labels = [(f"{d['sweep_id']} · {len(d.get('trials', []))} trials · {d.get('status')}", d["sweep_id"])
              for d in found]
    ids = [d["sweep_id"] for d in found]
    return gr.Dropdown(choices=labels, value=chosen if chosen in ids else (ids[0] if ids else None))


def show(runner: Runner, sweep_id: str | None) -> tuple[str, Any]:
    """A sweep's table and its accuracy-vs-parameters plot."""
    if not sweep_id:
        return _HINT, plots.empty_figure("Pick a sweep.")
    table, points = runner.sweep_view(sweep_id)
    return table, plots.accuracy_vs_params(points)


def bind(p: SweepsPanel, runner: Runner, tab: gr.Tab) -> None:
    """Refresh the list when the tab opens; draw the chosen sweep."""
    tab.select(guarded(partial(choices, runner)), p.sweep, p.sweep, api_visibility="private")
    p.sweep.change(guarded(partial(show, runner)), p.sweep, [p.table, p.scatter], api_name="sweep_table")
