"""The trainer: reproducibility, the run folder it records, divergence, cancel, other methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_config, trained_run
from safetensors import safe_open

from karst.runs import RunStore, decode_array, read_jsonl
from karst.train import Callback, train

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_phase(self, message):
        self.events.append(("phase", message))

    def on_start(self, info):
        self.events.append(("start", info))

    def on_step(self, record, progress):
        self.events.append(("step", record))

    def on_epoch(self, record, progress):
        self.events.append(("epoch", record))

    def on_snapshot(self, epoch, tensors, stats, metadata):
        self.events.append(("snapshot", epoch))

    def on_test(self, record):
        self.events.append(("test", record))

    def on_end(self, summary, result):
        self.events.append(("end", summary))

    def of(self, kind: str) -> list:
        return [e for k, e in self.events if k == kind]


def test_same_seed_same_numbers_without_a_run_folder(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, epochs=1, warmup_epochs=0)
    runs = []
    for seed in (0, 0, 1):
        rec = Recorder()
        config.seed = seed
        summary = train(config, callbacks=[rec])
        assert summary["status"] == "completed" and summary["run_id"] is None
        runs.append(([s["loss"] for s in rec.of("step")], summary["val_acc"], summary["test_acc"]))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]
    assert not any(tmp_path.glob("runs*")), "a run without run_dir must not write run folders"


def test_event_order_and_record_schema(tmp_path: Path) -> None:
    rec = Recorder()
    summary = train(tiny_config(tmp_path), callbacks=[rec])
    kinds = [k for k, _ in rec.events if k != "phase"]
    # The epoch-0 snapshot (weights and statistics from before training) is emitted right after the
    # first step, so the first curve point is not delayed; then one snapshot per epoch; test; end.
    assert kinds == ["start", "step", "snapshot", "step", "epoch", "snapshot", "step", "step", "epoch", "snapshot",
                     "test", "end"]
    assert [e for k, e in rec.events if k == "snapshot"] == [0, 1, 2]
    step = rec.of("step")[0]
    assert set(step) == {"type", "step", "epoch", "loss", "lr", "img_per_s", "t"} and step["type"] == "step"
    epoch = rec.of("epoch")[0]
    assert set(epoch) == {"type", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "elapsed_s", "t"}
    assert set(rec.of("test")[0]) == {"type", "test_acc", "test_loss", "t"}
    # Per-step cosine with warm-up: lr rises during the warm-up epoch, then decays.
    lrs = [s["lr"] for s in rec.of("step")]
    assert lrs[0] < lrs[1] and lrs[2] > lrs[3]
    assert summary["trainable_params"] == summary["adapter_params"] + summary["head_params"]
    assert summary["epochs_done"] == 2 and summary["steps"] == 4


def test_run_folder_follows_the_contract(tmp_path: Path) -> None:
    run = trained_run(tmp_path)
    store = RunStore(run.parent)
    status = store.read_status(run.name)
    assert status["status"] == "completed" and status["step"] == status["total_steps"] == 4
    assert status["epoch"] == status["epochs"] == 2 and status["finished_at"] >= status["started_at"]
    records, _ = read_jsonl(run / "metrics.jsonl")
    assert [r["type"] for r in records] == ["step", "step", "epoch", "step", "step", "epoch", "test"]
    summary = json.loads((run / "summary.json").read_text())
    for key in ("run_id", "status", "method", "val_acc", "test_acc", "best_val_acc", "trainable_params",
                "total_params", "seconds", "device", "epochs_done", "snapshot_pct"):
        assert key in summary, key
    assert summary["test_acc"] == records[-1]["test_acc"] and summary["val_acc"] == records[-2]["val_acc"]
    for name in ("adapter.safetensors", "merged.safetensors", "merged.json"):
        assert (run / name).is_file(), name
    snaps = sorted(p.name for p in (run / "snapshots").iterdir())
    assert snaps == ["epoch_000.safetensors", "epoch_001.safetensors", "epoch_002.safetensors", "gaps.json",
                     "reference.json", "state_002.pt", "stats_000.json", "stats_001.json", "stats_002.json"]
    with safe_open(str(run / "snapshots" / "epoch_002.safetensors"), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    layers = meta["karst_layers"].split(",")
    assert len(layers) == 8 and {f"{layers[0]}.{p}" for p in "C A B s1 s2".split()} <= keys
    assert len(json.loads(meta["class_names"])) == 10
    stats = json.loads((run / "snapshots" / "stats_001.json").read_text())
    entry = stats["layers"]["blocks.0.mlp.fc1"]
    assert entry["channels"] == 256 and decode_array(entry["out_std"]).shape == (256,)


def test_diverging_run_stops_with_a_hint(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    config = tiny_config(tmp_path, lr=1e30, epochs=2)
    run_id, lock = store.create_claimed(config)
    summary = train(config, store.path(run_id))
    lock.release()
    assert summary["status"] == "diverged"
    assert "--lr" in summary["message"] and "too high" in summary["message"]
    assert store.read_status(run_id)["status"] == "diverged"
    # The NaN weights are not exported; the epoch-0 snapshot stays as the last good checkpoint.
    assert not (store.path(run_id) / "merged.safetensors").exists()
    assert store.last_checkpoint(run_id).name == "epoch_000.safetensors"


def test_cancel_takes_effect_before_the_next_step(tmp_path: Path) -> None:
    rec = Recorder()
    store = RunStore(tmp_path / "runs")
    config = tiny_config(tmp_path, epochs=3, max_train_samples=128)
    run_id, lock = store.create_claimed(config)
    cancel_file = store.path(run_id) / "cancel"

    class CancelAtStepFive(Callback):  # 4 steps per epoch: step 5 is inside epoch 2
        def on_step(self, record, progress):
            if record["step"] == 5:
                store.request_cancel(run_id)

    summary = train(config, store.path(run_id), callbacks=[rec, CancelAtStepFive()])
    lock.release()
    assert cancel_file.exists()
    assert summary["status"] == "cancelled" and summary["steps"] == 5
    assert [s["step"] for s in rec.of("step")] == [1, 2, 3, 4, 5]
    assert store.read_status(run_id)["status"] == "cancelled"
    # Current weights kept (adapter), plus the epoch snapshots taken so far; nothing merged.
    assert (store.path(run_id) / "adapter.safetensors").is_file()
    assert store.snapshot_epochs(run_id) == [0, 1]
    assert not (store.path(run_id) / "merged.safetensors").exists()


def test_bad_settings_fail_the_run_with_the_error(tmp_path: Path) -> None:
    from karst.errors import ConfigError

    store = RunStore(tmp_path / "runs")
    config = tiny_config(tmp_path, stack_dim=5)
    run_id, lock = store.create_claimed(config)
    with pytest.raises(ConfigError, match="m=5 does not divide"):
        train(config, store.path(run_id))
    lock.release()
    status = store.read_status(run_id)
    assert status["status"] == "failed" and "m=5" in status["message"]


def test_a_bug_fails_the_run_and_says_where_its_traceback_is(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    config = tiny_config(tmp_path, epochs=1, warmup_epochs=0)
    run_id, lock = store.create_claimed(config)

    class Buggy(Callback):
        def on_step(self, record, progress):
            raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        train(config, store.path(run_id), callbacks=[Buggy()])
    lock.release()
    log = store.path(run_id) / "error.log"
    status = store.read_status(run_id)
    assert status["status"] == "failed" and "ZeroDivisionError" in status["message"] and str(log) in status["message"]
    assert "Traceback" in log.read_text() and "on_step" in log.read_text()


@pytest.mark.parametrize("method", ["lora", "probe"])
def test_other_methods_train_and_export(tmp_path: Path, method: str) -> None:
    store = RunStore(tmp_path / "runs")
    config = tiny_config(tmp_path, method=method, epochs=1, warmup_epochs=0)
    run_id, lock = store.create_claimed(config)
    summary = train(config, store.path(run_id))
    lock.release()
    assert summary["status"] == "completed"
    assert (store.path(run_id) / "merged.safetensors").is_file()
    # No KARST layers: the statistics are the outputs of the targeted linears (no before/after re-scaling).
    stats = json.loads((store.path(run_id) / "snapshots" / "stats_001.json").read_text())
    assert list(stats["layers"])[:2] == ["blocks.0.attn.qkv", "blocks.0.attn.proj"] and len(stats["layers"]) == 8
    assert set(stats["layers"]["blocks.0.mlp.fc1"]) == {"out_mean", "out_std", "channels", "gap_out"}
    assert (store.path(run_id) / "snapshots" / "reference.json").is_file()
    with safe_open(str(store.path(run_id) / "snapshots" / "epoch_001.safetensors"), "pt") as f:
        assert len(list(f.keys())) == (2 if method == "probe" else 2 + 2 * 8)
