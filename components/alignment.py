"""Distribution alignment: each layer's output against the reference statistics, per channel and over epochs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from . import fmt, plots, texts
from .guard import guarded
from .runner import Runner
from .wiring import follow_run

__all__ = ["AlignmentPanel", "build", "bind", "open_view", "render", "TAB_ID", "TABLE_COLUMNS"]

TAB_ID = "alignment"
TABLE_COLUMNS = ["layer", "channels", "gap frozen", "gap before", "gap after", "re-scaling: closer",
                 "re-scaling: further", "closer than frozen"]


@dataclass
class AlignmentPanel:
    layer: gr.Dropdown
    epoch: gr.Slider
    summary: gr.Markdown
    shifts: gr.Plot
    gap: gr.Plot
    rescale: gr.Plot
    table: gr.Dataframe

    def controls(self) -> list:
        return [self.layer, self.epoch]

    def views(self) -> list:
        return [self.summary, self.shifts, self.gap, self.rescale, self.table]


def build() -> AlignmentPanel:
    """Lay out the Alignment tab (no events)."""
    empty = plots.empty_figure("Pick a run with saved feature statistics.")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                layer = gr.Dropdown([], label="Layer", scale=3, elem_id="align-layer")
                epoch = gr.Slider(0, 1, value=0, step=1, label="Epoch", scale=2, elem_id="align-epoch")
            summary = gr.Markdown(elem_id="align-summary")
            shifts = gr.Plot(empty, label="Per-channel change",
                             elem_id="align-shifts")
            gap = gr.Plot(empty, label="Gap over epochs, every run of this task",
                          elem_id="align-gap")
            rescale = gr.Plot(empty, label="Re-scaling s1, s2", elem_id="align-rescale")
            with gr.Accordion("Every layer at this epoch", open=False):
                table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, elem_id="align-table")
        with gr.Column(scale=1, min_width=260):
            gr.Markdown(texts.ALIGNMENT, latex_delimiters=texts.LATEX_DELIMITERS)
    return AlignmentPanel(layer, epoch, summary, shifts, gap, rescale, table)


def _pick(runner: Runner, run_id: str | None, layer: str | None) -> tuple[list[str], str | None, list[int]]:
    if not run_id:
        return [], None, []
    layers, epochs, _ = runner.inspect_options(run_id, stats=True)
    return layers, (layer if layer in layers else (layers[0] if layers else None)), epochs


def _controls(layers: list[str], chosen: str | None, epochs: list[int]) -> tuple:
    last = max(epochs, default=0)
    return (gr.Dropdown(choices=layers, value=chosen),
            gr.Slider(minimum=min(epochs, default=0), maximum=max(last, 1), value=last))


def _gap(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["layer"], r["channels"], _gap(r["gap_frozen"]), _gap(r["gap_before"]), _gap(r["gap_after"]),
             fmt.percent(r["rescale_closer"]), fmt.percent(r["rescale_further"]), fmt.percent(r["training_closer"])]
            for r in rows]


def render(runner: Runner, run_id: str | None, layer: str | None, epoch: float) -> tuple:
    if not run_id or not layer:
        msg = ("This run has no feature statistics yet (they are saved from epoch 0)." if run_id
               else "Pick a run in the list above.")
        empty = plots.empty_figure(msg)
        return msg, empty, empty, empty, []
    v: dict[str, Any] = runner.alignment_view(run_id, layer, int(epoch))
    return (v["summary"], plots.alignment_shifts(v["shift"], v["shares"]),
            plots.alignment_gap(runner.alignment_runs(run_id, layer)),
            plots.rescale_values(v.get("s1"), v.get("s2")), _table(runner.alignment_table(run_id, v["epoch"])))


def open_view(runner: Runner, run_id: str | None, layer: str | None) -> tuple:
    """Controls for the run and the views they select, in one round trip."""
    picked = _pick(runner, run_id, layer)
    _, chosen, epochs = picked
    return (*_controls(*picked), *render(runner, run_id, chosen, max(epochs, default=0)))


def bind(p: AlignmentPanel, runner: Runner, run: gr.Dropdown, tab: gr.Tab, current_tab: gr.State) -> None:
    """Wire the Alignment tab: follow the selected run; redraw on control changes."""
    follow_run(tab=tab, tab_id=TAB_ID, run=run, current_tab=current_tab, refresh=partial(open_view, runner),
               refresh_inputs=[run, p.layer], refresh_outputs=[*p.controls(), *p.views()],
               api_name="alignment_view")
    gr.on([p.layer.input, p.epoch.release, p.epoch.input], guarded(partial(render, runner)), [run, *p.controls()],
          p.views(), trigger_mode="always_last", api_name="alignment")
