"""Watch: live curves, progress with ETA, status and queue position of the selected run.

The panel only reads the run folder. A timer re-reads it; when neither the status nor the
metrics file changed since the last tick, the tick sends nothing to the browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from karst.runs import ACTIVE_STATES

from . import fmt, plots, texts
from .clients import as_client
from .guard import guarded, report
from .header import Header, refresh_runs
from .runner import Runner

__all__ = ["WatchPanel", "build", "bind", "render"]


# The issue asks for curves that update at least once a second; half a second also trims the
# delay between a new metrics line and its drawing. Only runs in progress are polled.
POLL_SECONDS = 0.5
# The second picker's "no second run" choice (a value, so the picker can be cleared).
NO_OTHER = ("None: this run only", "")


@dataclass
class WatchPanel:
    progress: gr.HTML
    status: gr.Markdown
    curves: gr.Plot
    other: gr.Dropdown  # a second run drawn beside the first, on the same axes
    other_curves: gr.Plot
    details: gr.JSON  # hidden: the structured details, for API clients
    sig: gr.State
    timer: gr.Timer
    table: gr.Markdown
    name: gr.Textbox
    note: gr.Textbox
    save: gr.Button
    delete: gr.Button

    def outputs(self) -> list:
        # The /watch endpoint's first four outputs are its API (progress, status, curves, details).
        return [self.progress, self.status, self.curves, self.details, self.sig, self.timer, self.table,
                self.other_curves]


def build() -> WatchPanel:
    """Lay out the Watch tab (no events)."""
    with gr.Row(elem_id="watch-row"):  # lecture mode moves the teaching column below (app.py's CSS)
        with gr.Column(scale=3):
            progress = gr.HTML(fmt.progress_html(None), elem_id="progress")
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=280):
                    status = gr.Markdown("Pick or launch a run.", elem_id="watch-status")
                with gr.Column(scale=2, min_width=240):
                    # Custom values allowed, as in the run picker: an API client never receives the choices.
                    other = gr.Dropdown(label="Side by side with (same axes)", choices=[NO_OTHER], value="",
                                        elem_id="watch-other", interactive=True, allow_custom_value=True)
            with gr.Row(equal_height=True):
                # min_width: on a phone the second plot goes below the first instead of squeezing both.
                curves = gr.Plot(plots.empty_figure("No run selected."), label="Training curves", elem_id="curves",
                                 min_width=280)
                other_curves = gr.Plot(label="Side by side", show_label=False, visible=False, elem_id="curves-other",
                                       min_width=280)
            with gr.Accordion("Run details: dates, results, settings; name, note or delete the run", open=False,
                              elem_id="run-details-box"):
                table = gr.Markdown(elem_id="run-details-table")
                with gr.Row():
                    name = gr.Textbox(label="Name (labels this run in every plot)", max_lines=1, scale=2,
                                      elem_id="run-name")
                    note = gr.Textbox(label="Note", lines=2, scale=3, elem_id="run-note")
                with gr.Row():
                    save = gr.Button("Save name and note", size="sm", elem_id="run-meta-save")
                    delete = gr.Button("Delete this run…", variant="stop", size="sm", elem_id="run-delete")
                details = gr.JSON(visible=False, elem_id="run-details")
        with gr.Column(scale=1):
            gr.Markdown(texts.WATCH, latex_delimiters=texts.LATEX_DELIMITERS)
    return WatchPanel(progress=progress, status=status, curves=curves, other=other, other_curves=other_curves,
                      details=details, sig=gr.State(()),
                      timer=gr.Timer(POLL_SECONDS, active=False), table=table, name=name, note=note, save=save,
                      delete=delete)


def render(runner: Runner, run_id: str | None, other_id: str | None = None) -> tuple[str, str, Any, dict, str, Any]:
    """Everything the panel shows for ``run_id``: progress, status line, curves, details and their table,
    and the curves of ``other_id`` beside them (hidden when there is none)."""
    if not run_id:
        return (fmt.progress_html(None), "Pick or launch a run.",
                gr.Plot(plots.empty_figure("No run selected."), show_label=True), {}, "", gr.Plot(visible=False))
    v = runner.view(run_id)
    status_md = fmt.status_line(run_id, v.status)
    if v.test:
        status_md += f"  \nTest accuracy **{fmt.percent(v.test.get('test_acc'))}**."
    if v.epochs:
        status_md += f"  \nLast validation accuracy **{fmt.percent(v.epochs[-1].get('val_acc'))}**."
    details = {"run_id": run_id, "status": v.status, "queue_position": v.queue_position,
               "steps_recorded": len(v.steps), "epochs_recorded": len(v.epochs),
               "last_step": v.steps[-1] if v.steps else None, "test": v.test, "config": v.config}
    if other_id and other_id != run_id:
        w = runner.view(other_id)
        details["side_by_side"] = {"run_id": other_id, "status": w.status}
        pair = _side_by_side(runner, v, w)
        # Each figure names its run at the top left, where a plot's own label would cover it.
        fig, other_plot = gr.Plot(pair[0], show_label=False), gr.Plot(pair[1], visible=True)
    else:
        fig, other_plot = gr.Plot(_curves(v), show_label=True), gr.Plot(visible=False)
    return (fmt.progress_html(v.status, v.queue_position), status_md, fig, details,
            fmt.field_table(runner.run_details(run_id)), other_plot)


def _curves(v: Any) -> Any:
    """One run's loss, accuracy and learning rate (``v``: a ``Workspace.view``), or why there is nothing to
    draw yet."""
    if v.steps:
        return plots.training_curves(v.steps, v.epochs, v.status.get("total_steps"))
    waiting = v.status.get("status") in ("queued", "running")
    return plots.empty_figure("Waiting for the first training step…" if waiting
                              else "This run recorded no training steps.")


def _side_by_side(runner: Runner, *views: Any) -> list[Any]:
    """The runs' curves on shared axes, each in its own colour and labelled by what sets it apart."""
    ids = [v.run_id for v in views]
    labels, colors = runner.run_labels(ids), runner.run_colors()
    return plots.side_by_side_curves([
        plots.RunCurves(labels[v.run_id], colors.get(v.run_id), v.steps, v.epochs, v.status.get("total_steps"),
                        v.status.get("epochs") or v.config.get("epochs")) for v in views])


def _active(details: dict) -> bool:
    runs = [details, details.get("side_by_side") or {}]
    return any((d.get("status") or {}).get("status") in ACTIVE_STATES for d in runs)


def _signature(runner: Runner, run_id: str | None, other_id: str | None) -> tuple:
    return runner.run_signature(run_id), runner.run_signature(other_id)


def poll(runner: Runner, run_id: str | None, other_id: str | None, sig: tuple) -> tuple:
    """Timer tick: redraw only when either run's files changed; stop ticking once both have ended."""
    new_sig = _signature(runner, run_id, other_id)
    if new_sig == sig:
        return (gr.skip(),) * 8
    try:
        *views, details, table, other_plot = render(runner, run_id, other_id)
    except Exception as err:  # a tick must never raise: it would toast every half second
        return (gr.skip(), f"{fmt.ICON_WARN} {report(err, 'watch poll')}", gr.skip(), gr.skip(), new_sig,
                *(gr.skip(),) * 3)
    return (*views, details, new_sig, gr.Timer(active=_active(details)), table, other_plot)


def show(runner: Runner, run_id: str | None, other_id: str | None = None) -> tuple:
    """Run picked (or API call): always redraw, and poll while a run shown is in progress; fill in its name
    and note. ``other_id``: a second run to draw beside it on the same axes."""
    *views, details, table, other_plot = render(runner, run_id, other_id)
    meta = runner.run_meta(run_id) if run_id else {"name": "", "note": ""}
    return (*views, details, _signature(runner, run_id, other_id), gr.Timer(active=_active(details)), table,
            other_plot, meta["name"], meta["note"])


def other_choices(runner: Runner, other_id: str | None) -> Any:
    """The second picker's runs, kept in step with the run list; a run that is gone is unpicked."""
    choices = [NO_OTHER, *runner.run_dropdown()]
    ids = [value for _, value in choices]  # a list: a client may send any JSON value, even a list
    return gr.Dropdown(choices=choices, value=other_id if other_id in ids else "")


def save_meta(runner: Runner, run_id: str | None, name: str, note: str, *, owner: str | None = None) -> str:
    meta = runner.set_run_meta(run_id, name, note, owner=owner)
    gr.Info(f"Saved: {meta['name'] or 'no name'}.")
    return fmt.field_table(runner.run_details(run_id))


def delete_run(runner: Runner, run_id: str | None, confirmed: bool, *, owner: str | None = None) -> str:
    if not confirmed:
        return gr.skip()
    message = runner.delete(run_id, owner=owner)
    gr.Info(message)
    return message


def bind(p: WatchPanel, runner: Runner, header: Header) -> None:
    """Wire the Watch tab's events."""
    shown = [*p.outputs(), p.name, p.note]
    header.run.change(guarded(partial(show, runner)), inputs=[header.run, p.other], outputs=shown,
                      api_name="watch", show_progress="hidden")
    p.other.change(guarded(partial(show, runner)), inputs=[header.run, p.other], outputs=shown,
                   show_progress="hidden", api_visibility="private")
    # The run list changed (a run launched, ended or deleted): the second picker follows it.
    header.runs_sig.change(guarded(partial(other_choices, runner)), inputs=p.other, outputs=p.other,
                           show_progress="hidden", api_visibility="private")
    refresh = partial(refresh_runs, runner)
    p.save.click(guarded(as_client(partial(save_meta, runner))), [header.clients.token, header.run, p.name, p.note],
                 p.table,
                 api_name="set_run_meta").then(guarded(refresh), header.run, [header.run, header.runs_sig],
                                               api_visibility="private")
    # The browser asks first; the server deletes only when the answer was yes.
    # The browser's answer must travel in a component the browser sends: a gr.State input would keep
    # its server-side value and ignore a "Cancel".
    answer = gr.Checkbox(False, visible=False, elem_id="run-delete-confirm")
    p.delete.click(guarded(as_client(partial(delete_run, runner))), [header.clients.token, header.run, answer],
                   header.message,
                   js="(token, run, _) => [token, run, confirm('Delete run ' + run + ' and all its files? This "
                   "cannot be undone.')]",
                   api_name="delete_run").then(guarded(refresh), header.run, [header.run, header.runs_sig],
                                               api_visibility="private")
    p.timer.tick(partial(poll, runner), inputs=[header.run, p.other, p.sig], outputs=p.outputs(),
                 show_progress="hidden", concurrency_limit=None, api_visibility="private")
