"""Small, pure formatting helpers shared by the panels (numbers, durations, the progress bar)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

__all__ = ["count", "duration", "rough_duration", "percent", "progress_html", "STATUS_ICONS", "status_line",
           "field_table", "icon", "ICON_OK", "ICON_ERROR", "ICON_WARN", "ICON_INFO"]

# Icons drawn as inline SVG: they render everywhere, unlike emoji on a PC without an emoji font.
# (Gradio's Markdown sanitiser drops viewBox, so coordinates are in pixels of a 16×16 box.)
_SVG = ('<svg class="karst-icon karst-icon-{kind}" width="16" height="16" role="img" aria-label="{kind}" '
        'style="display:inline-block;vertical-align:-3px;margin-right:2px">{body}</svg>')
_ICON_BODIES = {
    "ok": '<circle cx="8" cy="8" r="7.5" fill="#2ca02c"/><path d="M4.2 8.4l2.6 2.6 5-5.2" stroke="#fff" '
          'stroke-width="2" fill="none"/>',
    "error": '<circle cx="8" cy="8" r="7.5" fill="#d62728"/><path d="M5 5l6 6M11 5l-6 6" stroke="#fff" '
             'stroke-width="2"/>',
    "warn": '<path d="M8 1L15.5 14.5H0.5Z" fill="#e68a00"/><path d="M8 5.5v4.5M8 11.5v1.5" stroke="#fff" '
            'stroke-width="1.8"/>',
    "info": '<circle cx="8" cy="8" r="7.5" fill="#1f77b4"/><path d="M8 7v5M8 4v1.6" stroke="#fff" stroke-width="2"/>',
    "running": '<circle cx="8" cy="8" r="7.5" fill="#1f77b4"/><path d="M6 4.5v7l5.5-3.5Z" fill="#fff"/>',
    "queued": '<circle cx="8" cy="8" r="7" fill="none" stroke="#7f7f7f" stroke-width="1.8"/><path d="M8 4v4.5l3 1.8" '
              'stroke="#7f7f7f" stroke-width="1.8" fill="none"/>',
    "stopped": '<circle cx="8" cy="8" r="7.5" fill="#7f7f7f"/><rect x="5" y="5" width="6" height="6" fill="#fff"/>',
}


def icon(kind: str) -> str:
    """An inline SVG icon: ok, error, warn, info, running, queued or stopped."""
    return _SVG.format(kind=kind, body=_ICON_BODIES[kind])


ICON_OK, ICON_ERROR, ICON_WARN, ICON_INFO = icon("ok"), icon("error"), icon("warn"), icon("info")

STATUS_ICONS: dict[str, str] = {
    "queued": icon("queued"),
    "running": icon("running"),
    "completed": icon("ok"),
    "failed": icon("error"),
    "cancelled": icon("stopped"),
    "diverged": icon("warn"),
    "interrupted": icon("stopped"),
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


def rough_duration(seconds: float | None) -> str:
    """An estimate in words: '40 s', '12 min', '3.5 h', '12 days'; '–' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


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
    parts = [state]
    if state == "queued" and queue_position is not None:
        parts.append(f"place {queue_position} in the queue")
    if total:
        parts.append(f"epoch {status.get('epoch', 0)}/{status.get('epochs', '?')}")
        parts.append(f"step {step}/{total}")
    if state == "running":
        parts.append(f"ETA {duration(status.get('eta_s'))}")
    color = {"failed": "#d62728", "diverged": "#ff7f0e", "cancelled": "#7f7f7f",
             "interrupted": "#7f7f7f"}.get(state, "#2ca02c")
    text = STATUS_ICONS.get(state, "") + html.escape(" · ".join(parts))
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


def field_table(rows: list[tuple[str, str]]) -> str:
    """(field, value) rows as a two-column Markdown table; values are escaped (they may be user text)."""
    def cell(text: str) -> str:
        return html.escape(str(text)).replace("|", "&#124;").replace("\n", "<br>")

    lines = ["| Field | Value |", "|---|---|"]
    lines += [f"| **{cell(k)}** | {cell(v)} |" for k, v in rows]
    return "\n".join(lines)
