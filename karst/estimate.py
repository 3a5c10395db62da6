"""Before a launch: how many steps a run will take, about how long, and settings that look like typos.

The time is estimated from the pace of an earlier finished run of the same backbone on the same
device (its training seconds per image seen, evaluation included), never from a guess: without such
a run the estimate says so. The warnings are advice; the settings are valid either way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import DEFAULT_LR, TrainConfig

__all__ = ["RunEstimate", "estimate_run", "LR_WARN_FACTOR", "LONG_RUN_SECONDS", "MANY_EPOCHS"]

# A learning rate this many times the method's default is more likely a typo than a choice.
LR_WARN_FACTOR = 10.0
# Runs longer than this hold the shared queue for a long time: say so before launching.
LONG_RUN_SECONDS = 3600.0
# Without a pace to go by, this many epochs is worth a second look.
MANY_EPOCHS = 200


@dataclass
class RunEstimate:
    """Steps and time of a planned run, and warnings about its settings.

    Attributes:
        train_images: images per epoch (None: not known before the data is read).
        steps_per_epoch, total_steps: optimiser steps (None when the image count is unknown).
        seconds: estimated wall time (None without a comparable earlier run).
        basis: where ``seconds`` comes from, in words.
        warnings: settings that look like mistakes, one line each.
    """

    train_images: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    seconds: float | None
    basis: str
    warnings: list[str] = field(default_factory=list)


def _pace(config: TrainConfig, history: Iterable[Mapping[str, Any]], device: str | None) -> tuple[float, str] | None:
    """Seconds per training image seen, from the newest finished run of this backbone (and device)."""
    for row in history:
        summary, raw = row.get("summary") or {}, row.get("config") or {}
        if summary.get("status") != "completed" or raw.get("backbone") != config.backbone:
            continue
        if device is not None and summary.get("device") and not str(summary["device"]).startswith(device):
            continue
        seen = (summary.get("train_images") or 0) * (summary.get("epochs_done") or 0)
        seconds = summary.get("train_seconds")
        if seen and seconds:
            return seconds / seen, f"at the pace of run {row.get('run_id')} ({seen / seconds:.0f} images/s)"
    return None


def estimate_run(config: TrainConfig, dataset_sizes: Mapping[str, int] | None,
                 history: Iterable[Mapping[str, Any]] = (), device: str | None = None) -> RunEstimate:
    """Steps, time and warnings for ``config``.

    Args:
        dataset_sizes: the dataset's split sizes (``{"train": 800, ...}``) if known before reading it.
        history: earlier runs as ``karst.runs.RunStore.list_runs`` gives them (newest first).
        device: the device type the run will use ("cpu", "cuda", ...), to compare like with like.
    """
    train = (dataset_sizes or {}).get("train")
    if train is not None and config.train_on_val:
        train += (dataset_sizes or {}).get("val", 0)
    if config.max_train_samples is not None:
        train = min(train, config.max_train_samples) if train is not None else config.max_train_samples
    steps = math.ceil(train / config.batch_size) if train else None
    total = steps * config.epochs if steps else None
    pace = _pace(config, history, device) if train else None
    seconds = pace[0] * train * config.epochs if pace else None
    basis = pace[1] if pace else "no finished run of this backbone on this device to estimate the time from"
    warnings = []
    default_lr = DEFAULT_LR.get(config.method.name)
    if default_lr and config.lr > LR_WARN_FACTOR * default_lr:
        warnings.append(f"lr={config.lr:g} is {config.lr / default_lr:.0f}× the {config.method.name} default "
                        f"{default_lr:g}: training is likely to diverge; try {default_lr:g}.")
    if train is not None and config.batch_size > train:
        warnings.append(f"batch size {config.batch_size} is larger than the {train} training images: every "
                        f"epoch is one step of {train} images.")
    if seconds is not None and seconds > LONG_RUN_SECONDS:
        span = f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:,.0f} days"
        warnings.append(f"this run would take about {span} ({config.epochs} epochs) and hold the shared queue "
                        "that long; check the epoch count.")
    elif seconds is None and config.epochs > MANY_EPOCHS:
        warnings.append(f"{config.epochs} epochs is a lot (the default is 6); check the epoch count.")
    return RunEstimate(train, steps, total, seconds, basis, warnings)
