"""Experiment loggers: the trainer's events written by TensorBoard's and MLflow's own libraries.

Both are trainer callbacks (``karst.callbacks.Callback``), added by ``karst.train`` when
``config.tensorboard`` / ``config.mlflow`` is set. Neither library is a dependency of
KARST: each is imported when its logger is created, and a missing package is a ``ConfigError`` that
says to ``pip install -r requirements-loggers.txt``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .callbacks import Callback
from .errors import ConfigError
from .runs import FileLock

__all__ = ["TensorBoardLogger", "MLflowLogger", "flatten_config"]

_INSTALL = "pip install -r requirements-loggers.txt"


def _missing(what: str, package: str) -> ConfigError:
    return ConfigError(f"{what} logging was asked for, but the Python package {package} is not installed; "
                       f"run: {_INSTALL}")


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level with dotted keys: ``{"method": {"rank": 8}}`` -> ``{"method.rank": 8}``.

    Args:
        config: a ``TrainConfig.to_dict()``-like mapping; lists and other leaves are kept as they are.
        prefix: prepended to every key (used by the recursion).
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _text(value: Any) -> str:
    # JSON spelling, as in config.json: null / true / ["qkv", "proj"], but strings without quotes.
    return value if isinstance(value, str) else json.dumps(value)


class TensorBoardLogger(Callback):
    """Writes scalars, the configuration and its hyperparameters as TensorBoard event files.

    Steps are optimiser steps for ``train/*`` per-step scalars and epochs for the per-epoch ones, so
    TensorBoard shows both on their natural axis. View with ``tensorboard --logdir <log_dir>``.

    Args:
        log_dir: the folder for the event files (created if missing).
        config: the run's settings (``TrainConfig.to_dict()``).

    Raises:
        ConfigError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str | Path, config: dict[str, Any]):
        try:
            # local: an optional extra (requirements-loggers.txt), imported only when asked for
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:  # torch's own message names no module: only tensorboard can be missing here
            raise _missing("TensorBoard", "tensorboard") from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        self._writer.add_text("config", f"```json\n{json.dumps(config, indent=2)}\n```")
        # The HParams dashboard: the experiment and session-start summaries now, declaring val/acc and
        # test/acc (the scalars below) as its metrics; the session end only for a completed run.
        flat = {k: v if isinstance(v, int | float | str) else _text(v) for k, v in flatten_config(config).items()}
        experiment, start, self._hparams_end = hparams(flat, {"val/acc": None, "test/acc": None})
        file_writer = self._writer._get_file_writer()  # what SummaryWriter.add_hparams itself uses
        file_writer.add_summary(experiment)
        file_writer.add_summary(start)
        self._closed = False

    def _scalars(self, record: dict[str, Any], tags: dict[str, str], step: int) -> None:
        for key, tag in tags.items():
            if record.get(key) is not None:  # a None (no validation set, non-finite loss) is a gap
                self._writer.add_scalar(tag, record[key], step, walltime=record.get("t"))

    def on_phase(self, message: str) -> None:
        """Not logged: the phases are a live status, not a measurement."""

    def on_start(self, info: dict[str, Any]) -> None:
        """The device and parameter counts, as a text summary."""
        keep = ("device", "total_steps", "epochs", "params", "train_size", "val_size", "test_size")
        self._writer.add_text("run", f"```json\n{json.dumps({k: info.get(k) for k in keep}, indent=2)}\n```")

    def on_step(self, record: dict[str, Any], progress: Any) -> None:
        """``train/loss``, ``train/lr``, ``train/img_per_s`` at the optimiser step."""
        self._scalars(record, {"loss": "train/loss", "lr": "train/lr", "img_per_s": "train/img_per_s"},
                      record["step"])

    def on_epoch(self, record: dict[str, Any], progress: Any) -> None:
        """Training and validation loss and accuracy at the epoch; flushed so a live TensorBoard sees it."""
        self._scalars(record, {"train_loss": "train/epoch_loss", "train_acc": "train/epoch_acc",
                               "val_loss": "val/loss", "val_acc": "val/acc"}, record["epoch"])
        self._writer.flush()

    def on_snapshot(self, epoch: int, tensors: Any, stats: Any, metadata: Any) -> None:
        """Not logged: the snapshots are KARST's own inspection data."""

    def on_test(self, record: dict[str, Any]) -> None:
        """``test/acc`` and ``test/loss`` at step 0 (there is one test)."""
        self._scalars(record, {"test_acc": "test/acc", "test_loss": "test/loss"}, 0)

    def on_end(self, summary: dict[str, Any], result: Any) -> None:
        """The final status as text, the HParams session end if completed; closes the files."""
        if self._closed:
            return
        self._writer.add_text("status", str(summary.get("status")))
        if summary.get("status") == "completed":
            self._writer._get_file_writer().add_summary(self._hparams_end)
        self._writer.close()
        self._closed = True


class MLflowLogger(Callback):
    """Logs the run to MLflow in a local folder, through an ``MlflowClient`` (no server, no global run).

    The store is an SQLite file ``<tracking_dir>/mlflow.db`` (artifacts would go to
    ``<tracking_dir>/artifacts``). MLflow's plain ``file:`` store is in maintenance mode since MLflow 3
    and refused from 3.13 on unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set process-wide; SQLite is
    MLflow's own recommended local store and needs only SQLAlchemy and alembic next to ``mlflow-skinny``.
    Browse with the full ``mlflow`` package: ``mlflow ui --backend-store-uri sqlite:///<tracking_dir>/mlflow.db``.

    Step metrics are buffered and written at most once a second (and at each epoch, test and end):
    every write is an SQLite transaction, which would otherwise slow short training steps.

    The first run in a new folder takes a few seconds: MLflow creates the tables by running its schema
    migrations. ``import mlflow`` also turns on MLflow's usage telemetry (``~/.config/mlflow/``, a
    reporting thread) unless ``MLFLOW_DISABLE_TELEMETRY=true`` or ``DO_NOT_TRACK=true`` is set.

    Args:
        tracking_dir: the folder holding the store (created if missing); runs of several trainings share it.
        config: the run's settings, logged as params with dotted keys (``method.adapter.rank``).
        run_name: the MLflow run's name (MLflow makes one up if None).
        experiment: the MLflow experiment, created if missing.

    Raises:
        ConfigError: ``mlflow-skinny``, SQLAlchemy or alembic is not installed.
    """

    flush_interval_s = 1.0

    def __init__(self, tracking_dir: str | Path, config: dict[str, Any], run_name: str | None = None,
                 experiment: str = "karst"):
        # KARST Studio sends nothing anywhere on its own: MLflow's usage telemetry stays off unless the
        # user turned it on explicitly (setdefault keeps their choice).
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            # local: an optional extra (requirements-loggers.txt), imported only when asked for
            import alembic  # noqa: F401  (the SQLite store's schema migrations)
            import sqlalchemy  # noqa: F401
            from mlflow import MlflowClient, entities
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
        except ImportError as err:
            package = {"sqlalchemy": "SQLAlchemy", "alembic": "alembic"}.get((err.name or "").split(".")[0])
            raise _missing("MLflow", package or "mlflow-skinny") from None
        self._entities = entities
        self.tracking_dir = Path(tracking_dir).resolve()
        self.tracking_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{(self.tracking_dir / 'mlflow.db').as_posix()}"
        # Two trainings starting at once would both create the experiment and the second would fail
        # (MLflow itself serialises the creation of the tables). A lock next to the store prevents it.
        with FileLock(self.tracking_dir / ".lock"):
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            found = self._client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else self._client.create_experiment(
                experiment, artifact_location=(self.tracking_dir / "artifacts").as_uri())
        self.run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [entities.Param(k, _text(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flatten_config(config).items()]
        self._client.log_batch(self.run_id, params=params)  # the client splits it into MLflow's batch limits
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._closed = False

    def _log(self, record: dict[str, Any], keys: dict[str, str], step: int) -> None:
        stamp = int(1000 * (record.get("t") or time.time()))
        self._pending += [self._entities.Metric(name, float(record[key]), stamp, step)
                          for key, name in keys.items() if record.get(key) is not None]

    def _flush(self) -> None:
        if self._pending:
            self._client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def on_phase(self, message: str) -> None:
        """Not logged: the phases are a live status, not a measurement."""

    def on_start(self, info: dict[str, Any]) -> None:
        """The device as a tag and the parameter counts as ``params.*`` params."""
        counts = info.get("params") or {}
        params = [self._entities.Param(f"params.{k}", str(v)) for k, v in counts.items()]
        device = self._entities.RunTag("device", str(info.get("device")))
        self._client.log_batch(self.run_id, params=params, tags=[device])

    def on_step(self, record: dict[str, Any], progress: Any) -> None:
        """``loss``, ``lr``, ``img_per_s`` at the optimiser step (buffered)."""
        self._log(record, {"loss": "loss", "lr": "lr", "img_per_s": "img_per_s"}, record["step"])
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._flush()

    def on_epoch(self, record: dict[str, Any], progress: Any) -> None:
        """``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` at the epoch."""
        self._log(record, {k: k for k in ("train_loss", "train_acc", "val_loss", "val_acc")}, record["epoch"])
        self._flush()

    def on_snapshot(self, epoch: int, tensors: Any, stats: Any, metadata: Any) -> None:
        """Not logged: the snapshots are KARST's own inspection data."""

    def on_test(self, record: dict[str, Any]) -> None:
        """``test_acc`` and ``test_loss`` at step 0."""
        self._log(record, {"test_acc": "test_acc", "test_loss": "test_loss"}, 0)
        self._flush()

    def on_end(self, summary: dict[str, Any], result: Any) -> None:
        """Tag ``status`` and end the run: FINISHED if completed, KILLED if cancelled, FAILED otherwise."""
        if self._closed:
            return
        self._flush()
        status = str(summary.get("status"))
        self._client.set_tag(self.run_id, "status", status)
        state = {"completed": "FINISHED", "cancelled": "KILLED"}.get(status, "FAILED")
        self._client.set_terminated(self.run_id, status=state)
        self._closed = True
