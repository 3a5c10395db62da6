"""Pure helpers of the app: figure builders, formatting, launch flags.

No server here (see test_app_e2e.py / test_app_browser.py); these check behaviour on made-up data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from app import parse_args, parse_auth
from components import fmt, plots


# ---------------------------------------------------------------------------- plots
@pytest.mark.parametrize("shape,max_side,factor", [((8, 8), 160, 1), ((768, 3072), 192, 16), ((193, 5), 192, 2)])
def test_downsample_bounds_size_and_reports_factor(shape, max_side, factor):
    a = np.random.default_rng(0).normal(size=shape)
    small, f = plots.downsample(a, max_side)
    assert f == factor
    assert max(small.shape) <= max_side
    assert small.shape == (-(-shape[0] // f), -(-shape[1] // f))


def test_downsample_averages_blocks_and_keeps_kronecker_structure():
    c = np.array([[1.0, -1.0], [0.5, 0.0]])
    kron = np.kron(c, np.ones((100, 100)))  # 200×200, four constant blocks
    small, f = plots.downsample(kron, 50)
    assert f == 4
    np.testing.assert_allclose(small, np.kron(c, np.ones((25, 25))))


def test_downsample_ragged_edge_uses_only_real_cells():
    small, f = plots.downsample(np.ones((5, 3)), 2)
    assert f == 3 and np.all(small == 1.0)  # NaN padding must not leak into the mean


def test_thin_keeps_endpoints_and_limit():
    xs = list(range(10_000))
    tx, ty = plots.thin(xs, xs, 100)
    assert len(tx) <= 100 and tx[0] == 0 and tx[-1] == 9_999 and tx == ty


def test_heatmap_title_says_when_downsampled():
    big = plots.heatmap(np.ones((768, 3072)), "ΔW")
    assert "averaged" in big.layout.title.text and "768×3072" in big.layout.title.text
    small = plots.heatmap(np.ones((8, 8)), "C_i")
    assert "averaged" not in small.layout.title.text
    assert np.asarray(big.data[0].z).shape[1] <= plots.MAX_HEATMAP_SIDE


def test_training_curves_has_loss_acc_lr():
    steps = [{"step": i, "epoch": i / 10, "loss": 2.0 / (i + 1), "lr": 1e-3} for i in range(30)]
    epochs = [{"epoch": e, "train_acc": 0.5, "val_acc": 0.4 + 0.1 * e} for e in range(1, 4)]
    fig = plots.training_curves(steps, epochs, total_steps=100)
    names = [t.name for t in fig.data]
    assert {"loss", "val acc", "train acc", "lr"} <= set(names)
    np.testing.assert_allclose(fig.data[names.index("val acc")].y, [0.5, 0.6, 0.7])


def test_accuracy_vs_params_is_log_x_and_skips_runs_without_numbers():
    pts = [{"label": "a", "method": "karst", "params": 1000, "acc": 0.8},
           {"label": "b", "method": "lora", "params": 5000, "acc": 0.7},
           {"label": "c", "method": "lora", "params": None, "acc": None}]
    fig = plots.accuracy_vs_params(pts)
    assert fig.layout.xaxis.type == "log"
    assert sum(len(t.x) for t in fig.data) == 2


@pytest.mark.parametrize("builder,args", [
    (plots.compare_curves, ({},)),
    (plots.accuracy_vs_params, ([],)),
    (plots.alignment_shifts, ({}, {})),
    (plots.alignment_gap, ([],)),
    (plots.rescale_values, (None, None)),
    (plots.topk_bars, ([], [])),
])
def test_builders_show_a_message_when_there_is_nothing_to_draw(builder, args):
    fig = builder(*args)
    assert isinstance(fig, go.Figure) and fig.layout.annotations


def test_alignment_shifts_sorted_and_coloured_by_direction():
    shift = np.array([0.2, -0.1, 0.0, -0.3])
    fig = plots.alignment_shifts({"rescaling": shift}, {"rescaling": {"closer": 0.5, "further": 0.25}})
    bar = fig.data[0]
    assert list(bar.y) == sorted(shift) and list(bar.marker.color[:2]) == ["#2ca02c"] * 2
    assert bar.marker.color[-1] == "#d62728"
    assert "50% closer" in fig.layout.annotations[0].text


def test_alignment_gap_one_colour_per_run_integer_epochs():
    series = [{"label": "karst · rescale channel", "color": "#d62728", "epochs": [0, 1, 2], "after": [0.5, 0.4, 0.3],
               "before": [0.5, 0.45, 0.35], "frozen": 0.5},
              {"label": "lora", "color": "#1f77b4", "epochs": [0, 1], "after": [0.5, 0.6], "before": None,
               "frozen": 0.5}]
    fig = plots.alignment_gap(series)
    colours = {t.name: t.line.color for t in fig.data}
    assert colours["karst · rescale channel"] == colours["karst · rescale channel (before re-scaling)"] == "#d62728"
    assert colours["lora"] == "#1f77b4" and len(fig.data) == 4  # + one legend entry for every dotted line
    assert [t.name for t in fig.data if t.showlegend is not False] == [
        "karst · rescale channel", "lora", "dotted: before re-scaling"]
    assert fig.layout.xaxis.dtick == 1
    # The legend sits at the bottom of the figure, below the axis title, never over it.
    assert fig.layout.legend.yref == "container" and fig.layout.legend.yanchor == "bottom"


def test_topk_bars_most_probable_on_top():
    fig = plots.topk_bars(["cat", "dog"], [0.9, 0.1])
    assert list(fig.data[0].y) == ["dog", "cat"]  # plotly draws the last bar on top


def test_spectrum_log_scale_energy_and_lora_references():
    sv = np.linspace(1, 0.1, 32)
    fig = plots.spectrum(sv, np.linspace(1, 0.5, 4), "karst", "lora")
    assert fig.layout.yaxis.type == "log" and [t.name for t in fig.data] == ["karst", "karst", "lora"]
    energy = fig.data[1].y
    assert energy[-1] == pytest.approx(1.0) and np.all(np.diff(energy) >= 0)
    trained = {"label": "lora r8", "sv": np.array([2.0, 1.0, 0.0]), "energy": np.array([0.8, 1.0, 1.0])}
    fig = plots.spectrum(sv, None, "karst", "lora", trained=trained, marker_rank=2)
    names = [t.name for t in fig.data]
    assert names.count("trained LoRA: lora r8") == 2 and len(fig.data[2].y) == 2  # zero singular values dropped


def test_heatmap_true_indices_block_grid_and_fixed_scale():
    m = np.kron(np.array([[1.0, -1.0], [0.5, 0.0]]), np.ones((300, 40)))  # 600×80, blocks of 300×40
    fig = plots.heatmap(m, "ΔW", bound=4.0, block=(300, 40))
    z = fig.data[0]
    assert z.x[0] == pytest.approx(1.5) and z.y[-1] == pytest.approx(597.5)  # 4×4-averaged, true indices
    assert fig.layout.coloraxis.cmin == -4.0 and fig.layout.coloraxis.cmax == 4.0
    assert len(fig.layout.shapes) == 2  # one horizontal and one vertical block edge
    assert plots.heatmap(m, "ΔW").layout.coloraxis.cmax == pytest.approx(1.0)


# ---------------------------------------------------------------------------- formatting
@pytest.mark.parametrize("n,text", [(None, "–"), (999, "999"), (9_999, "9,999"), (12_345, "12.3 k"),
                                    (5_700_000, "5.7 M")])
def test_count(n, text):
    assert fmt.count(n) == text


@pytest.mark.parametrize("s,text", [(None, "–"), (5, "0:05"), (65.4, "1:05"), (3725, "1:02:05"), (-1, "–")])
def test_duration(s, text):
    assert fmt.duration(s) == text


def test_progress_html_shows_fraction_eta_and_queue_place():
    running = fmt.progress_html({"status": "running", "step": 25, "total_steps": 100, "epoch": 1, "epochs": 4,
                                 "eta_s": 30})
    assert "width:25.0%" in running and "ETA 0:30" in running and "step 25/100" in running
    queued = fmt.progress_html({"status": "queued", "step": 0, "total_steps": 0}, queue_position=2)
    assert "place 2 in the queue" in queued
    assert "width:100.0%" in fmt.progress_html({"status": "completed", "step": 3, "total_steps": 9})


def test_progress_html_escapes_text():
    out = fmt.progress_html({"status": "<script>", "step": 0, "total_steps": 0})
    assert "<script>" not in out and "&lt;script&gt;" in out


# ---------------------------------------------------------------------------- launch flags
def test_safe_defaults():
    o = parse_args([])
    assert o.host == "127.0.0.1" and o.share is False and o.auth is None and o.max_file_size


def test_flags(tmp_path):
    o = parse_args(["--host", "0.0.0.0", "--port", "7999", "--runs-dir", str(tmp_path), "--auth", "ann:p:w",
                    "--share"])
    assert (o.host, o.port, o.runs_dir, o.auth, o.share) == ("0.0.0.0", 7999, Path(tmp_path), ("ann", "p:w"), True)


@pytest.mark.parametrize("bad", ["nopassword", ":pw", "user:"])
def test_parse_auth_rejects_incomplete(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_auth(bad)
