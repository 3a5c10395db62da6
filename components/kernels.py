"""Kernels: heatmaps of C_i, A_iB_i, C_i⊗A_iB_i and ΔW, and the spectrum of ΔW, per saved epoch."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from . import plots, texts
from .guard import guarded
from .runner import Runner
from .wiring import follow_run

__all__ = ["KernelsPanel", "build", "open_view", "render", "TAB_ID"]

TAB_ID = "kernels"


@dataclass
class KernelsPanel:
    layer: gr.Dropdown
    kernel: gr.Slider
    epoch: gr.Slider
    c: gr.Plot
    ab: gr.Plot
    kron: gr.Plot
    delta: gr.Plot
    spectrum: gr.Plot
    note: gr.Markdown

    def controls(self) -> list:
        return [self.layer, self.kernel, self.epoch]

    def views(self) -> list:
        return [self.c, self.ab, self.kron, self.delta, self.spectrum, self.note]


def build() -> KernelsPanel:
    """Lay out the Kernels tab (no events)."""
    empty = plots.empty_figure("Pick a KARST run with saved snapshots.")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                layer = gr.Dropdown([], label="Layer", scale=3, elem_id="kernels-layer")
                kernel = gr.Slider(1, 2, value=1, step=1, label="Kernel i", scale=1, elem_id="kernels-kernel")
                epoch = gr.Slider(0, 1, value=0, step=1, label="Epoch (0 = before training)", scale=2,
                                  elem_id="kernels-epoch")
            note = gr.Markdown(elem_id="kernels-note")
            with gr.Row():
                c = gr.Plot(empty, label="C_i", elem_id="kernels-c")
                ab = gr.Plot(empty, label="A_i B_i", elem_id="kernels-ab")
            with gr.Row():
                kron = gr.Plot(empty, label="C_i ⊗ A_i B_i", elem_id="kernels-kron")
                delta = gr.Plot(empty, label="ΔW", elem_id="kernels-delta")
            spectrum = gr.Plot(empty, label="Singular values", elem_id="kernels-spectrum")
        with gr.Column(scale=1):
            gr.Markdown(texts.KERNELS, latex_delimiters=texts.LATEX_DELIMITERS)
    return KernelsPanel(layer, kernel, epoch, c, ab, kron, delta, spectrum, note)


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


def render(runner: Runner, run_id: str | None, layer: str | None, kernel: float, epoch: float) -> tuple:
    """The four heatmaps, the spectrum and a note for one layer, kernel and epoch."""
    if not run_id or not layer:
        msg = ("No KARST layers to show: pick a KARST run (its kernels are saved from epoch 0)." if run_id
               else "Pick a KARST run in the list above.")
        empty = plots.empty_figure(msg)
        return empty, empty, empty, empty, empty, msg
    v: dict[str, Any] = runner.kernel_view(run_id, layer, int(kernel), int(epoch))
    figs = []
    for key, title in (("C", "C_i"), ("AB", "A_i B_i"), ("kron", "C_i ⊗ A_i B_i"), ("delta", "ΔW")):
        figs.append(plots.heatmap(v[key], title) if v.get(key) is not None
                    else plots.empty_figure(f"{title} is not defined for this method."))
    spec = plots.spectrum(v["sv"], v.get("lora_sv"), "KARST ΔW",
                          f"LoRA, equal budget (r={v.get('lora_rank', '?')})")
    note = v.get("note") or ""
    return (*figs, spec, note)


def open_view(runner: Runner, run_id: str | None, layer: str | None) -> tuple:
    """Controls for the run and the views they select, in one round trip."""
    picked = _pick(runner, run_id, layer)
    layers, chosen, _, epochs = picked
    return (*_controls(*picked), *render(runner, run_id, chosen, 1, max(epochs, default=0)))


def bind(p: KernelsPanel, runner: Runner, run: gr.Dropdown, tab: gr.Tab, current_tab: gr.State) -> None:
    """Wire the Kernels tab: follow the selected run; redraw on control changes."""
    follow_run(tab=tab, tab_id=TAB_ID, run=run, current_tab=current_tab, refresh=partial(open_view, runner),
               refresh_inputs=[run, p.layer], refresh_outputs=[*p.controls(), *p.views()], api_name="kernel_view")
    gr.on([p.layer.input, p.kernel.release, p.epoch.release], guarded(partial(render, runner)),
          [run, *p.controls()], p.views(), trigger_mode="always_last", api_name="kernels")
