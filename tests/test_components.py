"""Pure helpers of the app: figure builders, formatting, launch flags.

No server here (see test_app_e2e.py / test_app_browser.py); these check behaviour on made-up data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import pytest

from app import parse_args, parse_auth
from components import fmt, plots, setup, texts
from components import predict as predict_panel
from karst.config import MethodConfig
from karst.export import Confidence
from karst.preflight import SetupForm
from karst.workspace import Prediction


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


def test_runs_per_browser_flag(capsys):
    assert parse_args([]).max_runs_per_browser == 3
    assert parse_args(["--max-runs-per-browser", "0"]).max_runs_per_browser == 0  # 0: no limit
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit):
            parse_args(["--max-runs-per-browser", bad])
        assert "is not a whole number of 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["nopassword", ":pw", "user:"])
def test_parse_auth_rejects_incomplete(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_auth(bad)


# ---------------------------------------------------------------------------- Setup: formula panel, warm-up
DEFAULT_FORMULA = {"n_kernels": 2.0, "stack_dim": 8.0, "rank": 8.0, "rescale": "channel", "lora_alpha": 16.0}


@pytest.mark.parametrize("method,says,not_says", [
    ("karst", [r"\Delta W = \sum_{i=1}^{2} C_i \otimes (A_i B_i)", r"C_i \in \mathbb{R}^{8\times 8}",
               r"y = (1 + s_1) \odot (W_0 x + b_0 + \Delta W x) + s_2", "N m r = 128",
               r"+ 2\,d_{out} $$" + "\n" + r"$$ = 128 + 2\,(d_{in}+d_{out}) + 2\,d_{out} $$"], [r"\alpha"]),
    ("lora", [r"\Delta W = \frac{\alpha}{r}\,B A = \frac{16}{8}\,B A = 2\,B A", r"\alpha/r = 16/8 = 2",
              r"B \in \mathbb{R}^{d_{out}\times 8}", r"r\,(d_{in}+d_{out}) = 8\,(d_{in}+d_{out})"], ["C_i", "s_1"]),
    ("lokr", [r"\frac{16}{8}\,C \otimes (A B)", r"A \in \mathbb{R}^{(d_{out}/p)\times 8}", "16/8 = 2"],
     ["s_1", "sum_"]),
    ("full", [r"\Delta W = W - W_0 \in \mathbb{R}^{d_{out}\times d_{in}}", r"d_{out}\,d_{in} + d_{out}"], ["r\\,"]),
    ("probe", ["Only the classification head trains", r"no update at all: no", r"y = W_0 x + b_0", r"K\,(d + 1)"],
     [r"\Delta W ="]),
])
def test_formula_panel_is_the_chosen_methods_own(method, says, not_says):
    text = texts.method_formula(method, **DEFAULT_FORMULA)
    assert text.startswith("### What gets trained")
    for fragment in says:
        assert fragment in text, (fragment, text)
    for fragment in not_says:
        assert fragment not in text, (fragment, text)
    assert text.count("$$") % 2 == 0  # every display formula closed, so KaTeX renders it


def test_formula_panel_puts_in_the_numbers_being_edited():
    text = texts.method_formula("karst", n_kernels=4, stack_dim=16.0, rank="2", rescale="channel")
    for fragment in (r"\sum_{i=1}^{4}", r"C_i \in \mathbb{R}^{16\times 16}", r"\times 2}", "N m r = 128",
                     r"$$ = 1{,}024 + \frac{1}{2}\,(d_{in}+d_{out}) + 2\,d_{out} $$"):
        assert fragment in text, fragment
    lora = texts.method_formula("lora", rank=4, lora_alpha=32.0)
    assert r"\frac{32}{4}\,B A = 8\,B A" in lora and r"= 4\,(d_{in}+d_{out})" in lora
    assert r"\frac{16}{16}\,B A$$" in texts.method_formula("lora", rank=16, lora_alpha=16)  # no "= 1 BA"
    assert r"= 1{,}638{,}400 + " in texts.method_formula("karst", n_kernels=400, stack_dim=64, rank=8)


@pytest.mark.parametrize("typed", [None, "", 0, 2.5, "abc", float("nan")])
def test_formula_panel_shows_symbols_while_a_number_is_being_typed(typed):
    text = texts.method_formula("karst", n_kernels=typed, stack_dim=typed, rank=typed)
    assert r"\sum_{i=1}^{N}" in text and r"\mathbb{R}^{m\times m}" in text and "**N** Kronecker" in text
    assert r"$$ N\,(m^2 + r\,\frac{d_{in}+d_{out}}{m}) + 2\,d_{out} $$" in text  # no half-filled value
    lora = texts.method_formula("lora", rank=typed, lora_alpha=None if typed == 2.5 else typed)  # 2.5: a valid α
    assert r"\Delta W = \frac{\alpha}{r}\,B A$$" in lora and r"$r\,(d_{in}+d_{out})$." in lora
    assert r"**r** is the rank" in lora and r"scaled by $\alpha/r$ (" in lora


@pytest.mark.parametrize("rescale,output,count,zeros", [
    ("channel", r"y = (1 + s_1) \odot (W_0 x + b_0 + \Delta W x) + s_2", r"+ 2\,d_{out} $$", "$s_1$, $s_2$ start"),
    ("scalar", r"y = (1 + s_1)\,(W_0 x + b_0 + \Delta W x) + s_2", r"(d_{in}+d_{out}) + 2 $$", "$s_1$, $s_2$ start"),
    ("none", r"y = W_0 x + b_0 + \Delta W x", r"= 128 + 2\,(d_{in}+d_{out}) $$", "$B_i$ starts"),
])
def test_formula_panel_follows_the_rescaling(rescale, output, count, zeros):
    text = texts.method_formula("karst", **{**DEFAULT_FORMULA, "rescale": rescale})
    assert f"$$ {output} $$" in text and count in text and zeros in text
    assert ("scalars" in text) == (rescale == "scalar") and ("per output channel" in text) == (rescale == "channel")


def test_formula_panel_shows_karsts_alpha_scale_only_when_set():
    scaled = texts.method_formula("karst", **DEFAULT_FORMULA, alpha=16.0)
    assert r"\Delta W = \frac{16}{8}\sum_{i=1}^{2}" in scaled and r"$\alpha/r = 16/8 = 2$" in scaled
    assert r"\alpha" not in texts.method_formula("karst", **DEFAULT_FORMULA, alpha=None)


def test_setup_formula_uses_the_forms_values_and_alpha_shows_for_scaled_methods():
    form = SetupForm()
    assert form.lora_alpha == MethodConfig().lora_alpha == 16.0  # what a LoRA run of this form uses
    shown = setup.show_formula("lora", *(getattr(form, k) for k in setup._FORMULA_KEYS[1:]))
    assert r"\alpha/r = 16/8 = 2" in shown
    for method, visible in (("karst", False), ("lora", True), ("lokr", True), ("full", False), ("probe", False)):
        updates = setup.show_method_fields(method)
        assert updates[5]["visible"] is visible and updates[0] == texts.METHOD_NOTES[method]


def test_warmup_field_is_empty_text_that_says_what_empty_means():
    field = setup._widget("warmup_epochs")
    assert isinstance(field, gr.Textbox) and field.value in ("", None)  # a Number would show and send 0
    assert field.placeholder == "1 (0 for a one-epoch run)" and field.label == "Warm-up epochs"
    assert isinstance(setup._widget("epochs"), gr.Number)
    updates = setup.mark_fields(("warmup_epochs", "warmup_epochs=6 must be smaller than epochs=6"))
    marked = dict(zip(setup._FIELD_HELP, updates))
    assert marked["warmup_epochs"]["elem_classes"] == ["karst-field-error"]
    assert "smaller than epochs" in marked["warmup_epochs"]["info"]
    assert marked["epochs"]["elem_classes"] == [] and marked["epochs"]["info"] == "training epochs"


@pytest.mark.parametrize("builder", ["training", "compare", "gap"])
@pytest.mark.parametrize("epochs,dtick", [(3, 1), (6, 1), (100, 10)])
def test_epoch_axes_have_integer_ticks(builder, epochs, dtick):
    records = [{"epoch": e, "train_acc": 0.5, "val_acc": 0.5, "train_loss": 1.0} for e in range(1, epochs + 1)]
    if builder == "training":
        axis = plots.training_curves([], records).layout.xaxis2
    elif builder == "compare":
        axis = plots.compare_curves({"a": (records, "#d62728")}).layout.xaxis
    else:
        axis = plots.alignment_gap([{"label": "a", "color": "#d62728", "epochs": list(range(epochs + 1)),
                                     "after": [0.1] * (epochs + 1), "before": None, "frozen": 0.1}]).layout.xaxis
    assert axis.tickmode == "linear" and axis.tick0 == 0 and axis.dtick == dtick


# ---------------------------------------------------------------------------- side by side, theme
def _run_curves(label: str, color: str, scale: float, epochs: int, total_steps: int) -> plots.RunCurves:
    steps = [{"step": i, "epoch": i / 10, "loss": scale / (i + 1), "lr": 1e-3} for i in range(total_steps // 2)]
    records = [{"epoch": e, "train_acc": 0.3 * e / epochs, "val_acc": 0.25 * e / epochs} for e in range(1, epochs)]
    return plots.RunCurves(label, color, steps, records, total_steps=total_steps, total_epochs=epochs)


def test_side_by_side_curves_share_every_range_and_keep_each_runs_colour():
    a = _run_curves("karst N2 m8 r8 · rescale channel", "#d62728", 2.0, epochs=3, total_steps=60)
    b = _run_curves("lora r8 · lr 0.003", "#1f77b4", 5.0, epochs=6, total_steps=40)
    figs = plots.side_by_side_curves([a, b])
    assert len(figs) == 2
    for axis in ("xaxis", "yaxis", "xaxis2", "yaxis2"):  # loss over steps, accuracy over epochs
        assert list(figs[0].layout[axis].range) == list(figs[1].layout[axis].range), axis
    assert list(figs[0].layout.yaxis.range) == pytest.approx([0, 5.0 * 1.05])  # the higher loss of the two
    assert list(figs[0].layout.xaxis.range) == [0, 60]  # the longer run's planned steps
    assert figs[1].layout.xaxis2.range[1] > 6  # the planned epochs, not only those recorded
    for fig, run in zip(figs, (a, b)):
        assert {t.line.color for t in fig.data} == {run.color}
        assert run.label in fig.layout.annotations[-1].text  # the label over each figure tells them apart
        assert fig.layout.annotations[-1].font.color == run.color


def test_shared_ranges_skip_nan_losses_and_work_without_records():
    diverged = plots.RunCurves("x", None, [{"step": 1, "epoch": 0.1, "loss": float("nan"), "lr": 0.1},
                                           {"step": 2, "epoch": 0.2, "loss": 3.0, "lr": 0.1}], [])
    assert plots.shared_ranges([diverged])["loss"] == pytest.approx([0, 3.15])
    empty = plots.shared_ranges([plots.RunCurves("y", None, [], [])])
    assert empty["loss"] == [0.0, 1.0] and empty["step"] == [0.0, 1.0]
    fig = plots.side_by_side_curves([plots.RunCurves("<b>name</b>", None, [], [])])[0]
    assert "&lt;b&gt;name" in fig.layout.annotations[-1].text  # a user's name is text, not markup


@pytest.mark.parametrize("fig", [
    plots.empty_figure("nothing"),
    plots.training_curves([{"step": 1, "epoch": 0.1, "loss": 1.0, "lr": 1e-3}], [{"epoch": 1, "val_acc": 0.5}]),
    plots.side_by_side_curves([plots.RunCurves("a", "#d62728", [], [])])[0],
    plots.compare_curves({"a": ([{"epoch": 1, "val_acc": 0.5, "train_loss": 1.0}], "#d62728")}),
    plots.accuracy_vs_params([{"label": "a", "params": 10, "acc": 0.5}]),
    plots.heatmap(np.eye(4), "C"),
    plots.spectrum(np.linspace(1, 0.1, 8), None, "karst", "lora"),
    plots.alignment_shifts({"rescaling": [0.1, -0.2]}, {"rescaling": {"closer": 0.5, "further": 0.5}}),
    plots.alignment_gap([{"label": "a", "color": "#d62728", "epochs": [0, 1], "after": [1, 0.5]}]),
    plots.rescale_values([0.1, 0.2], [0.0, 0.1]),
    plots.topk_bars(["cat"], [0.9]),
], ids=lambda fig: fig.layout.title.text or (fig.layout.annotations[0].text if fig.layout.annotations else "plot"))
def test_every_figure_is_see_through_so_it_follows_the_theme(fig):
    assert fig.layout.paper_bgcolor == plots.TRANSPARENT and fig.layout.plot_bgcolor == plots.TRANSPARENT


# ---------------------------------------------------------------------------- predict
def test_what_the_model_sees_is_enlarged_by_a_whole_factor_pixel_for_pixel():
    small = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    big = np.asarray(predict_panel.enlarged(small))
    assert big.shape == (224, 224, 3)  # 7 × 32: each pixel a 7×7 square, no smoothing
    np.testing.assert_array_equal(big, np.repeat(np.repeat(small, 7, axis=0), 7, axis=1))
    assert predict_panel.enlarged(np.zeros((224, 224, 3), dtype=np.uint8)).size == (224, 224)
    gallery = predict_panel.seen_gallery([Prediction("a.png", ["x"], [0.9], seen=small)])
    assert gallery[0][1] == "32×32 px"  # under the gallery's label, "What the model sees"
    two = predict_panel.seen_gallery([Prediction(n, ["x"], [0.9], seen=small) for n in ("a.png", "b.png")])
    assert [c for _, c in two] == ["a.png: 32×32 px", "b.png: 32×32 px"]  # several: which is which


def test_class_list_names_every_class_up_to_a_limit():
    assert "knows **10 classes**: c0, c1" in predict_panel.class_list([f"c{i}" for i in range(10)])
    long = predict_panel.class_list([f"c{i}" for i in range(1000)])
    assert "**1000 classes**" in long and "c39, … and 960 more" in long and "c40" not in long
    assert "**1 class**" in predict_panel.class_list(["only"])


def _pred(top: float, true: str | None = None, name: str = "x.png") -> Prediction:
    rest = (1 - top) / 9
    return Prediction(name, ["cat", "dog"], [top, rest], Confidence(top, 0.9 if top < 0.5 else 0.2, 10),
                      true_label=true)


def test_verdicts_mark_right_and_wrong_with_icons_and_say_when_the_model_is_unsure():
    text = predict_panel.verdicts([_pred(0.9, "cat"), _pred(0.9, "dog"), _pred(0.31), _pred(0.9)])
    lines = text.split("\n\n")
    assert "true: cat" in lines[0] and "karst-icon-ok" in lines[0] and "right" in lines[0]
    assert "true: dog" in lines[1] and "karst-icon-error" in lines[1] and "wrong" in lines[1]
    assert "unsure (top class 31%)" in lines[2] and "one of its 10 classes" in lines[2]
    assert "unsure" not in lines[3] and "true:" not in lines[3]
    assert all(ord(ch) < 0x2190 for ch in text)  # no emoji: they show as boxes on PCs without an emoji font
    own = predict_panel.verdicts([_pred(0.2, "cat")])
    assert "even on a picture of its own dataset" in own  # not "unlike its training images": it is one
    many = predict_panel.verdicts([_pred(0.9, name=f"{i}.png") for i in range(12)])
    assert "… and 4 more in the table." in many and "8.png" not in many


def test_long_run_labels_wrap_at_their_separators():
    long = "my baseline · karst N2 m8 r8 · lr 0.01 · rescale none · seed 3"
    fig = plots.side_by_side_curves([plots.RunCurves(long, "#d62728", [], [])])[0]
    text = fig.layout.annotations[-1].text
    assert text.count("<br>") >= 1 and "rescale none" in text
    assert all(len(line) <= 34 + len("<b></b>") for line in text.split("<br>"))
    short = plots.side_by_side_curves([plots.RunCurves("lora r8", None, [], [])])[0]
    assert short.layout.height < fig.layout.height  # room above the panels for every line
    # Side by side, both figures leave the same room, so their panels line up.
    pair = plots.side_by_side_curves([plots.RunCurves(long, None, [], []), plots.RunCurves("lora r8", None, [], [])])
    assert pair[0].layout.height == pair[1].layout.height and pair[0].layout.margin.t == pair[1].layout.margin.t
