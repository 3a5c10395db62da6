"""Plotly figure builders for every view. Pure functions of plain data (lists, numpy arrays).

Nothing here reads files or knows about runs, so each builder can be tested on made-up numbers and
reused by any panel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    "compare_curves",
    "accuracy_vs_params",
    "heatmap",
    "spectrum",
    "alignment_stats",
    "alignment_gap",
    "rescale_values",
    "topk_bars",
]

# A 768×3072 ΔW has 2.4 M cells: too heavy to ship to a browser every slider move.
MAX_HEATMAP_SIDE = 192
# Step curves of long runs are thinned to this many points; the shape stays readable.
MAX_CURVE_POINTS = 1500

_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "margin": {"l": 50, "r": 20, "t": 50, "b": 40},
    "legend": {"orientation": "h", "y": -0.18},
}
_METHOD_COLORS = {
    "karst": "#d62728",
    "lora": "#1f77b4",
    "lokr": "#2ca02c",
    "full": "#7f7f7f",
    "probe": "#ff7f0e",
}


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
    fig.add_trace(go.Scatter(x=sx, y=sloss, mode="lines", name="loss", line={"color": "#d62728"}), 1, 1)
    ex = [r["epoch"] for r in epochs]
    fig.add_trace(go.Scatter(x=ex, y=[r.get("val_acc") for r in epochs], mode="lines+markers",
                             name="val acc", line={"color": "#1f77b4"}), 1, 2)
    fig.add_trace(go.Scatter(x=ex, y=[r.get("train_acc") for r in epochs], mode="lines+markers",
                             name="train acc", line={"color": "#9ecae1", "dash": "dot"}), 1, 2)
    fig.add_trace(go.Scatter(x=sx, y=slr, mode="lines", name="lr", line={"color": "#2ca02c"}), 1, 3)
    if total_steps:
        fig.update_xaxes(range=[0, total_steps], row=1, col=1)
        fig.update_xaxes(range=[0, total_steps], row=1, col=3)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=3)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_yaxes(exponentformat="e", row=1, col=3)
    fig.update_layout(**_LAYOUT, height=340)
    return fig


def compare_curves(curves: Mapping[str, tuple[Sequence[Mapping[str, Any]], str]]) -> go.Figure:
    """Validation accuracy and training loss per epoch, one line per run.

    Args:
        curves: label → (epoch records, method name); the method picks the colour family.
    """
    if not curves:
        return empty_figure("Tick runs in the table to overlay their curves.")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "training loss (epoch mean)"))
    for label, (epochs, method) in curves.items():
        color = _METHOD_COLORS.get(method)
        ex = [r["epoch"] for r in epochs]
        fig.add_trace(go.Scatter(x=ex, y=[r.get("val_acc") for r in epochs], mode="lines+markers",
                                 name=label, legendgroup=label, line={"color": color}), 1, 1)
        fig.add_trace(go.Scatter(x=ex, y=[r.get("train_loss") for r in epochs], mode="lines",
                                 name=label, legendgroup=label, showlegend=False,
                                 line={"color": color, "dash": "dot"}), 1, 2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_layout(**_LAYOUT, height=360)
    return fig


def accuracy_vs_params(points: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Accuracy against trainable parameters (log x), one marker per run, coloured by method.

    Args:
        points: dicts with ``label``, ``method``, ``params`` (int) and ``acc`` (0–1).
    """
    usable = [p for p in points if p.get("params") and p.get("acc") is not None]
    if not usable:
        return empty_figure("No finished runs with an accuracy among the ticked ones yet.")
    columns = {key: [p[key] for p in usable] for key in ("label", "method", "params", "acc")}
    fig = px.scatter(
        columns, x="params", y="acc", color="method", text="label", log_x=True,
        color_discrete_map=_METHOD_COLORS, category_orders={"method": sorted(set(columns["method"]))},
        labels={"params": "trainable parameters (log scale)", "acc": "accuracy"},
        title="accuracy vs. trainable parameters",
    )
    fig.update_traces(marker_size=12, textposition="top center",
                      hovertemplate="%{text}<br>%{x:,} trainable<br>acc %{y:.1%}<extra></extra>")
    fig.update_yaxes(tickformat=".0%")
    fig.update_layout(**_LAYOUT, height=380, legend_title_text=None)
    return fig


def heatmap(matrix: np.ndarray, title: str, max_side: int = MAX_HEATMAP_SIDE, height: int = 320) -> go.Figure:
    """Diverging heatmap centred at zero, down-sampled (and titled so) when large."""
    shape = np.shape(matrix)
    small, factor = downsample(matrix, max_side)
    if factor > 1:
        title = f"{title} — {shape[0]}×{shape[1]}, shown {factor}×{factor}-averaged"
    else:
        title = f"{title} — {shape[0]}×{shape[1]}"
    finite = np.abs(small[np.isfinite(small)])
    bound = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    # Red positive, blue negative, white at 0 (rows top-down, square cells: imshow's defaults).
    fig = px.imshow(small, color_continuous_scale="RdBu_r", color_continuous_midpoint=0, zmin=-bound, zmax=bound,
                    labels={"color": "z"})
    fig.update_coloraxes(colorbar={"thickness": 10, "title": None})
    fig.update_layout(**_LAYOUT, height=height, title={"text": title, "font": {"size": 13}})
    return fig


def spectrum(karst_sv: Sequence[float], lora_sv: Sequence[float] | None, karst_label: str,
             lora_label: str) -> go.Figure:
    """Singular values of ΔW (log y) next to those of an equal-budget LoRA."""
    fig = go.Figure()
    sv = np.asarray(karst_sv, dtype=float)
    fig.add_trace(go.Scatter(x=np.arange(1, sv.size + 1), y=sv, mode="lines", name=karst_label,
                             line={"color": _METHOD_COLORS["karst"]}))
    if lora_sv is not None and len(lora_sv):
        lsv = np.asarray(lora_sv, dtype=float)
        lsv = lsv[lsv > 0]  # a rank-r' matrix has r' non-zero values; zeros cannot sit on a log axis
        fig.add_trace(go.Scatter(x=np.arange(1, lsv.size + 1), y=lsv, mode="lines+markers", name=lora_label,
                                 line={"color": _METHOD_COLORS["lora"], "dash": "dash"}))
    fig.update_yaxes(type="log", title_text="singular value", exponentformat="e")
    fig.update_xaxes(title_text="index")
    fig.update_layout(**_LAYOUT, height=320, title={"text": "singular values of ΔW", "font": {"size": 13}})
    return fig


def alignment_stats(stats: Mapping[str, Mapping[str, Sequence[float]]]) -> go.Figure:
    """Per-channel mean and std of a layer's output for each variant, one line per variant.

    Args:
        stats: variant label → {"mean": [...], "std": [...]}, e.g. "pre-trained", "before re-scaling",
            "after re-scaling".
    """
    if not stats:
        return empty_figure("No feature statistics saved for this layer and epoch.")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("per-channel mean", "per-channel std"))
    palette = ["#444444", "#ff7f0e", "#d62728", "#1f77b4"]
    for i, (label, s) in enumerate(stats.items()):
        color = palette[i % len(palette)]
        x = np.arange(len(s["mean"]))
        fig.add_trace(go.Scatter(x=x, y=s["mean"], mode="lines", name=label, legendgroup=label,
                                 line={"color": color, "width": 1}), 1, 1)
        fig.add_trace(go.Scatter(x=x, y=s["std"], mode="lines", name=label, legendgroup=label,
                                 showlegend=False, line={"color": color, "width": 1}), 2, 1)
    fig.update_xaxes(title_text="output channel", row=2, col=1)
    fig.update_layout(**_LAYOUT, height=460)
    return fig


def alignment_gap(epochs: Sequence[int], gaps: Mapping[str, Sequence[float]]) -> go.Figure:
    """Gap to the pre-trained statistics over saved epochs, one line per variant."""
    if not epochs:
        return empty_figure("No epochs saved yet.")
    fig = go.Figure()
    for label, ys in gaps.items():
        fig.add_trace(go.Scatter(x=list(epochs), y=list(ys), mode="lines+markers", name=label))
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="gap (in units of mean σ⁰)")
    fig.update_layout(**_LAYOUT, height=300, title={"text": "gap to pre-trained statistics", "font": {"size": 13}})
    return fig


def rescale_values(s1: Sequence[float] | None, s2: Sequence[float] | None) -> go.Figure:
    """The learned re-scaling ``1 + s1`` and shift ``s2`` per output channel."""
    if s1 is None or s2 is None:
        return empty_figure("This run has no re-scaling (rescale='none' or not a KARST run).")
    s1a, s2a = np.atleast_1d(np.asarray(s1, float)), np.atleast_1d(np.asarray(s2, float))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("scale 1 + s1", "shift s2"))
    kind = "bar" if s1a.size <= 1 else "lines"
    for col, (ys, color) in enumerate(((1 + s1a, "#9467bd"), (s2a, "#8c564b")), start=1):
        x = np.arange(ys.size)
        trace = go.Bar(x=x, y=ys, marker_color=color) if kind == "bar" else go.Scatter(
            x=x, y=ys, mode="lines", line={"color": color, "width": 1})
        fig.add_trace(trace, 1, col)
    fig.update_xaxes(title_text="output channel")
    fig.update_layout(**_LAYOUT, height=280, showlegend=False)
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
