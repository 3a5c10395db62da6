"""The training loop. It knows nothing about UIs: it reports through callbacks (``karst.callbacks``).

``train(config)`` builds the backbone, the data and the method, fine-tunes with AdamW and a
cosine schedule with warm-up (timm's own factories, updated every step), evaluates each epoch,
and tests at the end. With a ``run_dir`` it also records the run folder and exports the weights
(``RunRecorder``, ``RunExporter``: just more callbacks), which is what the worker and the CLI use;
without one it is a notebook call. ``config.tensorboard`` / ``config.mlflow`` add those loggers.

Snapshots: epoch 0 (before training) and after every epoch, the trainable tensors plus
per-channel feature statistics of every adapted layer on a fixed probe batch (the first
``probe_size`` validation images), from which ``karst.inspect`` draws its views; before training,
also the reference statistics alignment is measured against (``karst.stats.reference_stats``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from .backbones import load_backbone
from .callbacks import Callback, Progress, TrainResult
from .checkpoint import StateSaver, load_state, restore_train_state, train_state
from .config import TrainConfig
from .data import load_dataset
from .device import autocast, describe_device, resolve_device
from .errors import DataError, KarstError, RunError
from .export import RunExporter
from .loggers import MLflowLogger, TensorBoardLogger
from .methods import build_method
from .model import karst_layers
from .runs import RunRecorder
from .stats import feature_stats, reference_stats

__all__ = ["train", "Trainer", "run_callbacks", "Callback", "Progress", "TrainResult", "feature_stats",
           "snapshot_tensors", "seed_everything"]


class _Stop(Exception):
    """Internal: leave the training loop with a status (cancelled / diverged)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def snapshot_tensors(method: Any) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable tensors (safetensors refuses shared or strided storage)."""
    return {k: v.detach().float().cpu().clone().contiguous() for k, v in method.adapter_state_dict().items()}


def _probe_batch(bundle: Any, size: int) -> torch.Tensor:
    # The first images of the validation split (else train): fixed for the whole run, so the
    # statistics of different epochs are comparable.
    source = bundle.val if len(bundle.val) else bundle.train
    n = min(size, len(source))
    return torch.stack([source[i][0] for i in range(n)])


def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) without label smoothing."""
    if len(loader.dataset) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device):
                logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
            count += y.numel()
    model.train()
    return loss_sum / count, correct / count


def _subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    # A seeded random subset, not the first n (files are often sorted by class).
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:limit].tolist())


def _finite_or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


class _Snapshots:
    """Epoch snapshots: trainable tensors and probe statistics, handed to ``on_snapshot``.

    Epoch 0 (the model before training) is taken after the first step, from a copy, so the first
    point of the loss curve is not kept waiting by the probe pass. Without KARST layers it is
    written at once.
    """

    def __init__(self, trainer: Trainer):
        self.t = trainer
        self.seconds = 0.0
        config = trainer.config
        self.meta = {
            "method": config.method.name,
            "karst_layers": ",".join(karst_layers(trainer.model)),
            "class_names": json.dumps(trainer.result.class_names),
            "train_config": json.dumps(config.to_dict()),
        }
        self._initial: dict[str, Any] | None = None
        if trainer.start_epoch > 0:
            pass  # a resumed run: epoch 0 was written before it stopped
        elif self.meta["karst_layers"]:
            t0 = time.perf_counter()
            self._initial = {"model": copy.deepcopy(trainer.model), "tensors": snapshot_tensors(trainer.method)}
            self.seconds += time.perf_counter() - t0
        else:
            self.take(0)

    def take(self, epoch: int, source: nn.Module | None = None, tensors: dict | None = None) -> None:
        t0 = time.perf_counter()
        model, config = source or self.t.model, self.t.config
        targets = config.method.adapter.target_modules
        stats = feature_stats(model, self.t.probe, self.t.device, targets=targets)
        if epoch == 0:  # the model is still the frozen one: its statistics are the reference
            self.t.emit("on_reference", reference_stats(model, stats, self.t.result.backbone, config.pretrained,
                                                        self.t.device, targets))
        tensors = tensors if tensors is not None else snapshot_tensors(self.t.method)
        self.t.emit("on_snapshot", epoch, tensors, stats, {**self.meta, "epoch": str(epoch)})
        self.seconds += time.perf_counter() - t0

    def flush_initial(self) -> None:
        if self._initial is not None:
            initial, self._initial = self._initial, None  # free the copy once written
            self.take(0, initial["model"], initial["tensors"])


class Trainer:
    """One run: :meth:`build` the parts, :meth:`fit` epoch by epoch, :meth:`test`, reporting to callbacks.

    Args:
        config: the whole run.
        callbacks: event receivers, called in order.
        cancel_check: called before every step and before testing; True stops the run as ``cancelled``.
        run_id: the run folder's name, if any (recorded in the summary).
        resume: a training state to continue from (``karst.checkpoint.load_state``); ``{"epoch": 0}``
            starts a resumed run over.
    """

    def __init__(self, config: TrainConfig, callbacks: Iterable[Callback] = (),
                 cancel_check: Callable[[], bool] | None = None, run_id: str | None = None,
                 resume: dict[str, Any] | None = None):
        self.config = config
        self.callbacks = list(callbacks)
        self.cancel_check = cancel_check or (lambda: False)
        self.resume = resume
        self.step = self.start_step = self.start_epoch = 0
        self.state_seconds = 0.0
        self.summary: dict[str, Any] = {
            "run_id": run_id, "status": "failed", "message": "", "method": config.method.name,
            "backbone": config.backbone, "dataset": config.dataset, "val_acc": None, "test_acc": None,
            "best_val_acc": None, "trainable_params": None, "total_params": None, "seconds": None,
            "device": None, "epochs_done": 0,
        }

    def emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            handler = getattr(cb, event, None)
            if handler is not None:
                handler(*args)

    # -- building ---------------------------------------------------------------------------------
    def build(self) -> TrainResult:
        """Backbone, data, method, loaders, optimiser and schedule; then ``on_start``."""
        config = self.config
        self.device = resolve_device(config.device)
        self.summary["device"] = describe_device(self.device)
        seed_everything(config.seed)
        self.emit("on_phase", f"loading backbone {config.backbone}")
        # The class count is only known after the data, and the data needs the backbone's transform:
        # build with a 1-way head, then give it the right one (seeded, so still reproducible).
        backbone = load_backbone(config.backbone, num_classes=1, pretrained=config.pretrained,
                                 arch=config.backbone_arch, drop_path_rate=config.drop_path)
        self.emit("on_phase", f"loading dataset {config.dataset}")
        backbone.use_preprocess(config.preprocess)
        bundle = load_dataset(config.dataset, transform=backbone.transform(), seed=config.seed)
        seed_everything(config.seed)
        backbone.model.reset_classifier(len(bundle.class_names))
        self.method = build_method(backbone.model, config.method)
        self.model = self.method.model.to(self.device)
        self.result = TrainResult(method=self.method, backbone=backbone, class_names=list(bundle.class_names))
        self._loaders(bundle)
        self._optimiser()
        if self.resume is not None:
            self._restore()
        self._start(bundle)
        return self.result

    def _restore(self) -> None:
        """Continue after the epoch of ``self.resume``: weights, optimiser, schedule and generators as they were."""
        if "trainable" in self.resume:  # else no state was saved: the run starts over
            restore_train_state(self, self.resume)
        self.start_epoch, self.start_step = self.resume["epoch"], self.step
        self.summary["resumed_from"] = self.start_epoch
        self.emit("on_resume", self.start_epoch, self.step)

    def _loaders(self, bundle: Any) -> None:
        config = self.config
        # The VTAB-1K final protocol trains on train800val200 and evaluates on test as it goes.
        train = ConcatDataset([bundle.train, bundle.val]) if config.train_on_val else bundle.train
        self.train_set = _subset(train, config.max_train_samples, config.seed)
        if len(self.train_set) == 0:
            raise DataError(f"dataset {config.dataset!r} has no training images; check the path or split files.")
        pin = self.device.type == "cuda"
        self.loader = DataLoader(self.train_set, batch_size=config.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(config.seed),
                                 num_workers=config.num_workers, pin_memory=pin)
        eval_kw = {"batch_size": max(config.batch_size, 64), "num_workers": config.num_workers, "pin_memory": pin}
        self.test_loader = DataLoader(bundle.test, **eval_kw)
        self.eval_split = "test" if config.train_on_val else "val"
        self.eval_loader = self.test_loader if config.train_on_val else DataLoader(bundle.val, **eval_kw)
        self.probe = _probe_batch(bundle, config.probe_size)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * config.epochs

    def _optimiser(self) -> None:
        config = self.config
        # timm excludes biases and 1-d tensors (norms, s1, s2) from weight decay.
        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched="cosine", num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
            warmup_lr=config.lr * 0.01, min_lr=config.lr * 0.001,
            step_on_epochs=False,  # per-step cosine: smooth curves even for 10-epoch runs
            updates_per_epoch=self.steps_per_epoch,
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def _start(self, bundle: Any) -> None:
        counts = self.method.param_count()
        names = self.result.class_names
        self.summary.update(trainable_params=counts.trainable, adapter_params=counts.adapter, head_params=counts.head,
                            total_params=counts.total, num_classes=len(names), train_images=len(self.train_set),
                            skipped_files=getattr(bundle, "skipped", 0))
        self.emit("on_start", {
            "device": self.summary["device"], "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch, "epochs": self.config.epochs, "params": counts.to_dict(),
            "class_names": names, "train_size": len(self.train_set), "val_size": len(bundle.val),
            "test_size": len(bundle.test), "step": self.step, "epoch": self.start_epoch,
        })

    # -- training ---------------------------------------------------------------------------------
    def _progress(self, epochs_done: int) -> Progress:
        elapsed = time.perf_counter() - self.t_train
        eta = elapsed / max(self.step - self.start_step, 1) * (self.total_steps - self.step)
        return Progress(self.step, self.total_steps, epochs_done, self.config.epochs, elapsed, eta)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with autocast(self.device):
            logits = self.model(x)
        loss = self.criterion(logits.float(), y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            lr_now = self.optimizer.param_groups[0]["lr"]
            raise _Stop("diverged", f"the loss became {loss_value} at step {self.step + 1} (lr {lr_now:.3g}); the "
                                    f"learning rate is too high for this setting, try --lr {self.config.lr / 10:g}.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.scheduler.step_update(num_updates=self.step)
        return loss_value, logits.detach()

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training data; (mean loss, accuracy) of the batches as trained."""
        loss_sum, correct, seen = 0.0, 0, 0
        t_step = time.perf_counter()
        for i, (x, y) in enumerate(self.loader):
            if self.cancel_check():
                raise _Stop("cancelled", f"cancelled at step {self.step}/{self.total_steps}")
            lr_used = self.optimizer.param_groups[0]["lr"]
            loss_value, logits = self._train_step(x, y)
            now, n = time.perf_counter(), y.numel()
            loss_sum += loss_value * n
            correct += (logits.argmax(-1).cpu() == y).sum().item()
            seen += n
            record = {"type": "step", "step": self.step, "epoch": round(epoch + (i + 1) / self.steps_per_epoch, 4),
                      "loss": loss_value, "lr": lr_used, "img_per_s": round(n / max(now - t_step, 1e-9), 2),
                      "t": time.time()}
            self.emit("on_step", record, self._progress(epoch))
            self.snapshots.flush_initial()
            t_step = time.perf_counter()
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def _evaluates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with an evaluation and a snapshot."""
        return (epoch + 1) % self.config.eval_every == 0 or epoch + 1 == self.config.epochs

    def _validate(self, epoch: int, train_loss: float, train_acc: float) -> None:
        record = {"type": "epoch", "epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                  "val_loss": None, "val_acc": None}
        self.summary["epochs_done"] = epoch + 1
        if self._evaluates(epoch):
            loss, acc = (_finite_or_none(v) for v in _evaluate(self.model, self.eval_loader, self.device))
            split = self.eval_split  # "val", or "test" under train_on_val (best then chosen on the test set)
            best = self.summary.get(f"best_{split}_acc")
            best = acc if best is None or (acc is not None and acc > best) else best
            record.update({f"{split}_loss": loss, f"{split}_acc": acc})
            self.summary.update({f"best_{split}_acc": best, **({"val_acc": acc} if split == "val" else {})})
        progress = self._progress(epoch + 1)
        self.emit("on_epoch", {**record, "elapsed_s": round(progress.elapsed_s, 3), "t": time.time()}, progress)

    def fit(self) -> None:
        """Train every epoch (validate and snapshot after each); raises ``_Stop`` when stopped."""
        self.t_train = time.perf_counter()
        self.snapshots = _Snapshots(self)
        self.model.train()
        for epoch in range(self.start_epoch, self.config.epochs):
            train_loss, train_acc = self._train_epoch(epoch)
            self._validate(epoch, train_loss, train_acc)
            if self._evaluates(epoch):
                self.snapshots.take(epoch + 1)
            self._save_state(epoch + 1)

    def _save_state(self, epoch: int) -> None:
        """Hand the state to resume from to the callbacks (last in the epoch: every generator has moved)."""
        if self.config.save_state:
            t0 = time.perf_counter()
            self.emit("on_train_state", epoch, train_state(self, epoch))
            self.state_seconds += time.perf_counter() - t0

    def test(self) -> None:
        if self.cancel_check():  # a Stop pressed during the last validation is honoured
            raise _Stop("cancelled", f"cancelled after step {self.step}/{self.total_steps}, before testing")
        self.emit("on_phase", "testing")
        test_loss, test_acc = _evaluate(self.model, self.test_loader, self.device)
        self.summary.update(status="completed", message="completed", test_acc=_finite_or_none(test_acc))
        self.emit("on_test", {"type": "test", "test_acc": _finite_or_none(test_acc),
                              "test_loss": _finite_or_none(test_loss), "t": time.time()})

    def run(self) -> TrainResult:
        """build, fit and test; a cancel, a divergence or Ctrl-C end the run with that status."""
        t_start = time.perf_counter()
        self.build()
        try:
            self.fit()
            self.test()
        except _Stop as stop:
            self.snapshots.flush_initial()  # stopped before the first step: epoch 0 is the last checkpoint
            self.summary.update(status=stop.status, message=stop.message)
        except KeyboardInterrupt:
            self.snapshots.flush_initial()
            self.summary.update(status="cancelled", message=f"interrupted by the user at step {self.step}/"
                                                            f"{self.total_steps}")
        total = time.perf_counter() - t_start
        self.summary.update(steps=self.step, train_seconds=round(time.perf_counter() - self.t_train, 3),
                            snapshot_seconds=round(self.snapshots.seconds, 3),
                            state_seconds=round(self.state_seconds, 3),
                            snapshot_pct=round(100.0 * self.snapshots.seconds / max(total, 1e-9), 2), pid=os.getpid())
        return self.result


def run_callbacks(config: TrainConfig, run_dir: Path | None) -> list[Callback]:
    """The callbacks a run always gets: its folder and export (with a ``run_dir``) and the loggers asked for."""
    out: list[Callback] = []
    if run_dir is not None:
        # The exporter runs before the recorder at the end, so summary.json lists the exported files.
        out += [RunExporter(run_dir), RunRecorder(run_dir, config)]
        if config.save_state:
            out.append(StateSaver(run_dir))
    if config.tensorboard:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = run_dir / "tensorboard" if run_dir is not None else Path("tensorboard") / stamp
        out.append(TensorBoardLogger(folder, config.to_dict()))
    if config.mlflow:
        tracking = run_dir.parent / "mlruns" if run_dir is not None else Path("mlruns")
        out.append(MLflowLogger(tracking, config.to_dict(), run_name=run_dir.name if run_dir is not None else None))
    return out


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    callbacks: Iterable[Callback] = (),
    cancel_check: Callable[[], bool] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``config.backbone`` on ``config.dataset`` with ``config.method``.

    Args:
        config: the whole run.
        run_dir: an existing run folder to record into (config, status, metrics, snapshots,
            export, summary); ``None`` records nothing (notebook use).
        callbacks: extra event receivers (progress bars, UIs).
        cancel_check: called before every step; True stops the run as ``cancelled``. Defaults to
            "a ``cancel`` file exists in ``run_dir``" when a run folder is given.
        resume: continue the run in ``run_dir`` after its last saved training state (from the
            start if it saved none); its metrics and snapshots are rewound to that epoch first.

    Returns:
        The summary dict (``status`` is completed, cancelled, diverged or failed).

    Raises:
        KarstError: bad settings or data (after callbacks saw the run end as ``failed``).
        Exception: a bug, after the same; with a ``run_dir`` its traceback is in ``error.log``.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None and cancel_check is None:
        cancel_check = (run_dir / "cancel").exists
    t_start = time.perf_counter()
    trainer = Trainer(config, [], cancel_check, run_id=run_dir.name if run_dir is not None else None)
    result: TrainResult | None = None
    try:
        trainer.callbacks = [*run_callbacks(config, run_dir), *callbacks]
        if resume:
            if run_dir is None:
                raise RunError("resume=True needs the run folder (run_dir) to resume from.")
            trainer.resume = load_state(run_dir) or {"epoch": 0}
        result = trainer.run()
    except KarstError as e:
        trainer.summary.update(status="failed", message=str(e))
        raise
    except Exception as e:  # a bug: record a failed run, with the traceback next to it, then let it surface
        message = f"internal error ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        if run_dir is not None:
            (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            message += f"; this is a bug, its traceback is in {run_dir / 'error.log'}"
        trainer.summary.update(status="failed", message=message)
        raise
    finally:
        trainer.summary["seconds"] = round(time.perf_counter() - t_start, 3)
        trainer.emit("on_end", trainer.summary, result)
    return trainer.summary
