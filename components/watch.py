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
from .guard import guarded, report
from .header import Header, refresh_runs
from .runner import Runner

__all__ = ["WatchPanel", "build", "bind", "render"]


# The issue asks for curves that update at least once a second; half a second also trims the
# delay between a new metrics line and its drawing. Only runs in progress are polled.
POLL_SECONDS = 0.5


@dataclass
class WatchPanel:
    progress: gr.HTML
    status: gr.Markdown
    curves: gr.Plot
    details: gr.JSON  # hidden: the structured details, for API clients
    sig: gr.State
    timer: gr.Timer
    table: gr.Markdown
    name: gr.Textbox
    note: gr.Textbox
    save: gr.Button
    delete: gr.Button

    def outputs(self) -> list:
        return [self.progress, self.status, self.curves, self.details, self.sig, self.timer, self.table]


def build() -> WatchPanel:
    """Lay out the Watch tab (no events)."""
    with gr.Row():
        with gr.Column(scale=3):
            progress = gr.HTML(fmt.progress_html(None), elem_id="progress")
            status = gr.Markdown("Pick or launch a run.", elem_id="watch-status")
            curves = gr.Plot(plots.empty_figure("No run selected."), label="Training curves", elem_id="curves")
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
    return WatchPanel(progress=progress, status=status, curves=curves, details=details, sig=gr.State(()),
                      timer=gr.Timer(POLL_SECONDS, active=False), table=table, name=name, note=note, save=save,
                      delete=delete)


def render(runner: Runner, run_id: str | None) -> tuple[str, str, Any, dict, str]:
    """Everything the panel shows for ``run_id``: progress, status line, curves, details and their table."""
    if not run_id:
        return fmt.progress_html(None), "Pick or launch a run.", plots.empty_figure("No run selected."), {}, ""
    v = runner.view(run_id)
    status_md = fmt.status_line(run_id, v.status)
    if v.test:
        status_md += f"  \nTest accuracy **{fmt.percent(v.test.get('test_acc'))}**."
    if v.epochs:
        status_md += f"  \nLast validation accuracy **{fmt.percent(v.epochs[-1].get('val_acc'))}**."
    if v.steps:
        fig = plots.training_curves(v.steps, v.epochs, v.status.get("total_steps"))
    else:
        waiting = v.status.get("status") in ("queued", "running")
        fig = plots.empty_figure("Waiting for the first training step…" if waiting
                                 else "This run recorded no training steps.")
    details = {"run_id": run_id, "status": v.status, "queue_position": v.queue_position,
               "steps_recorded": len(v.steps), "epochs_recorded": len(v.epochs),
               "last_step": v.steps[-1] if v.steps else None, "test": v.test, "config": v.config}
    return (fmt.progress_html(v.status, v.queue_position), status_md, fig, details,
            fmt.field_table(runner.run_details(run_id)))


def _timer(details: dict) -> gr.Timer:
    return gr.Timer(active=(details.get("status") or {}).get("status") in ACTIVE_STATES)


def poll(runner: Runner, run_id: str | None, sig: tuple) -> tuple:
    """Timer tick: redraw only when the run's files changed; stop ticking once the run ended."""
    new_sig = runner.run_signature(run_id)
    if new_sig == sig:
        return (gr.skip(),) * 7
    try:
        *views, details, table = render(runner, run_id)
    except Exception as err:  # a tick must never raise: it would toast every half second
        return gr.skip(), f"{fmt.ICON_WARN} {report(err, 'watch poll')}", *(gr.skip(),) * 2, new_sig, *(gr.skip(),) * 2
    return (*views, details, new_sig, _timer(details), table)


def show(runner: Runner, run_id: str | None) -> tuple:
    """Run picked (or API call): always redraw, and poll while the run is in progress; fill in its name and note."""
    *views, details, table = render(runner, run_id)
    meta = runner.run_meta(run_id) if run_id else {"name": "", "note": ""}
    return (*views, details, runner.run_signature(run_id), _timer(details), table, meta["name"], meta["note"])


def save_meta(runner: Runner, run_id: str | None, name: str, note: str) -> str:
    meta = runner.set_run_meta(run_id, name, note)
    gr.Info(f"Saved: {meta['name'] or 'no name'}.")
    return fmt.field_table(runner.run_details(run_id))


def delete_run(runner: Runner, run_id: str | None, confirmed: bool) -> str:
    if not confirmed:
        return gr.skip()
    message = runner.delete(run_id)
    gr.Info(message)
    return message


def bind(p: WatchPanel, runner: Runner, header: Header) -> None:
    """Wire the Watch tab's events."""
    header.run.change(guarded(partial(show, runner)), inputs=header.run, outputs=[*p.outputs(), p.name, p.note],
                      api_name="watch", show_progress="hidden")
    refresh = partial(refresh_runs, runner)
    p.save.click(guarded(partial(save_meta, runner)), [header.run, p.name, p.note], p.table,
                 api_name="set_run_meta").then(guarded(refresh), header.run, [header.run, header.runs_sig],
                                               api_visibility="private")
    # The browser asks first; the server deletes only when the answer was yes.
    p.delete.click(guarded(partial(delete_run, runner)), [header.run, gr.State(True)], header.message,
                   js="(run, _) => [run, confirm('Delete run ' + run + ' and all its files? This cannot be undone.')]",
                   api_name="delete_run").then(guarded(refresh), header.run, [header.run, header.runs_sig],
                                               api_visibility="private")
    p.timer.tick(partial(poll, runner), inputs=[header.run, p.sig], outputs=p.outputs(),
                 show_progress="hidden", concurrency_limit=None, api_visibility="private")
