"""Inspection views: ΔW from snapshots equals the live layer's, shapes, spectrum, alignment, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import trained_run
from safetensors.torch import load_file

from karst import inspect as ki
from karst.errors import RunError
from karst.export import load_run
from karst.model import karst_layers


@pytest.fixture
def run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield trained_run(tmp_path_factory.getbasetemp())
    torch.set_num_threads(before)


def test_layers_and_epochs(run) -> None:
    assert ki.epochs(run) == [0, 1, 2]
    names = ki.layers(run)
    assert names == [f"blocks.{b}.{m}" for b in (0, 1) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


@pytest.mark.parametrize("epoch", [1, 2])
def test_delta_weight_from_snapshot_equals_live_layer(run, epoch: int) -> None:
    method, _, _ = load_run(run)
    # Load that epoch's snapshot into the live model, then compare every layer's ΔW.
    method.load_adapter_state_dict(load_file(str(run / "snapshots" / f"epoch_{epoch:03d}.safetensors")))
    live = karst_layers(method.model)
    for name in ki.layers(run):
        from_snapshot = ki.delta_weight(ki.layer_tensors(run, name, epoch))
        expected = live[name].delta_weight().detach().double().numpy()
        np.testing.assert_allclose(from_snapshot, expected, rtol=1e-5, atol=1e-7)
        assert np.abs(from_snapshot).max() > 0


def test_kernel_view_shapes_and_values(run) -> None:
    name = "blocks.0.mlp.fc1"  # d_out=256, d_in=64; N=2, m=8, r=4
    views = [ki.kernel_view(run, name, kernel=i, epoch=2) for i in (1, 2)]
    v = views[0]
    assert v["C"].shape == (8, 8) and v["AB"].shape == (32, 8) and v["kron"].shape == v["delta"].shape == (256, 64)
    np.testing.assert_allclose(views[0]["kron"] + views[1]["kron"], v["delta"], atol=1e-10)
    t = ki.layer_tensors(run, name, 2)
    np.testing.assert_allclose(v["AB"], t["A"][0] @ t["B"][0])
    assert v["s1"].shape == v["s2"].shape == (256,)
    # Spectrum: rank(C ⊗ AB) = rank(C)·rank(AB), so ΔW's rank is bounded by N·m·r = 64 = d_in here.
    assert v["sv"].shape == (64,) and np.all(np.diff(v["sv"]) <= 1e-12)
    budget = 2 * (8 * 8 + 4 * (256 + 64) // 8)
    assert v["lora_rank"] == budget // (256 + 64) == 1
    assert np.count_nonzero(v["lora_sv"]) == 1 and v["lora_sv"][0] == v["sv"][0]
    assert 0 < v["lora_energy"] < 1 and v["rank_numeric"] > v["lora_rank"]
    assert "truncated SVD of this ΔW at rank 1" in v["note"] and "not a trained LoRA" in v["note"]


def test_spectrum_is_computed_once_per_snapshot_and_never_served_stale(run) -> None:
    name = "blocks.1.attn.qkv"
    a, b = (ki.kernel_view(run, name, kernel=i, epoch=1) for i in (1, 2))
    assert a["delta"] is b["delta"] and a["sv"] is b["sv"]  # both kernels share one SVD
    assert not a["delta"].flags.writeable
    # A rewritten snapshot (new mtime) is read again, not served from the cache.
    snap = run / "snapshots" / "epoch_001.safetensors"
    st = snap.stat()
    os.utime(snap, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    c = ki.kernel_view(run, name, kernel=1, epoch=1)
    assert c["delta"] is not a["delta"]
    np.testing.assert_array_equal(c["delta"], a["delta"])


def test_epoch_zero_is_the_pretrained_model(run) -> None:
    v = ki.kernel_view(run, "blocks.1.attn.qkv", 1, epoch=0)
    assert not v["delta"].any() and v["rank_numeric"] == 0 and "zero" in v["note"]
    a = ki.alignment_view(run, "blocks.1.attn.qkv", epoch=0)
    # The tiny backbone is a local weight file: its pre-training data is unknown, so the reference is
    # the frozen model on the probe images, which epoch 0 *is*.
    assert a["reference"]["source"] == "target" and "probe images" in a["reference"]["description"]
    assert a["gap"] == {"frozen": 0.0, "before": 0.0, "after": 0.0}
    assert "before training" in a["summary"]


def test_alignment_view_over_epochs(run) -> None:
    a = ki.alignment_view(run, "blocks.1.mlp.fc2")
    assert a["epoch"] == 2 and a["history"]["epochs"] == [0, 1, 2]
    assert a["method"] == "karst" and a["rescale"] == "channel" and a["channels"] == 64
    assert set(a["distance"]) == {"frozen", "before", "after"}
    assert all(d.shape == (64,) for d in a["distance"].values())
    np.testing.assert_allclose(a["shift"]["rescaling"], a["distance"]["after"] - a["distance"]["before"])
    assert "training" not in a["shift"]  # the reference is the frozen output itself
    shares = a["shares"]["rescaling"]
    assert shares["closer"] == pytest.approx(np.mean(a["shift"]["rescaling"] < -1e-3))
    assert 0 <= shares["closer"] + shares["further"] <= 1
    assert f"{100 * shares['closer']:.0f}%" in a["summary"]
    for key in ("before", "after"):
        series = a["history"][key]
        assert len(series) == 3 and series[0] == 0 and series[-1] == pytest.approx(a["gap"][key])
    assert a["gap"]["after"] > 0  # training moved the outputs away from the frozen statistics
    assert a["s1"].shape == (64,)


def test_recorded_gaps_match_the_view(run) -> None:
    # gaps.json (written while training, from float32 statistics) and the view (float16 files) agree.
    from karst.runs import read_json

    recorded = read_json(run / "snapshots" / "gaps.json")
    history = ki.gap_history(run, "blocks.0.attn.proj")
    assert recorded["epochs"] == history["epochs"]
    np.testing.assert_allclose(recorded["layers"]["blocks.0.attn.proj"]["out"], history["after"], atol=2e-3)


def test_alignment_table_has_a_row_per_layer(run) -> None:
    rows = ki.alignment_table(run)
    assert [r["layer"] for r in rows] == ki.layers(run)
    row = rows[0]
    assert row["rescale_closer"] is not None and row["training_closer"] is None
    assert row["gap_after"] == pytest.approx(ki.alignment_view(run, row["layer"])["gap"]["after"])


@pytest.mark.parametrize("method,rescale", [("karst", "none"), ("lora", "channel"), ("probe", "channel")])
def test_alignment_for_runs_without_rescaling(tmp_path, one_thread, method: str, rescale: str) -> None:
    from helpers import tiny_config

    from karst.jobs import run_foreground

    summary = run_foreground(tiny_config(tmp_path, method=method, rescale=rescale, epochs=1,
                                                 warmup_epochs=0), tmp_path / "runs")
    run = tmp_path / "runs" / summary["run_id"]
    layers = ki.alignment_layers(run)
    assert layers[:2] == ["blocks.0.attn.qkv", "blocks.0.attn.proj"]  # model order, every method
    a = ki.alignment_view(run, layers[0])
    assert "rescaling" not in a["shift"] and a["rescale"] in (None, "none")
    assert a["distance"]["after"].shape == (192,)
    if method == "probe":  # nothing before the head trains: the layers keep their frozen outputs
        assert a["gap"]["after"] == 0 and "linear probe" in a["summary"]
    elif method == "lora":
        assert "before" not in a["distance"] and a["gap"]["after"] > 0 and "no re-scaling step" in a["summary"]
    else:
        np.testing.assert_array_equal(a["distance"]["before"], a["distance"]["after"])
        assert "rescale = none" in a["summary"]


def _view(**changes):
    view = {"epoch": 3, "layer": "blocks.0.mlp.fc1", "method": "karst", "rescale": "channel", "channels": 512,
            "reference": {"source": "pretraining", "description": "the frozen model on its corpus"},
            "gap": {"frozen": 0.5, "before": 0.4, "after": 0.3},
            "shares": {"rescaling": {"closer": 0.61, "further": 0.3}, "training": {"closer": 0.7, "further": 0.2}}}
    return {**view, **changes}


def test_alignment_summary_says_what_the_numbers_say() -> None:
    text = ki.alignment_summary(_view())
    assert "**61%** of the 512 channels closer" in text and "30% further" in text
    assert "from 0.400 before re-scaling to 0.300 after" in text and "closer to the reference overall" in text
    assert "70% of channels closer" in text
    worse = ki.alignment_summary(_view(gap={"frozen": 0.5, "before": 0.3, "after": 0.4},
                                       shares={"rescaling": {"closer": 0.2, "further": 0.75}}))
    assert "**20%**" in worse and "further from the reference overall" in worse
    assert "training" not in worse.lower() or "70%" not in worse


def test_reference_of_the_embedded_backbone_is_its_pretraining_corpus(one_thread) -> None:
    from karst.backbones import load_backbone
    from karst.config import KarstConfig
    from karst.model import apply_karst
    from karst.stats import feature_stats, reference_images, reference_stats

    backbone = load_backbone("karst-vit-micro", num_classes=3)
    images, description = reference_images(backbone, n=16)
    again, _ = reference_images(backbone, n=16)
    assert images.shape == (16, 3, 32, 32) and torch.equal(images, again) and "pre-training corpus" in description
    assert abs(float(images.mean())) < 0.5 and 0.5 < float(images.std()) < 2  # normalised as in pre-training
    model = apply_karst(backbone.model, KarstConfig(rank=2))
    ref = reference_stats(model, {}, backbone, True, torch.device("cpu"))
    assert ref["source"] == "pretraining" and set(ref["layers"]) == set(karst_layers(model))
    direct = feature_stats(model, reference_images(backbone)[0], torch.device("cpu"), max_tokens=4096)
    np.testing.assert_allclose(ref["layers"]["blocks.0.attn.qkv"]["mean"], direct["blocks.0.attn.qkv"]["base_mean"])
    # Random weights were not pre-trained on anything: the reference falls back to the probe.
    probe = {"blocks.0.attn.qkv": direct["blocks.0.attn.qkv"]}
    assert reference_stats(model, probe, backbone, False, torch.device("cpu"))["source"] == "target"


def test_bad_requests_raise_run_errors(run, tmp_path) -> None:
    with pytest.raises(RunError, match="not a KARST layer"):
        ki.kernel_view(run, "blocks.9.mlp.fc1")
    with pytest.raises(RunError, match="saved epochs"):
        ki.kernel_view(run, "blocks.0.mlp.fc1", epoch=7)
    with pytest.raises(RunError, match="kernels 1..2"):
        ki.kernel_view(run, "blocks.0.mlp.fc1", kernel=0)
    with pytest.raises(RunError, match="not a run folder"):
        ki.layers(tmp_path)


def test_downsample_block_averages() -> None:
    m = np.arange(600 * 300, dtype=float).reshape(600, 300)
    small, factor = ki.downsample(m, 256)
    assert factor == 3 and small.shape == (200, 100)
    assert small[0, 0] == pytest.approx(m[:3, :3].mean())
    odd, f = ki.downsample(np.ones((257, 5)), 256)
    assert f == 2 and odd.shape == (129, 3) and np.all(odd == 1)
    same, f = ki.downsample(m[:10, :10], 256)
    assert f == 1 and same is not None and same.shape == (10, 10)


def test_change_since_epoch_zero_and_one_colour_scale(run) -> None:
    name = "blocks.0.mlp.fc1"
    now, first = ki.kernel_view(run, name, 1, epoch=2), ki.kernel_view(run, name, 1, epoch=0)
    change = ki.kernel_view(run, name, 1, epoch=2, since=0)
    np.testing.assert_allclose(change["C"], now["C"] - first["C"])
    np.testing.assert_allclose(change["delta"], now["delta"])  # ΔW starts at zero
    assert "change since epoch 0" in change["note"] and now["block"] == (32, 8)
    assert now["energy"][-1] == pytest.approx(1.0) and np.all(np.diff(now["energy"]) >= -1e-12)
    bounds = ki.kernel_bounds(run, name, 1)
    for key in ("C", "AB", "kron", "delta"):  # the bound covers every epoch's matrix
        for e in (0, 1, 2):
            assert np.abs(ki.kernel_view(run, name, 1, epoch=e)[key]).max() <= bounds[key] * (1 + 1e-9)
    since = ki.kernel_bounds(run, name, 1, since=0)
    assert since["C"] == pytest.approx(np.abs(change["C"]).max()) or since["C"] > np.abs(change["C"]).max()


def test_lora_run_shows_its_own_update(tmp_path, one_thread) -> None:
    from helpers import tiny_config

    from karst.jobs import run_foreground

    summary = run_foreground(tiny_config(tmp_path, method="lora", rank=2, lora_alpha=4.0), tmp_path / "runs")
    run = tmp_path / "runs" / summary["run_id"]
    assert ki.layers(run) == [] and ki.lora_layers(run)[:2] == ["blocks.0.attn.qkv", "blocks.0.attn.proj"]
    v = ki.lora_view(run, "blocks.0.mlp.fc1")
    assert v["A"].shape == (2, 64) and v["B"].shape == (256, 2) and v["scale"] == 2.0
    np.testing.assert_allclose(v["delta"], 2.0 * v["B"] @ v["A"])
    assert v["rank_numeric"] == 2 and v["sv"].shape == (64,) and v["energy"][1] == pytest.approx(1.0)
    assert not ki.lora_view(run, "blocks.0.mlp.fc1", epoch=0)["delta"].any()  # B starts at zero
    np.testing.assert_allclose(ki.lora_view(run, "blocks.0.mlp.fc1", since=0)["delta"], v["delta"])
    with pytest.raises(RunError, match="not a LoRA layer"):
        ki.lora_view(run, "blocks.7.mlp.fc1")
