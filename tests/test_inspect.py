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
    assert "best rank-1 approximation" in v["note"]


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
    base, pre, out = (a["stats"][label] for label in ki.STAT_LABELS.values())
    np.testing.assert_array_equal(base["mean"], pre["mean"])
    np.testing.assert_array_equal(base["std"], out["std"])
    assert all(g == 0 for g in a["gap_now"].values())


def test_alignment_view_over_epochs(run) -> None:
    a = ki.alignment_view(run, "blocks.1.mlp.fc2")
    assert a["epoch"] == 2 and a["epochs"] == [0, 1, 2]
    assert set(a["stats"]) == set(ki.STAT_LABELS.values())
    assert all(s["mean"].shape == s["std"].shape == (64,) for s in a["stats"].values())
    for label, series in a["gaps"].items():
        assert len(series) == 3 and series[0] == 0 and series[-1] == pytest.approx(a["gap_now"][label])
    # Training moved the outputs away from the pre-trained statistics.
    assert max(a["gap_now"].values()) > 0
    assert a["s1"].shape == (64,)


def test_gap_history_without_the_summary_file(run, tmp_path) -> None:
    import shutil

    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    (copy / "snapshots" / "gaps.json").unlink()
    assert ki.gap_history(copy, "blocks.0.attn.proj") == ki.gap_history(run, "blocks.0.attn.proj")


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
