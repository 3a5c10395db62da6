"""The training loop. It knows nothing about UIs: it reports through callbacks.

``train(config)`` builds the backbone, the data and the method, fine-tunes with AdamW and a
cosine schedule with warm-up (timm's own factories, updated every step), evaluates each epoch,
and tests at the end. With a ``run_dir`` it also records the run folder (``RunRecorder``, just
another callback), which is what the worker and the CLI use; without one it is a notebook call.

Snapshots: epoch 0 (before training) and after every epoch, the trainable tensors plus
per-channel feature statistics of every KARST layer on a fixed probe batch (the first
``probe_size`` validation images), from which ``karst.inspect`` draws its views.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from .config import TrainConfig
from .device import autocast, describe_device, resolve_device
from .errors import DataError, KarstError
from .model import karst_layers

__all__ = ["train", "Callback", "Progress", "TrainResult", "feature_stats", "snapshot_tensors", "seed_everything"]


@dataclass
class Progress:
    """Where the run is; handed to every step/epoch callback."""

    step: int
    total_steps: int
    epoch: int  # epochs finished
    epochs: int
    elapsed_s: float
    eta_s: float | None


@dataclass
class TrainResult:
    """What the run produced, for callbacks that export it (``on_end``)."""

    method: Any  # karst.methods.Method
    backbone: Any  # karst.backbones.Backbone
    class_names: list[str]


class Callback:
    """Receives the run's events; override what you need. All methods are no-ops here."""

    def on_phase(self, message: str) -> None:
        """A setup phase began ("loading backbone", ...)."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Training is about to begin: device, steps, parameter counts, class names."""

    def on_step(self, record: dict[str, Any], progress: Progress) -> None:
        """A ``{"type": "step", ...}`` metrics record after each optimiser step."""

    def on_epoch(self, record: dict[str, Any], progress: Progress) -> None:
        """A ``{"type": "epoch", ...}`` metrics record after each epoch's validation."""

    def on_snapshot(
        self, epoch: int, tensors: dict[str, torch.Tensor], stats: dict[str, Any], metadata: dict[str, str]
    ) -> None:
        """Trainable tensors (CPU copies) and probe-batch feature statistics at ``epoch``."""

    def on_test(self, record: dict[str, Any]) -> None:
        """The ``{"type": "test", ...}`` record."""

    def on_end(self, summary: dict[str, Any], result: TrainResult | None) -> None:
        """The run finished (any status); ``result`` is None if it failed before the model existed."""


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


def _probe_batch(bundle: Any, size: int) -> torch.Tensor:
    # The first images of the validation split (else train): fixed for the whole run, so the
    # statistics of different epochs are comparable.
    source = bundle.val if len(bundle.val) else bundle.train
    n = min(size, len(source))
    return torch.stack([source[i][0] for i in range(n)])


def snapshot_tensors(method: Any) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable tensors (safetensors refuses shared or strided storage)."""
    return {k: v.detach().float().cpu().clone().contiguous() for k, v in method.adapter_state_dict().items()}


@torch.no_grad()
def feature_stats(
    model: nn.Module, probe: torch.Tensor, device: torch.device, chunk: int = 32, max_tokens: int | None = 2048
) -> dict[str, dict[str, np.ndarray]]:
    """Per-channel mean and std of each KARST layer's three outputs on ``probe``.

    For every ``KarstLinear`` a forward hook catches the layer's input and runs
    ``forward_parts`` on it: W0x+b0 (``base``), +ΔWx (``pre``, before re-scaling) and the layer
    output (``out``). Each chunk's mean and variance are taken in float32 and merged across
    chunks in float64 (Chan et al.'s pairwise update), so memory stays at one chunk's activations.

    Cost: ``forward_parts`` and the reductions run on every ``s``-th token of the flattened
    (image, token) axis, with the stride ``s`` chosen so that about ``max_tokens`` tokens are
    used (``None``: all). The subset is fixed by the probe, so epochs stay comparable; 2048
    tokens estimate a channel's std to about ±3 %, plenty for the plots, at a fraction of the
    cost on a CPU (64 images of a ViT-B/16 have 12,608 tokens).

    Returns:
        ``{layer: {"base_mean", "base_std", "pre_mean", "pre_std", "out_mean", "out_std"}}``,
        each a float32 array of length d_out.
    """
    layers = karst_layers(model)
    if not layers or len(probe) == 0:
        return {}
    acc: dict[str, dict[str, list]] = {}  # layer -> part -> [count, mean, sum of squared deviations]

    chunk_images = [0]  # images in the chunk being run (the hooks see tokens only)

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].reshape(-1, inputs[0].shape[-1])  # (images·tokens, d_in)
            if max_tokens is not None:
                total = x.shape[0] // chunk_images[0] * len(probe)
                x = x[:: max(1, math.ceil(total / max_tokens))]
            base, pre, _ = module.forward_parts(x)
            slot = acc.setdefault(name, {})
            # The re-scaled output is a per-channel affine map of `pre`, so its statistics follow
            # exactly from pre's (below): two reductions over the activations instead of three.
            for key, t in (("base", base), ("pre", pre)):
                t = t.detach().reshape(-1, t.shape[-1]).float()  # (tokens, d_out)
                var_b, mean_b = torch.var_mean(t, dim=0, correction=0)
                n_b, mean_b, m2_b = t.shape[0], mean_b.double(), var_b.double() * t.shape[0]
                if key not in slot:
                    slot[key] = [n_b, mean_b, m2_b]
                    continue
                n_a, mean_a, m2_a = slot[key]
                n = n_a + n_b
                delta = mean_b - mean_a
                slot[key] = [n, mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * n_b / n)]

        return hook

    handles = [layer.register_forward_hook(make_hook(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(probe), chunk):
            chunk_images[0] = len(probe[i : i + chunk])
            with autocast(device):
                model(probe[i : i + chunk].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, slot in acc.items():
        entry = {}
        for key, (n, mean, m2) in slot.items():
            entry[f"{key}_mean"] = mean.float().cpu().numpy()
            entry[f"{key}_std"] = (m2 / n).clamp_min(0.0).sqrt().float().cpu().numpy()
        layer = layers[name]
        if layer.s1 is None:
            entry["out_mean"], entry["out_std"] = entry["pre_mean"].copy(), entry["pre_std"].copy()
        else:
            # out = (1 + s1) ⊙ pre + s2  ⇒  μ_out = (1 + s1) μ_pre + s2,  σ_out = |1 + s1| σ_pre.
            scale = (1.0 + layer.s1.detach().double().cpu()).numpy()
            shift = layer.s2.detach().double().cpu().numpy()
            entry["out_mean"] = (scale * entry["pre_mean"] + shift).astype(np.float32)
            entry["out_std"] = (np.abs(scale) * entry["pre_std"]).astype(np.float32)
        out[name] = entry
    return out


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


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    callbacks: Iterable[Callback] = (),
    cancel_check: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``config.backbone`` on ``config.dataset`` with ``config.method``.

    Args:
        config: the whole run.
        run_dir: an existing run folder to record into (config, status, metrics, snapshots,
            export, summary); ``None`` records nothing (notebook use).
        callbacks: extra event receivers (progress bars, UIs).
        cancel_check: called before every step; True stops the run as ``cancelled``. Defaults to
            "a ``cancel`` file exists in ``run_dir``" when a run folder is given.

    Returns:
        The summary dict (``status`` is completed, cancelled, diverged or failed).

    Raises:
        KarstError: bad settings or data (after callbacks saw the run end as ``failed``).
    """
    from .runs import RunRecorder  # runs imports nothing from here; keep module load light

    callbacks = list(callbacks)
    if run_dir is not None:
        run_dir = Path(run_dir)
        callbacks.insert(0, RunRecorder(run_dir, config))
        if cancel_check is None:
            cancel_file = run_dir / "cancel"
            cancel_check = cancel_file.exists
    cancel_check = cancel_check or (lambda: False)

    def emit(event: str, *args: Any) -> None:
        for cb in callbacks:
            getattr(cb, event)(*args)

    t_start = time.perf_counter()
    summary: dict[str, Any] = {
        "run_id": run_dir.name if run_dir is not None else None,
        "status": "failed",
        "message": "",
        "method": config.method,
        "backbone": config.backbone,
        "dataset": config.dataset,
        "val_acc": None,
        "test_acc": None,
        "best_val_acc": None,
        "trainable_params": None,
        "total_params": None,
        "seconds": None,
        "device": None,
        "epochs_done": 0,
    }
    result: TrainResult | None = None
    try:
        result = _run(config, summary, emit, cancel_check, t_start)
    except KarstError as e:
        summary.update(status="failed", message=str(e))
        raise
    except Exception as e:  # a bug; report it as a failed run, then let it surface
        summary.update(status="failed", message=f"internal error: {type(e).__name__}: {e}"[:500])
        raise
    finally:
        summary["seconds"] = round(time.perf_counter() - t_start, 3)
        emit("on_end", summary, result)
    return summary


def _run(
    config: TrainConfig,
    summary: dict[str, Any],
    emit: Callable[..., None],
    cancel_check: Callable[[], bool],
    t_start: float,
) -> TrainResult:
    from .backbones import load_backbone
    from .data import load_dataset
    from .methods import build_method

    device = resolve_device(config.device)
    summary["device"] = describe_device(device)
    seed_everything(config.seed)

    emit("on_phase", f"loading backbone {config.backbone}")
    # The class count is only known after the data, and the data needs the backbone's transform:
    # build with a 1-way head, then give it the right one (seeded, so still reproducible).
    backbone = load_backbone(
        config.backbone,
        num_classes=1,
        pretrained=config.pretrained,
        arch=config.backbone_arch,
        drop_path_rate=config.drop_path,
    )
    emit("on_phase", f"loading dataset {config.dataset}")
    bundle = load_dataset(config.dataset, transform=backbone.transform(), seed=config.seed)
    class_names = list(bundle.class_names)
    seed_everything(config.seed)
    backbone.model.reset_classifier(len(class_names))
    method = build_method(backbone.model, config.method_config())
    model = method.model.to(device)
    result = TrainResult(method=method, backbone=backbone, class_names=class_names)

    train_set = _subset(bundle.train, config.max_train_samples, config.seed)
    if len(train_set) == 0:
        raise DataError(f"dataset {config.dataset!r} has no training images; check the path or split files.")
    pin = device.type == "cuda"
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
        num_workers=config.num_workers,
        pin_memory=pin,
    )
    eval_kw = {"batch_size": max(config.batch_size, 64), "num_workers": config.num_workers, "pin_memory": pin}
    val_loader = DataLoader(bundle.val, **eval_kw)
    test_loader = DataLoader(bundle.test, **eval_kw)
    probe = _probe_batch(bundle, config.probe_size)

    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    # timm excludes biases and 1-d tensors (norms, s1, s2) from weight decay.
    optimizer = create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        warmup_lr=config.lr * 0.01,
        min_lr=config.lr * 0.001,
        step_on_epochs=False,  # per-step cosine: smooth curves even for 10-epoch runs
        updates_per_epoch=steps_per_epoch,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    counts = method.param_count()
    summary.update(
        trainable_params=counts.trainable,
        adapter_params=counts.adapter,
        head_params=counts.head,
        total_params=counts.total,
        num_classes=len(class_names),
        skipped_files=getattr(bundle, "skipped", 0),
    )
    emit(
        "on_start",
        {
            "device": summary["device"],
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "epochs": config.epochs,
            "params": counts.to_dict(),
            "class_names": class_names,
            "train_size": len(train_set),
            "val_size": len(bundle.val),
            "test_size": len(bundle.test),
        },
    )

    layer_names = list(karst_layers(model))
    # Each snapshot describes itself, so an interrupted run's last snapshot is a usable checkpoint.
    snap_meta = {
        "method": config.method,
        "karst_layers": ",".join(layer_names),
        "class_names": json.dumps(class_names),
        "train_config": json.dumps(config.to_dict()),
    }
    snapshot_s = 0.0

    def snapshot(epoch: int, source: nn.Module | None = None, tensors: dict | None = None) -> None:
        nonlocal snapshot_s
        t0 = time.perf_counter()
        stats = feature_stats(source or model, probe, device)
        tensors = tensors if tensors is not None else snapshot_tensors(method)
        emit("on_snapshot", epoch, tensors, stats, {**snap_meta, "epoch": str(epoch)})
        snapshot_s += time.perf_counter() - t0

    # Epoch 0 (the model before training) is recorded after the first step, from a copy, so the
    # first point of the loss curve is not kept waiting by the probe pass (the app promises it
    # within seconds of launch). Without KARST layers there are no statistics: write it at once.
    initial: dict[str, Any] | None = None
    if layer_names:
        t0 = time.perf_counter()
        initial = {"model": copy.deepcopy(model), "tensors": snapshot_tensors(method)}
        snapshot_s += time.perf_counter() - t0
    else:
        snapshot(0)

    def flush_initial() -> None:
        nonlocal initial
        if initial is not None:
            snapshot(0, initial["model"], initial["tensors"])
            initial = None  # free the copy

    t_train = time.perf_counter()
    step, best_val = 0, None
    stopped = False
    try:
        model.train()
        for epoch in range(config.epochs):
            loss_sum, correct, seen = 0.0, 0, 0
            t_step = time.perf_counter()
            for i, (x, y) in enumerate(loader):
                if cancel_check():
                    raise _Stop("cancelled", f"cancelled at step {step}/{total_steps}")
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast(device):
                    logits = model(x)
                loss = criterion(logits.float(), y)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    lr_now = optimizer.param_groups[0]["lr"]
                    raise _Stop(
                        "diverged",
                        f"the loss became {loss_value} at step {step + 1} (lr {lr_now:.3g}); "
                        f"the learning rate is too high for this setting, try --lr {config.lr / 10:g}.",
                    )
                lr_used = optimizer.param_groups[0]["lr"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], config.grad_clip
                    )
                optimizer.step()
                step += 1
                scheduler.step_update(num_updates=step)
                now = time.perf_counter()
                n = y.numel()
                loss_sum += loss_value * n
                correct += (logits.detach().argmax(-1) == y).sum().item()
                seen += n
                elapsed = now - t_train
                progress = Progress(
                    step, total_steps, epoch, config.epochs, elapsed, elapsed / step * (total_steps - step)
                )
                emit(
                    "on_step",
                    {
                        "type": "step",
                        "step": step,
                        "epoch": round(epoch + (i + 1) / steps_per_epoch, 4),
                        "loss": loss_value,
                        "lr": lr_used,
                        "img_per_s": round(n / max(now - t_step, 1e-9), 2),
                        "t": time.time(),
                    },
                    progress,
                )
                flush_initial()
                t_step = time.perf_counter()
            val_loss, val_acc = _evaluate(model, val_loader, device)
            best_val = val_acc if best_val is None or val_acc > best_val else best_val
            summary.update(
                epochs_done=epoch + 1, val_acc=_finite_or_none(val_acc), best_val_acc=_finite_or_none(best_val)
            )
            elapsed = time.perf_counter() - t_train
            emit(
                "on_epoch",
                {
                    "type": "epoch",
                    "epoch": epoch + 1,
                    "train_loss": loss_sum / max(seen, 1),
                    "train_acc": correct / max(seen, 1),
                    "val_loss": _finite_or_none(val_loss),
                    "val_acc": _finite_or_none(val_acc),
                    "elapsed_s": round(elapsed, 3),
                    "t": time.time(),
                },
                Progress(
                    step, total_steps, epoch + 1, config.epochs, elapsed, elapsed / max(step, 1) * (total_steps - step)
                ),
            )
            snapshot(epoch + 1)
    except _Stop as stop:
        flush_initial()  # stopped before the first step: epoch 0 is still the last checkpoint
        stopped = True
        summary.update(status=stop.status, message=stop.message)
    except KeyboardInterrupt:
        flush_initial()
        stopped = True
        summary.update(status="cancelled", message=f"interrupted by the user at step {step}/{total_steps}")

    if not stopped:
        emit("on_phase", "testing")
        test_loss, test_acc = _evaluate(model, test_loader, device)
        summary.update(status="completed", message="completed", test_acc=_finite_or_none(test_acc))
        test_record = {"type": "test", "test_acc": _finite_or_none(test_acc), "test_loss": _finite_or_none(test_loss)}
        emit("on_test", {**test_record, "t": time.time()})
    total = time.perf_counter() - t_start
    summary.update(
        steps=step,
        train_seconds=round(time.perf_counter() - t_train, 3),
        snapshot_seconds=round(snapshot_s, 3),
        snapshot_pct=round(100.0 * snapshot_s / max(total, 1e-9), 2),
        pid=os.getpid(),
    )
    return result
