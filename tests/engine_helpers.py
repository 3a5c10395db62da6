"""Shared pieces of the engine tests (train, runs, jobs, inspect, export, cli).

The tests train for real, on the embedded task ``synth-objects`` with a tiny local backbone file
(a 2-block ViT at 32 px written here), which exercises the local-weights path of
``load_backbone`` and keeps a run to a second or two on a CPU.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file

from karst.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY_ARCH = {
    "model_name": "vit_tiny_patch16_224",
    "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
}
TINY_DATA = {
    "input_size": [3, 32, 32],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}
_CACHE: dict[str, Any] = {}


def tiny_backbone(folder: Path) -> Path:
    """A tiny ViT weight file that records its architecture and preprocessing (seeded)."""
    path = Path(folder) / "tiny-vit.safetensors"
    if not path.exists():
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.manual_seed(123)
        model = timm.create_model(TINY_ARCH["model_name"], pretrained=False, num_classes=0, **TINY_ARCH["kwargs"])
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path), metadata={"arch": json.dumps(TINY_ARCH), "data_config": json.dumps(TINY_DATA)})
    return path


def tiny_config(folder: Path, **overrides: Any) -> TrainConfig:
    """A run of the tiny backbone on a 64-image subset of ``synth-objects``."""
    settings = dict(
        backbone=str(tiny_backbone(folder)),
        dataset="synth-objects",
        epochs=2,
        warmup_epochs=1,
        batch_size=32,
        max_train_samples=64,
        probe_size=16,
        lr=3e-3,
        device="cpu",
        rank=4,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def trained_run(root: Path) -> Path:
    """One finished KARST run shared by the read-only tests (trained once per test session)."""
    if "run" not in _CACHE:
        from karst.jobs import run_foreground

        summary = run_foreground(tiny_config(root), root / "runs")
        assert summary["status"] == "completed", summary
        _CACHE["run"] = root / "runs" / summary["run_id"]
    return _CACHE["run"]


def env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this checkout importable, one thread (the CI has 2 cores)."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    out["OMP_NUM_THREADS"] = "1"
    out.update(extra)
    return out


def wait_for(predicate: Any, timeout: float = 60.0, every: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (and return it); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} not met within {timeout:.0f} s")
