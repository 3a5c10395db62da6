"""The bar above the tabs: which run every view shows, Stop and Resume buttons, and the polling timer.

The selected run is shared by Watch, Kernels, Alignment and Download & predict. A fresh page (or a
refresh, or a second tab) attaches to the active run if there is one, so nothing is lost when a
browser connection drops: the run lives in the engine's worker, not in this page.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gradio as gr

from karst.runs import ACTIVE_STATES

from . import clients
from .clients import Clients, as_client
from .guard import guarded, log
from .runner import Runner

__all__ = ["Header", "build", "bind", "LIST_POLL_SECONDS"]

# The run list only needs to notice runs started elsewhere (CLI, another tab): every 2 s is plenty.
# The Watch panel has its own fast timer, active only while its run is queued or running.
LIST_POLL_SECONDS = 2.0


@dataclass
class Header:
    run: gr.Dropdown
    refresh: gr.Button
    stop: gr.Button
    resume: gr.Button
    message: gr.Markdown
    timer: gr.Timer
    runs_sig: gr.State
    tab: gr.State  # id of the selected tab, so hidden views skip work
    clients: Clients  # who is asking (launchers stop their own runs)


def build(runner: Runner) -> Header:
    """Lay out the run picker row (no events)."""
    # The buttons share one line beside the picker, so the header stays short: at 1024×768 (a
    # projector) the curves below must start on screen.
    with gr.Row(equal_height=True, elem_id="header-row"):
        run = gr.Dropdown(label="Run (all views show this run)", choices=[], value=None, scale=5, min_width=300,
                          elem_id="run-picker", interactive=True, allow_custom_value=True)
        with gr.Column(scale=3, min_width=320), gr.Row(elem_id="header-actions"):
            refresh = gr.Button("↻ Refresh list", size="sm", min_width=90, elem_id="refresh-runs")
            stop = gr.Button("■ Stop run", variant="stop", size="sm", min_width=90, elem_id="stop-run")
            resume = gr.Button("▶ Resume run", size="sm", min_width=90, elem_id="resume-run")
    message = gr.Markdown(elem_id="header-message")
    return Header(run=run, refresh=refresh, stop=stop, resume=resume, message=message,
                  timer=gr.Timer(LIST_POLL_SECONDS), runs_sig=gr.State(()), tab=gr.State("setup"),
                  clients=clients.build(runner))


def attach(runner: Runner) -> tuple:
    """On page load: list the runs, select the one to re-attach to, and show it training if it is."""
    run_id = runner.default_run()
    active = bool(run_id) and runner.view(run_id).status.get("status") in ACTIVE_STATES
    return (gr.Dropdown(choices=runner.run_dropdown(), value=run_id), runner.runs_signature(),
            gr.Tabs(selected="watch") if active else gr.skip(), "watch" if active else gr.skip())


def poll_runs(runner: Runner, run_id: str | None, sig: tuple) -> tuple:
    """Timer tick: refresh the run list only when a run appeared or changed state.

    Never raises: an error here would pop up a message every tick. The explicit Refresh button
    reports problems instead.
    """
    new_sig = runner.runs_signature()
    if new_sig == sig:
        return gr.skip(), gr.skip()
    try:
        choices = runner.run_dropdown()
    except Exception:
        log.exception("listing runs failed")
        return gr.skip(), gr.skip()
    ids = [value for _, value in choices]  # a list: a client may send any JSON value as run_id, even a list
    value = run_id if run_id in ids else runner.default_run()
    return gr.Dropdown(choices=choices, value=value), new_sig


def refresh_runs(runner: Runner, run_id: str | None) -> tuple:
    choices = runner.run_dropdown()
    ids = [value for _, value in choices]  # a list: a client may send any JSON value as run_id, even a list
    return gr.Dropdown(choices=choices, value=run_id if run_id in ids else runner.default_run()), \
        runner.runs_signature()


def resume_run(runner: Runner, run_id: str | None, *, owner: str | None = None) -> str:
    """Queue a cancelled or interrupted run to continue from its last epoch (a one-line error otherwise)."""
    message = runner.resume(run_id, owner=owner)
    gr.Info(message)
    return message


def stop_run(runner: Runner, run_id: str | None, *, owner: str | None = None) -> str:
    """Stop a run this browser launched (or one launched from the server), else say who may."""
    message = runner.stop(run_id, owner=owner)
    gr.Info(message)
    return message


def bind(h: Header, runner: Runner, demo: gr.Blocks, tabs: gr.Tabs) -> None:
    """Wire the header's events."""
    demo.load(guarded(partial(attach, runner)), outputs=[h.run, h.runs_sig, tabs, h.tab], api_name="attach")
    h.timer.tick(partial(poll_runs, runner), inputs=[h.run, h.runs_sig], outputs=[h.run, h.runs_sig],
                 show_progress="hidden", concurrency_limit=None, api_visibility="private")
    h.refresh.click(guarded(partial(refresh_runs, runner)), inputs=[h.run], outputs=[h.run, h.runs_sig],
                    api_name="list_runs")
    clients.bind(h.clients, demo)
    as_caller = [h.clients.token, h.run]
    h.stop.click(guarded(as_client(partial(stop_run, runner))), inputs=as_caller, outputs=[h.message],
                 api_name="stop")
    h.resume.click(guarded(as_client(partial(resume_run, runner))), inputs=as_caller, outputs=[h.message],
                   api_name="resume")
