"""Download & predict: files of the selected run, and top-k predictions on uploaded, pasted,
webcam, drawn or example images, with the run's model or an uploaded merged model."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from karst.errors import KarstError

from . import plots, texts
from .guard import guarded
from .images import image_input, sketch_input
from .runner import Prediction, Runner
from .wiring import follow_run

__all__ = ["PredictPanel", "build", "bind", "downloads", "predict", "TAB_ID"]

TAB_ID = "predict"
_SOURCES = [("Selected run", "run"), ("Uploaded merged model", "upload")]


@dataclass
class PredictPanel:
    merged: gr.DownloadButton
    card: gr.DownloadButton
    adapter: gr.DownloadButton
    files_note: gr.Markdown
    source: gr.Radio
    model_files: gr.File
    image: gr.Image
    many: gr.File
    sketch: gr.Sketchpad
    examples: gr.Gallery
    top_k: gr.Slider
    buttons: dict[str, gr.Button]  # input kind -> its Predict button
    chart: gr.Plot
    results: gr.Dataframe

    def downloads(self) -> list:
        return [self.merged, self.card, self.adapter, self.files_note]


def build() -> PredictPanel:
    """Lay out the Download & predict tab (no events)."""
    buttons: dict[str, gr.Button] = {}
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("#### Download")
            with gr.Row():
                merged = gr.DownloadButton("⬇ Merged model (.safetensors)", visible=False, elem_id="dl-merged")
                card = gr.DownloadButton("⬇ Merged config (.json)", visible=False, elem_id="dl-card")
                adapter = gr.DownloadButton("⬇ Adapter only", visible=False, elem_id="dl-adapter")
            files_note = gr.Markdown("Files appear here once the selected run has ended.", elem_id="dl-note")
            gr.Markdown("#### Predict")
            with gr.Row():
                source = gr.Radio(_SOURCES, value="run", label="Model", elem_id="predict-source")
                model_files = gr.File(label="Merged model: .safetensors (+ its .json)", file_count="multiple",
                                      file_types=[".safetensors", ".json"], type="filepath",
                                      elem_id="predict-model-files")
                top_k = gr.Slider(1, 10, value=5, step=1, label="Top-k", elem_id="predict-topk")
            with gr.Tabs():
                with gr.Tab("Image (upload, paste, webcam)"):
                    image = image_input(sources=["upload", "clipboard", "webcam"], height=260,
                                        label="Image", elem_id="predict-image")
                    buttons["image"] = gr.Button("Predict", variant="primary", elem_id="predict-image-btn")
                    examples = gr.Gallery(label="Examples from the run's dataset — click one to predict",
                                          columns=8, height=140, allow_preview=False, elem_id="predict-examples")
                with gr.Tab("Several images"):
                    many = gr.File(label="Images", file_count="multiple", type="filepath",
                                   elem_id="predict-many")
                    buttons["many"] = gr.Button("Predict all", variant="primary", elem_id="predict-many-btn")
                with gr.Tab("Draw"):
                    sketch = sketch_input(label="Draw", height=300, elem_id="predict-sketch")
                    buttons["sketch"] = gr.Button("Predict drawing", variant="primary",
                                                  elem_id="predict-sketch-btn")
            chart = gr.Plot(plots.topk_bars([], []), label="Top-k", elem_id="predict-chart")
            results = gr.Dataframe(headers=["image", "top-1", "probability", "top-k"], interactive=False,
                                   elem_id="predict-results")
        with gr.Column(scale=2):
            gr.Markdown(texts.PREDICT, latex_delimiters=texts.LATEX_DELIMITERS)
    return PredictPanel(merged, card, adapter, files_note, source, model_files, image, many, sketch, examples,
                        top_k, buttons, chart, results)


# ---------------------------------------------------------------------------- handlers
def downloads(runner: Runner, run_id: str | None) -> tuple:
    """Show the three download buttons for a run that ended; hide them otherwise, saying why.

    Raises anything but a ``KarstError`` (a bug), for :func:`guarded` to log and report.
    """
    hidden = (gr.DownloadButton(visible=False),) * 3
    if not run_id:
        return (*hidden, "Pick a run to download its files.")
    try:
        merged, card, adapter = runner.downloads(run_id)
    except KarstError as err:  # a note, not an error: the run may simply still be training
        return (*hidden, f"ℹ️ {err}")
    size = merged.stat().st_size / 1e6
    return (gr.DownloadButton(value=str(merged), visible=True), gr.DownloadButton(value=str(card), visible=True),
            gr.DownloadButton(value=str(adapter), visible=True),
            f"Run `{run_id}`: merged model {size:.1f} MB, adapter {adapter.stat().st_size / 1e3:.0f} kB.")


def examples(runner: Runner, run_id: str | None) -> list:
    return runner.example_images(run_id, None) if run_id else []


def _show(preds: list[Prediction]) -> tuple:
    first = preds[0]
    rows = [[p.name, p.labels[0], round(p.probs[0], 4),
             ", ".join(f"{c} {q:.0%}" for c, q in zip(p.labels, p.probs))] for p in preds]
    return plots.topk_bars(first.labels, first.probs, title=f"top-{len(first.labels)}: {first.name}"), rows


def predict(runner: Runner, kind: str, source: str, run_id: str | None, model_files: list[str] | None,
            top_k: float, item: Any) -> tuple:
    """Top-k chart (first image) and a table (all images) for one input kind."""
    items = list(item or []) if kind == "many" else [item]
    return _show(runner.predict(source, run_id, model_files, items, int(top_k)))


def pick_example(runner: Runner, source: str, run_id: str | None, model_files: list[str] | None, top_k: float,
                 evt: gr.SelectData) -> tuple:
    """Clicking an example image puts it in the image box and predicts at once.

    The image is looked up by its index among the run's examples on the server, never by the path
    the browser reports (a client could send any server path).
    """
    examples = runner.example_images(run_id, None) if run_id else []
    index = evt.index if isinstance(evt.index, int) else -1
    if not 0 <= index < len(examples):
        raise KarstError("that example is no longer shown; pick the run again to reload its examples.")
    image = examples[index]
    return (image, *_show(runner.predict(source, run_id, model_files, [image], int(top_k))))


def bind(p: PredictPanel, runner: Runner, run: gr.Dropdown, tab: gr.Tab, current_tab: gr.State) -> None:
    """Wire the tab: follow the run (downloads, examples) and the three Predict buttons."""
    follow_run(tab=tab, tab_id=TAB_ID, run=run, current_tab=current_tab, refresh=partial(downloads, runner),
               refresh_inputs=[run], refresh_outputs=p.downloads(), api_name="downloads",
               redraw=partial(examples, runner), redraw_inputs=[run], redraw_outputs=[p.examples])
    common = [p.source, run, p.model_files, p.top_k]
    inputs = {"image": p.image, "many": p.many, "sketch": p.sketch}
    for kind, button in p.buttons.items():
        button.click(guarded(partial(predict, runner, kind)), [*common, inputs[kind]], [p.chart, p.results],
                     api_name=f"predict_{kind}")

    # A named function, not a partial: Gradio finds the SelectData argument through type hints.
    def on_example(source: str, run_id: str | None, model_files: list[str] | None, top_k: float,
                   evt: gr.SelectData) -> tuple:
        return pick_example(runner, source, run_id, model_files, top_k, evt)

    p.examples.select(guarded(on_example), common, [p.image, p.chart, p.results], api_visibility="private")
