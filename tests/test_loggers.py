"""Experiment loggers: drive each with a run's events, then read back what it wrote with the library's own reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from karst.errors import ConfigError
from karst.loggers import MLflowLogger, TensorBoardLogger, flatten_config

CONFIG = {
    "backbone": "karst-vit-micro", "dataset": "synth-objects", "pretrained": True, "grad_clip": None,
    "method": {"name": "karst", "lora_alpha": 16.0,
               "adapter": {"rank": 8, "rescale": "channel", "target_modules": ["qkv", "proj"]}},
    "epochs": 2, "batch_size": 32, "lr": 0.01, "seed": 0,
}
T0 = 1_700_000_000.0
# Losses and accuracies are powers of two apart, so TensorBoard's float32 storage keeps them exactly.
STEPS = [{"type": "step", "step": s, "epoch": s / 2, "loss": 2.0 - s / 4, "lr": 0.01 * s, "img_per_s": 64.0 * s,
          "t": T0 + s} for s in (1, 2, 3, 4)]
EPOCHS = [
    {"type": "epoch", "epoch": 1, "train_loss": 1.75, "train_acc": 0.25, "val_loss": 1.5, "val_acc": 0.5,
     "elapsed_s": 2.0, "t": T0 + 2.5},
    {"type": "epoch", "epoch": 2, "train_loss": 1.25, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.75,
     "elapsed_s": 4.0, "t": T0 + 4.5},
]
TEST = {"type": "test", "test_acc": 0.625, "test_loss": None, "t": T0 + 5}  # None: not logged
INFO = {"device": "cpu", "total_steps": 4, "steps_per_epoch": 2, "epochs": 2, "class_names": ["a", "b"],
        "params": {"adapter": 1200, "head": 130, "frozen": 50000, "total": 51330, "trainable": 1330},
        "train_size": 128, "val_size": 32, "test_size": 32}


def drive(logger, status: str = "completed") -> None:
    """The calls a two-epoch run makes, in the trainer's order."""
    logger.on_phase("loading backbone karst-vit-micro")
    logger.on_start(INFO)
    for epoch, record in enumerate(EPOCHS):
        for step in STEPS[2 * epoch: 2 * epoch + 2]:
            logger.on_step(step, SimpleNamespace(step=step["step"], total_steps=4, epoch=epoch, epochs=2))
        logger.on_epoch(record, SimpleNamespace(step=2 * epoch + 2, total_steps=4, epoch=epoch + 1, epochs=2))
        logger.on_snapshot(epoch + 1, {}, {}, {})
    logger.on_phase("testing")
    logger.on_test(TEST)
    logger.on_end({"status": status, "val_acc": 0.75, "test_acc": 0.625, "best_val_acc": 0.75}, None)


def test_flatten_config_uses_dotted_keys() -> None:
    flat = flatten_config(CONFIG)
    assert flat["method.adapter.rank"] == 8 and flat["method.name"] == "karst"
    assert flat["method.adapter.target_modules"] == ["qkv", "proj"] and flat["grad_clip"] is None
    assert "method" not in flat and len(flat) == 13


def test_tensorboard_logger_writes_scalars_text_and_hparams(tmp_path: Path) -> None:
    log_dir = tmp_path / "tb"
    drive(TensorBoardLogger(log_dir, CONFIG))

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/lr", "train/img_per_s", "train/epoch_loss",
                                             "train/epoch_acc", "val/loss", "val/acc", "test/acc"}

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert series("train/loss") == [(1, 1.75), (2, 1.5), (3, 1.25), (4, 1.0)]
    assert series("train/img_per_s") == [(1, 64.0), (2, 128.0), (3, 192.0), (4, 256.0)]
    assert [s for s, _ in series("train/lr")] == [1, 2, 3, 4]
    assert [v for _, v in series("train/lr")] == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert series("train/epoch_loss") == [(1, 1.75), (2, 1.25)]
    assert series("train/epoch_acc") == [(1, 0.25), (2, 0.5)]
    assert series("val/loss") == [(1, 1.5), (2, 1.0)]
    assert series("val/acc") == [(1, 0.5), (2, 0.75)]
    assert series("test/acc") == [(0, 0.625)]
    assert [e.wall_time for e in events.Scalars("train/loss")] == [T0 + 1, T0 + 2, T0 + 3, T0 + 4]

    def text(tag: str) -> str:
        (event,) = events.Tensors(f"{tag}/text_summary")
        return event.tensor_proto.string_val[0].decode()

    config_text = text("config")
    assert config_text.startswith("```json\n") and config_text.endswith("\n```")
    assert json.loads(config_text[len("```json\n"):-len("\n```")]) == CONFIG
    assert json.loads(text("run")[8:-4])["params"]["trainable"] == 1330
    assert text("status") == "completed"

    hparams = events.PluginTagToContent("hparams")
    assert set(hparams) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "test/acc"]
    start = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["method.adapter.rank"].number_value == 8
    assert start.hparams["lr"].number_value == pytest.approx(0.01)
    assert start.hparams["method.adapter.target_modules"].string_value == '["qkv", "proj"]'


def test_mlflow_logger_writes_a_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Imported here, with telemetry off: `import mlflow` otherwise writes ~/.config/mlflow/telemetry.json
    # and starts a thread that reports usage (it skips both only when imported during a test's run).
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may land in the working directory (MLflow's default ./mlruns, mlflow.db)
    tracking = tmp_path / "runs" / "mlruns"
    logger = MLflowLogger(tracking, CONFIG, run_name="20250101-000000-karst-abcd")
    logger.flush_interval_s = 3600.0  # the step metrics then reach the store only with the epoch's flush
    drive(logger)
    # More runs in the same store reuse the experiment: one cancelled before it started, one that
    # diverged, with a param longer than MLflow's limit (truncated) and a repeated end (a no-op).
    MLflowLogger(tracking, CONFIG).on_end({"status": "cancelled"}, None)
    diverged = MLflowLogger(tracking, {"lr": "x" * 7000})
    diverged.on_end({"status": "diverged"}, None)
    diverged.on_end({"status": "diverged"}, None)
    assert list(cwd.iterdir()) == []

    client = MlflowClient(f"sqlite:///{tracking.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("karst")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "KILLED", "FAILED"]
    assert [r.data.tags["status"] for r in runs] == ["completed", "cancelled", "diverged"]
    assert runs[2].data.params == {"lr": "x" * 6000}
    run = client.get_run(logger.run_id)
    assert run.info.run_name == "20250101-000000-karst-abcd" and run.info.run_id == runs[0].info.run_id
    assert run.info.end_time is not None and run.data.tags["device"] == "cpu"

    params = run.data.params
    assert params["method.adapter.rank"] == "8" and params["method.lora_alpha"] == "16.0"
    assert params["method.adapter.target_modules"] == '["qkv", "proj"]'
    assert params["grad_clip"] == "null" and params["pretrained"] == "true" and params["backbone"] == "karst-vit-micro"
    assert params["params.trainable"] == "1330"
    assert len(params) == len(flatten_config(CONFIG)) + len(INFO["params"])

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in sorted(client.get_metric_history(logger.run_id, key), key=lambda m: m.step)]

    assert history("loss") == [(1, 1.75), (2, 1.5), (3, 1.25), (4, 1.0)]
    assert history("lr") == [(1, 0.01), (2, 0.02), (3, 0.03), (4, 0.04)]
    assert history("img_per_s") == [(1, 64.0), (2, 128.0), (3, 192.0), (4, 256.0)]
    assert history("train_loss") == [(1, 1.75), (2, 1.25)] and history("train_acc") == [(1, 0.25), (2, 0.5)]
    assert history("val_loss") == [(1, 1.5), (2, 1.0)] and history("val_acc") == [(1, 0.5), (2, 0.75)]
    assert history("test_acc") == [(0, 0.625)] and history("test_loss") == []
    assert [m.timestamp for m in client.get_metric_history(logger.run_id, "loss")] == [
        int(1000 * (T0 + s)) for s in (1, 2, 3, 4)]
    assert set(run.data.metrics) == {"loss", "lr", "img_per_s", "train_loss", "train_acc", "val_loss", "val_acc",
                                     "test_acc"}


@pytest.mark.parametrize(("logger", "hidden", "package"), [
    (MLflowLogger, "mlflow", "mlflow-skinny"),
    (MLflowLogger, "sqlalchemy", "SQLAlchemy"),
    (TensorBoardLogger, "tensorboard", "tensorboard"),
])
def test_a_missing_package_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logger: type,
                                             hidden: str, package: str) -> None:
    # None in sys.modules makes `import X` raise ImportError; torch's tensorboard wrapper is dropped
    # from the cache so that its import runs again and meets the missing package.
    monkeypatch.setitem(sys.modules, hidden, None)
    for name in [n for n in sys.modules if n.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError) as info:
        logger(tmp_path / "out", CONFIG)
    message = str(info.value)
    assert "\n" not in message and f"package {package} is not installed" in message
    assert "pip install -r requirements-loggers.txt" in message
    assert not (tmp_path / "out").exists()
