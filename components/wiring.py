"""Shared event wiring for views that follow the selected run but only work while visible.

Kernels, Alignment and Download & predict all do the same thing: when their tab opens, or when
the run changes while they are open, refresh their controls (layer lists, epoch sliders…) and then
redraw. Hidden tabs skip the work so a training run keeps the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from .guard import guarded

__all__ = ["follow_run"]


def _when_visible(tab_id: str, fn: Callable[..., Any], n_outputs: int) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        *inputs, visible_tab = args
        if visible_tab != tab_id:
            return (gr.skip(),) * n_outputs if n_outputs > 1 else gr.skip()
        return fn(*inputs)

    return wrapper


def follow_run(*, tab: gr.Tab, tab_id: str, run: gr.Dropdown, current_tab: gr.State,
               refresh: Callable[..., Any], refresh_inputs: Sequence[gr.components.Component],
               refresh_outputs: Sequence[gr.components.Component], api_name: str,
               redraw: Callable[..., Any] | None = None, redraw_inputs: Sequence = (),
               redraw_outputs: Sequence = ()) -> None:
    """Refresh (then redraw) on tab open, and on run change while ``tab_id`` is the visible tab.

    Args:
        refresh: updates controls from the run (e.g. layer choices); guarded here.
        redraw: optional second step that draws the views from the refreshed controls.
    """
    refresh_g, redraw_g = guarded(refresh), guarded(redraw) if redraw else None
    opened = tab.select(refresh_g, list(refresh_inputs), list(refresh_outputs), api_name=api_name)
    changed = run.change(_when_visible(tab_id, refresh_g, len(refresh_outputs)),
                         [*refresh_inputs, current_tab], list(refresh_outputs), api_visibility="private")
    if redraw_g is not None:
        opened.then(redraw_g, list(redraw_inputs), list(redraw_outputs), api_visibility="private")
        changed.then(_when_visible(tab_id, redraw_g, len(redraw_outputs)), [*redraw_inputs, current_tab],
                     list(redraw_outputs), api_visibility="private")
