"""Kernels: heatmaps of C_i, A_iB_i, C_i⊗A_iB_i and ΔW (a LoRA run: A, B and ΔW), and the spectrum, per epoch."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from . import plots, texts
from .guard import guarded
from .runner import Runner
from .wiring import follow_run

__all__ = ["KernelsPanel", "build", "open_view", "render", "TAB_ID", "PLAY_SECONDS"]

TAB_ID = "kernels"
# One epoch per tick while playing: long enough to see each frame on a projector.
PLAY_SECONDS = 1.5


@dataclass
class KernelsPanel:
    layer: gr.Dropdown
    kernel: gr.Slider
    epoch: gr.Slider
    fixed: gr.Checkbox
    since: gr.Checkbox
    play: gr.Button
    timer: gr.Timer
    saved: gr.State  # the run's saved epochs, for the play button
    c: gr.Plot
    ab: gr.Plot
    kron: gr.Plot
    delta: gr.Plot
    spectrum: gr.Plot
    note: gr.Markdown

    def controls(self) -> list:
        return [self.layer, self.kernel, self.epoch, self.fixed, self.since]

    def views(self) -> list:
        return [self.c, self.ab, self.kron, self.delta, self.spectrum, self.note]


def build() -> KernelsPanel:
    """Lay out the Kernels tab (no events)."""
    empty = plots.empty_figure("Pick a KARST or LoRA run with saved snapshots.")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                layer = gr.Dropdown([], label="Layer", scale=3, elem_id="kernels-layer")
                kernel = gr.Slider(1, 2, value=1, step=1, label="Kernel i", scale=1, elem_id="kernels-kernel")
                epoch = gr.Slider(0, 1, value=0, step=1, label="Epoch (0 = before training)", scale=2,
                                  elem_id="kernels-epoch")
            with gr.Row():
                fixed = gr.Checkbox(False, label="Same colour scale for every epoch", elem_id="kernels-fixed")
                since = gr.Checkbox(False, label="Show the change since epoch 0", elem_id="kernels-since")
                play = gr.Button("▶ Play epochs", size="sm", elem_id="kernels-play")
            note = gr.Markdown(elem_id="kernels-note")
            with gr.Row():
                c = gr.Plot(empty, label="C_i", elem_id="kernels-c")
                ab = gr.Plot(empty, label="A_i B_i", elem_id="kernels-ab")
            kron = gr.Plot(empty, label="C_i ⊗ A_i B_i", elem_id="kernels-kron")
            delta = gr.Plot(empty, label="ΔW", elem_id="kernels-delta")
            spectrum = gr.Plot(empty, label="Singular values and energy", elem_id="kernels-spectrum")
        with gr.Column(scale=1, min_width=260):
            gr.Markdown(texts.KERNELS, latex_delimiters=texts.LATEX_DELIMITERS)
    return KernelsPanel(layer, kernel, epoch, fixed, since, play, gr.Timer(PLAY_SECONDS, active=False),
                        gr.State([]), c, ab, kron, delta, spectrum, note)


def _pick(runner: Runner, run_id: str | None, layer: str | None) -> tuple[list[str], str | None, int, list[int]]:
    if not run_id:
        return [], None, 1, []
    layers, epochs, n_kernels = runner.inspect_options(run_id)
    return layers, (layer if layer in layers else (layers[0] if layers else None)), n_kernels, epochs


def _controls(layers: list[str], chosen: str | None, n_kernels: int, epochs: list[int]) -> tuple:
    last = max(epochs, default=0)
    return (gr.Dropdown(choices=layers, value=chosen),
            gr.Slider(minimum=1, maximum=max(n_kernels, 2), value=1, interactive=n_kernels > 1),
            gr.Slider(minimum=min(epochs, default=0), maximum=max(last, 1), value=last))


# Big matrices get the column's full width and a height that shows the block pattern.
_BIG = 460


def _karst_figures(v: dict[str, Any]) -> list:
    bounds = v.get("bounds") or {}
    change = " (change since epoch 0)" if v.get("since") is not None else ""
    titles = {"C": "C_i", "AB": "A_i B_i", "kron": "C_i ⊗ A_i B_i", "delta": "ΔW"}
    return [plots.heatmap(v[key], titles[key] + change, bound=bounds.get(key),
                          block=v["block"] if key in ("kron", "delta") else None,
                          height=_BIG if key in ("kron", "delta") else 320)
            for key in ("C", "AB", "kron", "delta")]


def _lora_figures(v: dict[str, Any]) -> list:
    bounds = v.get("bounds") or {}
    change = " (change since epoch 0)" if v.get("since") is not None else ""
    return [gr.Plot(plots.heatmap(v["A"], f"A (r×d_in){change}", bound=bounds.get("A"),
                                  axes=("rank index", "input index j")), label="A"),
            gr.Plot(plots.heatmap(v["B"], f"B (d_out×r){change}", bound=bounds.get("B"),
                                  axes=("output index i", "rank index")), label="B"),
            gr.Plot(visible=False),
            plots.heatmap(v["delta"], f"ΔW = (α/r)·B A{change}", bound=bounds.get("delta"), height=_BIG)]


def render(runner: Runner, run_id: str | None, layer: str | None, kernel: float, epoch: float,
           fixed: bool = False, since: bool = False) -> tuple:
    """The heatmaps, the spectrum and a note for one layer, kernel and epoch."""
    if not run_id or not layer:
        msg = ("No KARST or LoRA layers to show: pick a KARST or LoRA run (their updates are saved from "
               "epoch 0); the Distribution alignment tab shows every method." if run_id
               else "Pick a KARST or LoRA run in the list above.")
        empty = plots.empty_figure(msg)
        return empty, empty, empty, empty, empty, msg
    v: dict[str, Any] = runner.kernel_view(run_id, layer, int(kernel), int(epoch), since=0 if since else None,
                                           fixed_scale=bool(fixed))
    if v["method"] == "lora":
        spec = plots.spectrum(v["sv"], None, "LoRA ΔW = (α/r)·B A", "")
        return (*_lora_figures(v), spec, v["note"])
    spec = plots.spectrum(v["sv"], v.get("lora_sv"), "KARST ΔW",
                          f"LoRA, equal budget (r={v['lora_rank']}): truncated SVD of this ΔW",
                          trained=v.get("trained_lora"), marker_rank=v["lora_rank"])
    c, ab, kron, delta = _karst_figures(v)
    return (gr.Plot(c, label="C_i"), gr.Plot(ab, label="A_i B_i"), gr.Plot(kron, visible=True), delta, spec,
            v.get("note") or "")


def open_view(runner: Runner, run_id: str | None, layer: str | None, fixed: bool, since: bool) -> tuple:
    """Controls for the run and the views they select, in one round trip."""
    picked = _pick(runner, run_id, layer)
    layers, chosen, _, epochs = picked
    return (*_controls(*picked), epochs, *render(runner, run_id, chosen, 1, max(epochs, default=0), fixed, since))


def play(epoch: float, saved: list[int]) -> tuple:
    """Start (or stop) stepping through the epochs; from the first one if at the last."""
    start = min(saved, default=0) if not saved or epoch >= max(saved) else epoch
    return gr.Slider(value=start), gr.Timer(active=bool(saved))


def step(runner: Runner, run_id: str | None, layer: str | None, kernel: float, epoch: float, fixed: bool,
         since: bool, saved: list[int]) -> tuple:
    """Timer tick while playing: the next saved epoch, drawn; stop after the last."""
    later = [e for e in saved if e > epoch]
    if not later or not run_id:
        return (gr.skip(), gr.Timer(active=False), *(gr.skip(),) * 6)
    nxt = later[0]
    return (gr.Slider(value=nxt), gr.Timer(active=len(later) > 1),
            *render(runner, run_id, layer, kernel, nxt, fixed, since))


def bind(p: KernelsPanel, runner: Runner, run: gr.Dropdown, tab: gr.Tab, current_tab: gr.State) -> None:
    """Wire the Kernels tab: follow the selected run; redraw on control changes (keys and drags too)."""
    follow_run(tab=tab, tab_id=TAB_ID, run=run, current_tab=current_tab, refresh=partial(open_view, runner),
               refresh_inputs=[run, p.layer, p.fixed, p.since],
               refresh_outputs=[p.layer, p.kernel, p.epoch, p.saved, *p.views()], api_name="kernel_view")
    gr.on([p.layer.input, p.kernel.release, p.epoch.release, p.epoch.input, p.fixed.input, p.since.input],
          guarded(partial(render, runner)), [run, *p.controls()], p.views(), trigger_mode="always_last",
          api_name="kernels")
    p.play.click(play, [p.epoch, p.saved], [p.epoch, p.timer], api_visibility="private")
    p.timer.tick(guarded(partial(step, runner)), [run, *p.controls(), p.saved], [p.epoch, p.timer, *p.views()],
                 show_progress="hidden", api_visibility="private")
