"""Plotly figure builders for every view. Pure functions of plain data (lists, numpy arrays).

Nothing here reads files or knows about runs, so each builder can be tested on made-up numbers and
reused by any panel.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# The library's block-averaging (not striding) keeps a Kronecker product's block pattern visible.
from karst.inspect import downsample

__all__ = [
    "MAX_HEATMAP_SIDE",
    "MAX_CURVE_POINTS",
    "downsample",
    "thin",
    "empty_figure",
    "training_curves",
    "RunCurves",
    "shared_ranges",
    "side_by_side_curves",
    "compare_curves",
    "accuracy_vs_params",
    "heatmap",
    "spectrum",
    "alignment_shifts",
    "alignment_gap",
    "rescale_values",
    "topk_bars",
]

# A 768×3072 ΔW has 2.4 M cells: too heavy to ship to a browser every slider move.
MAX_HEATMAP_SIDE = 192
# Step curves of long runs are thinned to this many points; the shape stays readable.
MAX_CURVE_POINTS = 1500
TRANSPARENT = "rgba(0,0,0,0)"

_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    # See-through, so a figure sits on the page's own background, dark theme included; app.py's CSS
    # gives text and grid lines the page's colours there.
    "paper_bgcolor": TRANSPARENT,
    "plot_bgcolor": TRANSPARENT,
    "margin": {"l": 50, "r": 20, "t": 50, "b": 40},
    # Pinned to the bottom of the figure, below the x-axis title: plotly grows the margin to fit it,
    # so a legend never covers an axis title, however many rows it wraps to.
    "legend": {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0, "xanchor": "left"},
}
_METHOD_COLORS = {
    "karst": "#d62728",
    "lora": "#1f77b4",
    "lokr": "#2ca02c",
    "full": "#7f7f7f",
    "probe": "#ff7f0e",
}


def _epoch_ticks(epochs: Sequence[float]) -> dict[str, Any]:
    """Integer epoch ticks, at most about ten of them."""
    last = max((float(e) for e in epochs), default=1.0)
    return {"tickmode": "linear", "tick0": 0, "dtick": max(1, math.ceil(last / 10))}


def thin(xs: Sequence[float], ys: Sequence[float], max_points: int = MAX_CURVE_POINTS) -> tuple[list, list]:
    """Keep at most ``max_points`` evenly spaced points (always including the last one)."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
    return [xs[i] for i in idx], [ys[i] for i in idx]


def empty_figure(message: str, height: int = 300) -> go.Figure:
    """A blank figure carrying a message, used while there is nothing to draw yet."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": 14, "color": "#666"},
                       xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(**_LAYOUT, height=height, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _line_mode(xs: Sequence[Any]) -> str:
    """A lone point (a one-step run) draws nothing as a line: it gets a marker."""
    return "lines" if len(xs) > 1 else "markers"


def training_curves(steps: Sequence[Mapping[str, Any]], epochs: Sequence[Mapping[str, Any]],
                    total_steps: int | None = None) -> go.Figure:
    """Loss and learning rate per step, train/val accuracy per epoch, side by side.

    Args:
        steps: ``{"type": "step", "step", "epoch", "loss", "lr", ...}`` records.
        epochs: ``{"type": "epoch", "epoch", "train_acc", "val_acc", ...}`` records.
        total_steps: fixes the x range so the curves grow into a known frame.
    """
    fig = make_subplots(rows=1, cols=3, subplot_titles=("training loss", "accuracy", "learning rate"))
    sx, sloss = thin([r["step"] for r in steps], [r["loss"] for r in steps])
    _, slr = thin([r["step"] for r in steps], [r["lr"] for r in steps])
    fig.add_trace(go.Scatter(x=sx, y=sloss, mode=_line_mode(sx), name="loss", line={"color": "#d62728"}), 1, 1)
    ex = [r["epoch"] for r in epochs]
    fig.add_trace(go.Scatter(x=ex, y=[r.get("val_acc") for r in epochs], mode="lines+markers",
                             name="val acc", line={"color": "#1f77b4"}), 1, 2)
    fig.add_trace(go.Scatter(x=ex, y=[r.get("train_acc") for r in epochs], mode="lines+markers",
                             name="train acc", line={"color": "#9ecae1", "dash": "dot"}), 1, 2)
    fig.add_trace(go.Scatter(x=sx, y=slr, mode=_line_mode(sx), name="lr", line={"color": "#2ca02c"}), 1, 3)
    if total_steps:
        fig.update_xaxes(range=[0, total_steps], row=1, col=1)
        fig.update_xaxes(range=[0, total_steps], row=1, col=3)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=1, col=2, **_epoch_ticks(ex))
    fig.update_xaxes(title_text="step", row=1, col=3)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_yaxes(exponentformat="e", row=1, col=3)
    fig.update_layout(**_LAYOUT, height=340)
    return fig


@dataclass(frozen=True)
class RunCurves:
    """One run's records as :func:`side_by_side_curves` draws them.

    Args:
        label: what tells this run apart from the others shown (``karst.runview.distinguishing_labels``).
        color: the run's own colour (``Workspace.run_colors``).
        total_steps / total_epochs: the planned length, so a run in progress grows into a fixed frame.
    """

    label: str
    color: str | None
    steps: Sequence[Mapping[str, Any]]
    epochs: Sequence[Mapping[str, Any]]
    total_steps: int | None = None
    total_epochs: int | None = None


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def shared_ranges(runs: Sequence[RunCurves]) -> dict[str, list[float]]:
    """Axis ranges holding every run's curves: ``step`` and ``epoch`` (x), ``loss`` and ``acc`` (y).

    Loss starts at 0 so two runs' heights compare directly; a diverged run's NaN or Inf losses
    are left out of the range.
    """
    last_step = max([1.0, *_finite([r.get("step") for run in runs for r in run.steps]),
                     *_finite([run.total_steps for run in runs])])
    epochs = _finite([r.get("epoch") for run in runs for r in run.epochs])
    first_epoch = min(epochs, default=1.0)
    last_epoch = max([first_epoch, *epochs, *_finite([run.total_epochs for run in runs])])
    pad = max(0.1, 0.04 * (last_epoch - first_epoch))  # markers at the ends stay whole
    top = max(_finite([r.get("loss") for run in runs for r in run.steps]), default=0.0)
    return {"step": [0.0, last_step], "epoch": [first_epoch - pad, last_epoch + pad],
            "loss": [0.0, 1.05 * top if top > 0 else 1.0], "acc": [0.0, 1.02]}


def _run_figure(run: RunCurves, ranges: Mapping[str, list[float]], label_lines: int) -> go.Figure:
    """Loss over steps above accuracy over epochs, all in the run's colour, on the given ranges, with
    room for ``label_lines`` lines of label above (the same in every figure, so the panels line up)."""
    color = run.color or _METHOD_COLORS["karst"]
    # Axis titles, not panel titles, name the panels: the figure stays short enough for a projector.
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.2)
    sx, sloss = thin([r["step"] for r in run.steps], [r["loss"] for r in run.steps])
    fig.add_trace(go.Scatter(x=sx, y=sloss, mode=_line_mode(sx), name="loss",
                             line={"color": color}, marker={"color": color}, cliponaxis=False), 1, 1)
    ex = [r["epoch"] for r in run.epochs]
    fig.add_trace(go.Scatter(x=ex, y=[r.get("val_acc") for r in run.epochs], mode="lines+markers",
                             name="val acc", line={"color": color}), 2, 1)
    fig.add_trace(go.Scatter(x=ex, y=[r.get("train_acc") for r in run.epochs], mode="lines+markers",
                             name="train acc", line={"color": color, "dash": "dot"}, marker={"symbol": "circle-open"}),
                  2, 1)
    fig.update_xaxes(range=ranges["step"], title_text="step", row=1, col=1)
    fig.update_xaxes(range=ranges["epoch"], title_text="epoch", row=2, col=1, **_epoch_ticks(ranges["epoch"]))
    fig.update_yaxes(range=ranges["loss"], title_text="training loss", row=1, col=1)
    fig.update_yaxes(range=ranges["acc"], tickformat=".0%", title_text="accuracy", row=2, col=1)
    # The run's label over both panels, in its colour: the key to which side is which run.
    lines = _label_lines(run.label)
    fig.add_annotation(text="<br>".join(f"<b>{line}</b>" for line in lines), xref="paper", yref="paper", x=0, y=1,
                       yshift=12, xanchor="left", yanchor="bottom", align="left", showarrow=False,
                       font={"size": 15, "color": color})
    fig.update_layout(**_LAYOUT, height=400 + 20 * label_lines)
    fig.update_layout(margin={"t": 24 + 20 * label_lines})
    return fig


def _label_lines(label: str, width: int = 34) -> list[str]:
    """A run label broken at its " · " separators into lines of about ``width`` characters (plotly does not
    wrap text: a long label would run off a phone-wide figure), HTML-escaped (a user's name may hold '<')."""
    lines: list[str] = []
    for part in label.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return [html.escape(line, quote=False) for line in lines]


def side_by_side_curves(runs: Sequence[RunCurves]) -> list[go.Figure]:
    """One figure per run, every one on the same x and y ranges, so curves compare across figures.

    Args:
        runs: the runs to draw, each with its label and colour.
    """
    ranges = shared_ranges(runs)
    label_lines = max((len(_label_lines(run.label)) for run in runs), default=1)
    return [_run_figure(run, ranges, label_lines) for run in runs]


def compare_curves(curves: Mapping[str, tuple[Sequence[Mapping[str, Any]], str | None]]) -> go.Figure:
    """Validation accuracy and training loss per epoch, one line per run.

    Args:
        curves: label → (epoch records, the run's colour).
    """
    if not curves:
        return empty_figure("Tick runs in the table to overlay their curves.")
    # Stacked, sharing the epoch axis: readable at any width, a phone's included.
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("validation accuracy", "training loss (epoch mean)"))
    for label, (epochs, color) in curves.items():
        ex = [r["epoch"] for r in epochs]
        fig.add_trace(go.Scatter(x=ex, y=[r.get("val_acc") for r in epochs], mode="lines+markers",
                                 name=label, legendgroup=label, line={"color": color}), 1, 1)
        fig.add_trace(go.Scatter(x=ex, y=[r.get("train_loss") for r in epochs], mode="lines+markers",
                                 name=label, legendgroup=label, showlegend=False,
                                 line={"color": color, "dash": "dot"}), 2, 1)
    fig.update_xaxes(**_epoch_ticks([r["epoch"] for e, _ in curves.values() for r in e]))
    fig.update_xaxes(title_text="epoch", row=2, col=1)
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_layout(**_LAYOUT, height=520)
    fig.update_layout(margin={"t": 70})
    return fig


def accuracy_vs_params(points: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Accuracy against trainable parameters (log x), one marker per run in the run's colour.

    Args:
        points: dicts with ``label``, ``params`` (int), ``acc`` (0–1) and optionally ``color`` and
            ``method`` (the colour by default).
    """
    usable = [p for p in points if p.get("params") and p.get("acc") is not None]
    if not usable:
        return empty_figure("No finished runs with an accuracy among the ticked ones yet.")
    columns = {key: [p[key] for p in usable] for key in ("label", "params", "acc")}
    colors = {p["label"]: p.get("color") or _METHOD_COLORS.get(p.get("method", ""), "#444") for p in usable}
    fig = px.scatter(
        columns, x="params", y="acc", color="label", text="label", log_x=True,
        color_discrete_map=colors, category_orders={"label": columns["label"]},
        labels={"params": "trainable parameters (log scale)", "acc": "accuracy"},
        title="accuracy vs. trainable parameters",
    )
    # Labels in the legend and on hover: written next to each marker they collide and get clipped.
    fig.update_traces(marker_size=13, mode="markers",
                      hovertemplate="%{text}<br>%{x:,} trainable<br>acc %{y:.1%}<extra></extra>")
    fig.update_yaxes(tickformat=".0%")
    fig.update_layout(**_LAYOUT, height=400, legend_title_text=None)
    return fig


def heatmap(matrix: np.ndarray, title: str, max_side: int = MAX_HEATMAP_SIDE, height: int = 320,
            bound: float | None = None, block: tuple[int, int] | None = None,
            axes: tuple[str, str] = ("output index i", "input index j")) -> go.Figure:
    """Diverging heatmap centred at zero, down-sampled (and titled so) when large.

    Args:
        bound: the colour scale's ±limit (e.g. the same for every epoch); None: this matrix's max |value|.
        block: (rows, cols) of one block: grid lines are drawn at the block edges (the m×m blocks
            of a Kronecker product). The axes show the matrix's true indices, also when averaged.
    """
    shape = np.shape(matrix)
    small, factor = downsample(matrix, max_side)
    size = f"{shape[0]}×{shape[1]}"
    title = f"{title} — {size}, shown {factor}×{factor}-averaged" if factor > 1 else f"{title} — {size}"
    if bound is None or not bound > 0:
        finite = np.abs(small[np.isfinite(small)])
        bound = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    # Cell centres in the matrix's own indices, so hover and ticks read true rows and columns.
    ys = np.arange(small.shape[0]) * factor + (factor - 1) / 2
    xs = np.arange(small.shape[1]) * factor + (factor - 1) / 2
    square = max(shape) <= 32
    fig = px.imshow(small, x=xs, y=ys, color_continuous_scale="RdBu_r", zmin=-bound, zmax=bound,
                    aspect="equal" if square else "auto", labels={"x": axes[1], "y": axes[0], "color": "value"})
    if block and (block[0] < shape[0] or block[1] < shape[1]):
        line = {"color": "rgba(60,60,60,0.55)", "width": 1}
        for k in range(block[0], shape[0], block[0]):
            fig.add_shape(type="line", x0=-0.5, x1=shape[1] - 0.5, y0=k - 0.5, y1=k - 0.5, line=line)
        for k in range(block[1], shape[1], block[1]):
            fig.add_shape(type="line", y0=-0.5, y1=shape[0] - 0.5, x0=k - 0.5, x1=k - 0.5, line=line)
    fig.update_coloraxes(colorbar={"thickness": 10, "title": None})
    fig.update_layout(**_LAYOUT, height=height, title={"text": title, "font": {"size": 13}})
    fig.update_layout(margin={"t": 60})
    return fig


def spectrum(karst_sv: Sequence[float], lora_sv: Sequence[float] | None, karst_label: str,
             lora_label: str, trained: Mapping[str, Any] | None = None,
             marker_rank: int | None = None) -> go.Figure:
    """Singular values of ΔW (log y) and their cumulative energy, with LoRA references.

    Args:
        lora_sv: singular values of a reference (e.g. the truncated SVD of this ΔW), dashed.
        trained: a trained LoRA run's ``{"label", "sv", "energy"}``, dotted.
        marker_rank: a rank to mark on the energy panel (the equal-budget LoRA rank).
    """
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.18,
                        subplot_titles=("singular values of ΔW", "cumulative energy ‖·‖²_F"))
    sv = np.asarray(karst_sv, dtype=float)
    sv = sv[sv > sv.max() * 1e-9] if sv.any() else sv  # numerical zeros past the rank would fill the log axis
    idx = np.arange(1, sv.size + 1)
    color = _METHOD_COLORS["karst"]
    fig.add_trace(go.Scatter(x=idx, y=sv, mode="lines", name=karst_label, legendgroup="main",
                             line={"color": color}), 1, 1)
    power = sv**2
    if power.sum() > 0:
        fig.add_trace(go.Scatter(x=idx, y=np.cumsum(power) / power.sum(), mode="lines", name=karst_label,
                                 legendgroup="main", showlegend=False, line={"color": color}), 2, 1)
    if lora_sv is not None and len(lora_sv):
        lsv = np.asarray(lora_sv, dtype=float)
        lsv = lsv[lsv > 0]  # a rank-r' matrix has r' non-zero values; zeros cannot sit on a log axis
        fig.add_trace(go.Scatter(x=np.arange(1, lsv.size + 1), y=lsv, mode="lines+markers", name=lora_label,
                                 line={"color": _METHOD_COLORS["lora"], "dash": "dash"}), 1, 1)
    if trained is not None:
        tsv = np.asarray(trained["sv"], dtype=float)
        tsv = tsv[tsv > tsv.max() * 1e-6] if tsv.any() else tsv[:0]
        name, line = f"trained LoRA: {trained['label']}", {"color": trained.get("color") or "#17becf", "dash": "dot"}
        energy = np.asarray(trained["energy"], dtype=float)[: max(tsv.size, 1)]
        fig.add_trace(go.Scatter(x=np.arange(1, tsv.size + 1), y=tsv, mode="lines+markers", name=name,
                                 legendgroup="trained", line=line), 1, 1)
        fig.add_trace(go.Scatter(x=np.arange(1, energy.size + 1), y=energy, mode="lines+markers", name=name,
                                 legendgroup="trained", showlegend=False, line=line), 2, 1)
    if marker_rank:
        fig.add_vline(x=marker_rank, line={"color": _METHOD_COLORS["lora"], "dash": "dash", "width": 1},
                      row=2, col=1, annotation_text=f"r' = {marker_rank}", annotation_font_size=11)
    fig.update_yaxes(type="log", title_text="singular value", exponentformat="e", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title_text="share of ‖ΔW‖²", row=2, col=1)
    fig.update_xaxes(title_text="index k", row=2, col=1)
    fig.update_layout(**_LAYOUT, height=560)
    fig.update_layout(margin={"t": 70})
    return fig


def alignment_shifts(shifts: Mapping[str, Sequence[float]], shares: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Per-channel change of the distance to the reference, sorted, one panel per comparison.

    Args:
        shifts: comparison ("rescaling", "training") → per-channel change (negative = closer).
        shares: comparison → {"closer": share, "further": share}, written above each panel.
    """
    if not shifts:
        return empty_figure("Nothing to compare at this epoch (epoch 0, or the reference is this run's own "
                            "frozen output).")
    titles = {"rescaling": "re-scaling: after − before", "training": "training: adapted − frozen"}
    names = list(shifts)
    # Stacked, not side by side: each panel keeps the full width, down to a phone's.
    fig = make_subplots(rows=len(names), cols=1, vertical_spacing=0.3 / len(names), subplot_titles=[
        f"{titles.get(k, k)}<br>{100 * shares[k]['closer']:.0f}% closer, {100 * shares[k]['further']:.0f}% further"
        for k in names])
    for row, key in enumerate(names, start=1):
        ys = np.sort(np.asarray(shifts[key], dtype=float))
        colors = np.where(ys < 0, "#2ca02c", np.where(ys > 0, "#d62728", "#999999"))
        fig.add_trace(go.Bar(x=np.arange(1, ys.size + 1), y=ys, marker={"color": colors, "line": {"width": 0}},
                             name=titles.get(key, key), showlegend=False,
                             hovertemplate="change %{y:.3g}<extra></extra>"), row, 1)
        fig.update_yaxes(title_text="Δ distance (σ_ref)", row=row, col=1)
    fig.update_xaxes(title_text="channels, sorted by change", row=len(names), col=1)
    fig.update_layout(**_LAYOUT, height=140 + 240 * len(names), bargap=0)
    fig.update_layout(margin={"t": 85})  # room for the panel's own label above the first title
    return fig


def alignment_gap(series: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Gap to the reference over epochs, one colour per run.

    Args:
        series: per run ``{"label", "color", "epochs", "after", "before" (or None), "frozen"}`` as
            from ``karst.inspect.gap_history``; the first is the selected run (drawn thicker). Solid:
            the adapted output; dotted: before re-scaling; grey dashes: the frozen model on the task.
    """
    series = [s for s in series if s.get("epochs")]
    if not series:
        return empty_figure("No epochs with statistics yet.")
    fig = go.Figure()
    frozen = series[0].get("frozen")
    if frozen is not None:
        fig.add_hline(y=frozen, line={"color": "#888", "dash": "dash", "width": 1},
                      annotation_text="frozen model on this task", annotation_position="top left",
                      annotation_font_size=11)
    for i, s in enumerate(series):
        color, width = s.get("color"), 3 if i == 0 else 1.8
        fig.add_trace(go.Scatter(x=list(s["epochs"]), y=list(s["after"]), mode="lines+markers", name=s["label"],
                                 legendgroup=s["label"], line={"color": color, "width": width}))
        if s.get("before"):
            fig.add_trace(go.Scatter(x=list(s["epochs"]), y=list(s["before"]), mode="lines",
                                     name=f"{s['label']} (before re-scaling)", legendgroup=s["label"],
                                     showlegend=False, line={"color": color, "width": 1.2, "dash": "dot"}))
    if any(s.get("before") for s in series):  # one legend entry explains every dotted line
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="dotted: before re-scaling",
                                 line={"color": "#666", "width": 1.2, "dash": "dot"}))
    fig.update_xaxes(title_text="epoch", **_epoch_ticks([e for s in series for e in s["epochs"]]))
    fig.update_yaxes(title_text="gap to reference (σ_ref)")
    fig.update_layout(**_LAYOUT, height=380)
    return fig


def rescale_values(s1: Sequence[float] | None, s2: Sequence[float] | None) -> go.Figure:
    """The learned re-scaling ``1 + s1`` and shift ``s2`` per output channel."""
    if s1 is None or s2 is None:
        return empty_figure("This run has no re-scaling (rescale='none' or not a KARST run).")
    s1a, s2a = np.atleast_1d(np.asarray(s1, float)), np.atleast_1d(np.asarray(s2, float))
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.2, subplot_titles=("scale 1 + s1", "shift s2"))
    kind = "bar" if s1a.size <= 1 else "lines"
    for row, (ys, color) in enumerate(((1 + s1a, "#9467bd"), (s2a, "#8c564b")), start=1):
        x = np.arange(ys.size)
        trace = go.Bar(x=x, y=ys, marker_color=color) if kind == "bar" else go.Scatter(
            x=x, y=ys, mode="lines", line={"color": color, "width": 1})
        fig.add_trace(trace, row, 1)
    fig.update_xaxes(title_text="output channel", row=2, col=1)
    fig.update_layout(**_LAYOUT, height=420, showlegend=False)
    fig.update_layout(margin={"t": 70})
    return fig


def topk_bars(labels: Sequence[str], probs: Sequence[float], title: str = "top-k prediction") -> go.Figure:
    """Horizontal bars, most probable class on top."""
    if not labels:
        return empty_figure("No prediction yet.")
    fig = go.Figure(go.Bar(x=list(probs)[::-1], y=list(labels)[::-1], orientation="h",
                           text=[f"{p:.1%}" for p in list(probs)[::-1]], textposition="auto",
                           marker_color="#d62728"))
    fig.update_xaxes(range=[0, 1], tickformat=".0%", title_text="probability")
    fig.update_layout(**_LAYOUT, height=max(220, 48 * len(labels) + 90),
                      title={"text": title, "font": {"size": 13}})
    return fig
