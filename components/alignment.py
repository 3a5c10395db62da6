"""Distribution alignment: per-channel output statistics before/after re-scaling, gap over epochs, s1/s2."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from . import plots, texts
from .guard import guarded
from .runner import Runner
from .wiring import follow_run

__all__ = ["AlignmentPanel", "build", "bind", "open_view", "render", "TAB_ID"]

TAB_ID = "alignment"


@dataclass
class AlignmentPanel:
    layer: gr.Dropdown
    epoch: gr.Slider
    stats: gr.Plot
    gap: gr.Plot
    rescale: gr.Plot
    summary: gr.Markdown

    def controls(self) -> list:
        return [self.layer, self.epoch]

    def views(self) -> list:
        return [self.stats, self.gap, self.rescale, self.summary]


def build() -> AlignmentPanel:
    """Lay out the Alignment tab (no events)."""
    empty = plots.empty_figure("Pick a run with saved feature statistics.")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                layer = gr.Dropdown([], label="Layer", scale=3, elem_id="align-layer")
                epoch = gr.Slider(0, 1, value=0, step=1, label="Epoch", scale=2, elem_id="align-epoch")
            summary = gr.Markdown(elem_id="align-summary")
            stats = gr.Plot(empty, label="Per-channel statistics", elem_id="align-stats")
            with gr.Row():
                gap = gr.Plot(empty, label="Gap over epochs", elem_id="align-gap")
                rescale = gr.Plot(empty, label="s1, s2", elem_id="align-rescale")
        with gr.Column(scale=1):
            gr.Markdown(texts.ALIGNMENT, latex_delimiters=texts.LATEX_DELIMITERS)
    return AlignmentPanel(layer, epoch, stats, gap, rescale, summary)


def _pick(runner: Runner, run_id: str | None, layer: str | None) -> tuple[list[str], str | None, list[int]]:
    if not run_id:
        return [], None, []
    layers, epochs, _ = runner.inspect_options(run_id, stats=True)
    return layers, (layer if layer in layers else (layers[0] if layers else None)), epochs


def _controls(layers: list[str], chosen: str | None, epochs: list[int]) -> tuple:
    last = max(epochs, default=0)
    return (gr.Dropdown(choices=layers, value=chosen),
            gr.Slider(minimum=min(epochs, default=0), maximum=max(last, 1), value=last))


def render(runner: Runner, run_id: str | None, layer: str | None, epoch: float) -> tuple:
    if not run_id or not layer:
        msg = ("No feature statistics: they are recorded for KARST layers; pick a KARST run." if run_id
               else "Pick a KARST run in the list above.")
        empty = plots.empty_figure(msg)
        return empty, empty, empty, msg
    v: dict[str, Any] = runner.alignment_view(run_id, layer, int(epoch))
    gaps = v.get("gaps") or {}
    lines = [f"Layer `{layer}`, epoch {int(epoch)}."]
    for label, value in (v.get("gap_now") or {}).items():
        lines.append(f"- gap **{label}**: {value:.4g}")
    return (plots.alignment_stats(v["stats"]), plots.alignment_gap(v.get("epochs") or [], gaps),
            plots.rescale_values(v.get("s1"), v.get("s2")), "\n".join(lines))


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
    gr.on([p.layer.input, p.epoch.release], guarded(partial(render, runner)), [run, *p.controls()], p.views(),
          trigger_mode="always_last", api_name="alignment")
