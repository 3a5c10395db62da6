"""Download & predict: files of the selected run, and top-k predictions on uploaded, pasted,
webcam, drawn or example images, with the run's model or an uploaded merged model.

Next to the top-k, a prediction shows what the model was given (the picture after its own resize
and crop), the classes it knows, a note when it is unsure, and for a dataset example the true class.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr
from PIL import Image

from karst.errors import KarstError

from . import fmt, plots, texts
from .guard import guarded
from .images import image_input, sketch_input
from .runner import Prediction, Runner
from .wiring import follow_run

__all__ = ["PredictPanel", "build", "bind", "downloads", "predict", "TAB_ID"]

TAB_ID = "predict"
_SOURCES = [("Selected run", "run"), ("Uploaded merged model", "upload")]
_HEADERS = ["image", "top-1", "probability", "top-k", "true class", "note"]
SEEN_SIDE = 224  # the model's input is enlarged to about this many pixels, by a whole factor
N_EXAMPLES = 10  # dataset examples offered, one per class first
MAX_NAMED_CLASSES = 40  # a longer class list is cut, saying how many more
MAX_VERDICTS = 8  # images described under the chart; the table has them all
# A gallery's height: its thumbnails' (Gradio's default keeps 450 px, mostly empty for one row).
_FIT = "fit-content"


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
    classes: gr.Markdown  # the classes the chosen model knows
    verdict: gr.Markdown  # per image: top-1, true class, unsure note
    seen: gr.Gallery  # what the model was given
    chart: gr.Plot
    results: gr.Dataframe
    shown: gr.State  # a Shown: the last prediction's other views, and which model made it

    def downloads(self) -> list:
        return [self.merged, self.card, self.adapter, self.files_note]

    def views(self) -> list:
        """What a prediction shows: each predict event marks these busy, then done or failed."""
        return [self.chart, self.results, self.seen, self.verdict]


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
            classes = gr.Markdown("Pick a run or upload a merged model to see the classes it knows.",
                                  elem_id="predict-classes")
            with gr.Tabs():
                with gr.Tab("Image (upload, paste, webcam)"):
                    image = image_input(sources=["upload", "clipboard", "webcam"], height=260,
                                        label="Image", elem_id="predict-image")
                    buttons["image"] = gr.Button("Predict", variant="primary", elem_id="predict-image-btn")
                    examples = gr.Gallery(label="Dataset examples and their true class: click one to predict",
                                          columns=5, height=_FIT,
                                          allow_preview=False, elem_id="predict-examples")
                with gr.Tab("Several images"):
                    many = gr.File(label="Images", file_count="multiple", type="filepath",
                                   elem_id="predict-many")
                    buttons["many"] = gr.Button("Predict all", variant="primary", elem_id="predict-many-btn")
                with gr.Tab("Draw"):
                    sketch = sketch_input(label="Draw", height=300, elem_id="predict-sketch")
                    buttons["sketch"] = gr.Button("Predict drawing", variant="primary",
                                                  elem_id="predict-sketch-btn")
            verdict = gr.Markdown(elem_id="predict-verdict")
            with gr.Row():
                chart = gr.Plot(plots.topk_bars([], []), label="Top-k", elem_id="predict-chart", scale=3)
                # PNG: a lossy format would smear the enlarged pixels' edges.
                seen = gr.Gallery(label="What the model sees", columns=1, height=_FIT, object_fit="contain",
                                  format="png", allow_preview=False, interactive=False, elem_id="predict-seen",
                                  scale=2, min_width=260)
            results = gr.Dataframe(headers=_HEADERS, interactive=False, elem_id="predict-results")
        with gr.Column(scale=2):
            gr.Markdown(texts.PREDICT, latex_delimiters=texts.LATEX_DELIMITERS)
    return PredictPanel(merged, card, adapter, files_note, source, model_files, image, many, sketch, examples,
                        top_k, buttons, classes, verdict, seen, chart, results, gr.State())


# ---------------------------------------------------------------------------- what a prediction shows
def class_list(names: list[str]) -> str:
    """The classes a model knows: the only answers it can give, whatever the picture."""
    shown = ", ".join(html.escape(n) for n in names[:MAX_NAMED_CLASSES])
    more = f", … and {len(names) - MAX_NAMED_CLASSES} more" if len(names) > MAX_NAMED_CLASSES else ""
    count = f"{len(names)} class{'' if len(names) == 1 else 'es'}"
    return (f"{fmt.ICON_INFO} This model knows **{count}**: {shown}{more}. Every answer is one of them, "
            "however unlike them a picture is.")


def unsure_note(p: Prediction) -> str:
    """Why not to trust this answer much, or "" when the model is sure of it."""
    sure = p.confidence
    if sure is None or not sure.unsure:
        return ""
    if p.true_label is not None:
        return (f"The model is unsure (top class {sure.top_prob:.0%}) even on a picture of its own dataset: "
                "it has not learned this class well.")
    return (f"The model is unsure (top class {sure.top_prob:.0%}): this picture may be unlike its training "
            f"images; it can only answer with one of its {sure.num_classes} classes.")


def _truth(p: Prediction) -> str:
    return "" if p.true_label is None else f"{p.true_label} ({'right' if p.correct else 'wrong'})"


def verdicts(preds: list[Prediction]) -> str:
    """One line per image (top-1, the true class and a right/wrong mark), and the unsure note under it."""
    lines = []
    for p in preds[:MAX_VERDICTS]:
        line = f"**{html.escape(p.name)}**: {html.escape(p.labels[0])} ({p.probs[0]:.0%})"
        if p.true_label is not None:
            mark = f"{fmt.ICON_OK} right" if p.correct else f"{fmt.ICON_ERROR} wrong"
            line += f" · true: {html.escape(p.true_label)} {mark}"
        note = unsure_note(p)
        lines.append(line + (f"  \n{fmt.ICON_WARN} {note}" if note else ""))
    if len(preds) > MAX_VERDICTS:
        lines.append(f"… and {len(preds) - MAX_VERDICTS} more in the table.")
    return "\n\n".join(lines)


def enlarged(pixels: Any) -> Image.Image:
    """A picture (H, W, 3) uint8 scaled up by a whole factor, nearest neighbour: each pixel a visible square."""
    h, w = pixels.shape[:2]
    factor = max(1, -(-SEEN_SIDE // max(h, w)))
    return Image.fromarray(pixels).resize((w * factor, h * factor), Image.Resampling.NEAREST)


def seen_gallery(preds: list[Prediction]) -> list[tuple[Image.Image, str]]:
    """The model's input for each image, enlarged, captioned with its true size (and its name, if several)."""
    def caption(p: Prediction) -> str:
        size = f"{p.seen.shape[1]}×{p.seen.shape[0]} px"  # under the gallery's label "What the model sees"
        return size if len(preds) == 1 else f"{p.name}: {size}"

    return [(enlarged(p.seen), caption(p)) for p in preds if p.seen is not None]


@dataclass
class Shown:
    """A prediction's views besides chart and table, passed on to :func:`show_more` in a State."""

    seen: list[tuple[Image.Image, str]]
    verdict: str
    classes: str
    model: tuple  # which model made it (:func:`_model_key`)


def _model_key(source: str, run_id: str | None, model_files: list[str] | None) -> tuple:
    return ("run", run_id) if source == "run" else ("upload", *sorted(model_files or []))


def _show(runner: Runner, source: str, run_id: str | None, model_files: list[str] | None,
          preds: list[Prediction]) -> tuple:
    """Chart and table, and the other views as one :class:`Shown` for :func:`show_more`."""
    first = preds[0]
    rows = [[p.name, p.labels[0], round(p.probs[0], 4), ", ".join(f"{c} {q:.0%}" for c, q in zip(p.labels, p.probs)),
             _truth(p), "unsure" if unsure_note(p) else ""] for p in preds]
    shown = Shown(seen_gallery(preds), verdicts(preds), class_list(runner.model_classes(source, run_id, model_files)),
                  _model_key(source, run_id, model_files))
    return plots.topk_bars(first.labels, first.probs, title=f"top-{len(first.labels)}: {first.name}"), rows, shown


def show_more(shown: Shown | None) -> tuple:
    """What the model saw, the verdicts and the class list, from the State the prediction filled."""
    if not shown:
        return (gr.skip(),) * 3
    return gr.Gallery(value=shown.seen, columns=1 if len(shown.seen) == 1 else 2), shown.verdict, shown.classes


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
    """The run's example images, each captioned with its true class."""
    pairs = runner.labelled_examples(run_id, None, N_EXAMPLES) if run_id else []
    return [(image, label) if label is not None else image for image, label in pairs]


def model_note(runner: Runner, source: str, run_id: str | None, model_files: list[str] | None) -> str:
    """The chosen model's class list, or why there is none yet (a note: nothing is wrong yet)."""
    if source == "upload" and not model_files:
        return f"{fmt.ICON_INFO} Upload a merged model (.safetensors, and its .json) to see the classes it knows."
    try:
        return class_list(runner.model_classes(source, run_id, model_files))
    except KarstError as err:
        return f"{fmt.ICON_INFO} {err}"


def model_chosen(runner: Runner, source: str, run_id: str | None, model_files: list[str] | None,
                 shown: Shown | None) -> tuple:
    """A run, model or tab change: the class list, and the views emptied if another model made them."""
    note = model_note(runner, source, run_id, model_files)
    if shown is None or shown.model == _model_key(source, run_id, model_files):
        return note, *(gr.skip(),) * 5  # also when a poll re-sends the same run: nothing to redo
    return note, plots.topk_bars([], []), [], [], "", None


def predict(runner: Runner, kind: str, source: str, run_id: str | None, model_files: list[str] | None,
            top_k: float, item: Any) -> tuple:
    """Top-k chart (first image) and a table (all images) for one input kind, and the other views."""
    items = list(item or []) if kind == "many" else [item]
    return _show(runner, source, run_id, model_files, runner.predict(source, run_id, model_files, items, int(top_k)))


def pick_example(runner: Runner, source: str, run_id: str | None, model_files: list[str] | None, top_k: float,
                 evt: gr.SelectData) -> tuple:
    """Clicking an example image puts it in the image box and predicts at once.

    The image is looked up by its index among the run's examples on the server, never by the path
    the browser reports (a client could send any server path).
    """
    examples = runner.labelled_examples(run_id, None, N_EXAMPLES) if run_id else []
    index = evt.index if isinstance(evt.index, int) else -1
    if not 0 <= index < len(examples):
        raise KarstError("that example is no longer shown; pick the run again to reload its examples.")
    image, label = examples[index]
    preds = runner.predict(source, run_id, model_files, [image], int(top_k), true_labels=[label])
    preds[0].name = f"example {index + 1}"
    return (image, *_show(runner, source, run_id, model_files, preds))


def bind(p: PredictPanel, runner: Runner, run: gr.Dropdown, tab: gr.Tab, current_tab: gr.State) -> None:
    """Wire the tab: follow the run (downloads, examples, class list) and the three Predict buttons.

    A failed prediction marks its views with Gradio's red "Error" status, which stays until an event
    showing progress on them ends well. So every event here shows its progress on the same views:
    the predictions with the usual spinner, the class-list refreshes (run, model or tab changes)
    hidden; whichever comes next after an error clears the marks.
    """
    follow_run(tab=tab, tab_id=TAB_ID, run=run, current_tab=current_tab, refresh=partial(downloads, runner),
               refresh_inputs=[run], refresh_outputs=p.downloads(), api_name="downloads",
               redraw=partial(examples, runner), redraw_inputs=[run], redraw_outputs=[p.examples])
    views = p.views()
    common = [p.source, run, p.model_files, p.top_k]
    inputs = {"image": p.image, "many": p.many, "sketch": p.sketch}
    # The public endpoints keep answering (chart, table); the other views follow in a private step.
    more = dict(fn=show_more, inputs=[p.shown], outputs=[p.seen, p.verdict, p.classes], show_progress="hidden",
                show_progress_on=views, api_visibility="private")
    for kind, button in p.buttons.items():
        button.click(guarded(partial(predict, runner, kind)), [*common, inputs[kind]], [p.chart, p.results, p.shown],
                     api_name=f"predict_{kind}", show_progress_on=views).success(**more)
    chosen = guarded(partial(model_chosen, runner))
    for changed in (tab.select, run.change, p.source.change, p.model_files.change):
        changed(chosen, [p.source, run, p.model_files, p.shown], [p.classes, *views, p.shown],
                show_progress="hidden", show_progress_on=views, api_visibility="private")

    # A named function, not a partial: Gradio finds the SelectData argument through type hints.
    def on_example(source: str, run_id: str | None, model_files: list[str] | None, top_k: float,
                   evt: gr.SelectData) -> tuple:
        return pick_example(runner, source, run_id, model_files, top_k, evt)

    p.examples.select(guarded(on_example), common, [p.image, p.chart, p.results, p.shown], show_progress_on=views,
                      api_visibility="private").success(**more)
