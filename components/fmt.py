"""Small, pure formatting helpers shared by the panels (numbers, durations, the progress bar)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

__all__ = ["count", "duration", "percent", "progress_html", "STATUS_ICONS", "status_line"]

STATUS_ICONS: dict[str, str] = {
    "queued": "⏳",
    "running": "▶️",
    "completed": "✅",
    "failed": "❌",
    "cancelled": "⏹️",
    "diverged": "⚠️",
    "interrupted": "⛔",
}


def count(n: int | None) -> str:
    """1234567 → '1.23 M'; small numbers stay exact so the parameter check reads naturally."""
    if n is None:
        return "–"
    if n < 10_000:
        return f"{n:,}"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return str(n)


def duration(seconds: float | None) -> str:
    """Seconds → 'm:ss' or 'h:mm:ss'; '–' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def percent(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def progress_html(status: Mapping[str, Any] | None, queue_position: int | None = None) -> str:
    """A progress bar with step/epoch/ETA text, from a run's ``status.json`` contents."""
    if not status:
        return "<div class='karst-progress'><div class='karst-progress-text'>No run selected.</div></div>"
    state = status.get("status", "?")
    step, total = int(status.get("step") or 0), int(status.get("total_steps") or 0)
    frac = 1.0 if state == "completed" else (step / total if total else 0.0)
    frac = min(max(frac, 0.0), 1.0)
    parts = [f"{STATUS_ICONS.get(state, '')} {state}"]
    if state == "queued" and queue_position is not None:
        parts.append(f"place {queue_position} in the queue")
    if total:
        parts.append(f"epoch {status.get('epoch', 0)}/{status.get('epochs', '?')}")
        parts.append(f"step {step}/{total}")
    if state == "running":
        parts.append(f"ETA {duration(status.get('eta_s'))}")
    color = {"failed": "#d62728", "diverged": "#ff7f0e", "cancelled": "#7f7f7f",
             "interrupted": "#7f7f7f"}.get(state, "#2ca02c")
    text = html.escape(" · ".join(parts))
    return (
        "<div class='karst-progress' role='progressbar' "
        f"aria-valuenow='{frac * 100:.0f}' aria-valuemin='0' aria-valuemax='100'>"
        "<div style='background:#eee;border-radius:6px;height:14px;overflow:hidden'>"
        f"<div style='width:{frac * 100:.1f}%;background:{color};height:14px'></div></div>"
        f"<div class='karst-progress-text' style='margin-top:4px'>{text} ({frac * 100:.0f}%)</div></div>"
    )


def status_line(run_id: str, status: Mapping[str, Any] | None) -> str:
    """One Markdown line about a run: id, state and its message (e.g. why it failed)."""
    if not status:
        return f"**{run_id}**: no status yet."
    state = status.get("status", "?")
    msg = status.get("message") or ""
    line = f"{STATUS_ICONS.get(state, '')} **{run_id}** — {state}"
    if status.get("device"):
        line += f" on `{status['device']}`"
    return line + (f": {msg}" if msg else "")
