"""What the tests share: tiny models and inputs, a tiny trained run, child-process helpers, the app.

Fixtures live in ``conftest.py``; everything a test imports by name lives here
(``from helpers import make_tiny``). The engine tests train for real, on the embedded task
``synth-objects`` with a tiny local backbone file (the 2-block ViT at 32 px of ``TINY_MODELS``),
which exercises the local-weights path of ``load_backbone`` and keeps a run to a second or two on
a CPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from karst.config import KarstConfig, TrainConfig
from karst.jobs import run_foreground
from karst.layer import KarstLinear
from karst.preflight import SetupForm

if TYPE_CHECKING:
    from components.runner import Runner

__all__ = [
    "REPO", "TINY_MODELS", "make_tiny", "tiny_input", "randomise_adapters", "perturbed_layer", "load_script",
    "tiny_backbone", "tiny_config", "trained_run", "env", "wait_for",
    "AppHandle", "start_app", "fast_form", "form_values", "make_png", "make_evil_zip",
]  # fmt: skip

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- tiny models
# timm architectures shrunk to run on a CPU in milliseconds, built with pretrained=False.
TINY_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)),
    "deit": ("deit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=56, depths=(1, 1), num_heads=(2, 4), embed_dim=64, window_size=7, drop_path_rate=0.0),
    ),
}


def make_tiny(kind: str, num_classes: int = 5, seed: int = 0, **changes: Any) -> torch.nn.Module:
    """A seeded tiny model of ``TINY_MODELS[kind]``; ``changes`` override its timm kwargs."""
    name, kwargs = TINY_MODELS[kind]
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **{**kwargs, **changes})


def tiny_input(kind: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = TINY_MODELS[kind][1]["img_size"]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)


def randomise_adapters(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Add seeded Gaussian noise (``std``) to every trainable tensor of ``model``, in place.

    That is every adapter tensor (KARST's C, A, B, s1, s2; peft's lora_*/lokr_*) and whatever else
    the method trains (the head; everything under full fine-tuning). B, s1, s2 and LoRA's B start
    at zero, so without this an adapted model equals its base and merge or gradient checks pass
    for nothing. Frozen tensors are left alone.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def perturbed_layer(
    d_in: int = 32,
    d_out: int = 48,
    rescale: str = "channel",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    bias: bool = True,
    std: float = 0.3,
    **config: Any,
) -> KarstLinear:
    """A KarstLinear on a seeded ``nn.Linear(d_in, d_out)`` with every adapter tensor randomised.

    ``config`` are KarstConfig fields; rank defaults to 4 (the 48×32 layer's Kronecker block is
    6×4 for m=8).
    """
    config.setdefault("rank", 4)
    torch.manual_seed(seed)
    layer = KarstLinear(torch.nn.Linear(d_in, d_out, bias=bias).to(dtype), KarstConfig(rescale=rescale, **config))
    return randomise_adapters(layer, seed, std)


def load_script(filename: str) -> ModuleType:
    """Import a file of scripts/ (not a package) as a module, to call its main() in-process."""
    path = REPO / "scripts" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- tiny runs
TINY_DATA = {
    "input_size": [3, 32, 32],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}
_ADAPTER_KEYS = {f.name for f in dataclasses.fields(KarstConfig)}
_CACHE: dict[str, Any] = {}


def tiny_backbone(folder: Path) -> Path:
    """The tiny ViT as a weight file that records its architecture and preprocessing (seeded)."""
    path = Path(folder) / "tiny-vit.safetensors"
    if not path.exists():
        Path(folder).mkdir(parents=True, exist_ok=True)
        model = make_tiny("vit", num_classes=0, seed=123)
        name, kwargs = TINY_MODELS["vit"]
        arch = {"model_name": name, "kwargs": kwargs}
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path), metadata={"arch": json.dumps(arch), "data_config": json.dumps(TINY_DATA)})
    return path


def tiny_config(folder: Path, **overrides: Any) -> TrainConfig:
    """A run of the tiny backbone on a 64-image subset of ``synth-objects``.

    ``overrides`` are TrainConfig fields, or the method's (``method="lora"``, ``lora_alpha``) and
    the adapter's (``rank=2``, ``rescale="none"``) by their own names.
    """
    method: dict[str, Any] = {"name": "karst", "adapter": {"rank": 4}}
    settings: dict[str, Any] = dict(
        backbone=str(tiny_backbone(folder)),
        dataset="synth-objects",
        epochs=2,
        warmup_epochs=1,
        batch_size=32,
        max_train_samples=64,
        probe_size=16,
        lr=3e-3,
        device="cpu",
        method=method,
    )
    for key, value in overrides.items():
        if key in _ADAPTER_KEYS:
            method["adapter"][key] = value
        elif key in ("method", "lora_alpha"):
            method["name" if key == "method" else key] = value
        else:
            settings[key] = value
    return TrainConfig.from_dict(settings)


def trained_run(root: Path) -> Path:
    """One finished KARST run shared by the read-only tests (trained once per test session)."""
    if "run" not in _CACHE:
        summary = run_foreground(tiny_config(root), root / "runs")
        assert summary["status"] == "completed", summary
        _CACHE["run"] = root / "runs" / summary["run_id"]
    return _CACHE["run"]


# ---------------------------------------------------------------------------- processes
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


# ---------------------------------------------------------------------------- the app
# Small enough that a run takes seconds on two CPU cores, big enough that curves have points
# (2 steps per epoch). Validation and test sets keep their full size: the engine has no knob.
FAST = {"epochs": 2, "batch_size": 32, "max_train_samples": 64, "probe_size": 16}


@dataclass
class AppHandle:
    """The real app (server + engine worker) started by ``start_app``; ``close`` stops both."""

    demo: Any
    runner: Runner
    url: str

    def close(self) -> None:
        self.demo.close()
        self.runner.close()
        self.runner.jobs.stop_worker()


def start_app(runs_dir: Path, **options: Any) -> AppHandle:
    """Launch on 127.0.0.1, a free port, a fresh runs directory, without blocking.

    ``options`` are other ``app.AppOptions`` fields (``data_roots``, ``auth``...).
    """
    from app import AppOptions, launch  # local: only the app tests pay for gradio

    demo, runner, url = launch(AppOptions(runs_dir=runs_dir, **options), prevent_thread_lock=True)
    return AppHandle(demo, runner, url)


def fast_form(**changes: Any) -> SetupForm:
    return SetupForm(**{**FAST, **changes})


def form_values(form: SetupForm) -> list[Any]:
    """The positional values of the Setup form, as the /launch and /check_settings endpoints take them."""
    return [getattr(form, f.name) for f in dataclasses.fields(form)]


def make_png(path: Path, color: str = "orange", size: int = 48) -> Path:
    img = Image.new("RGB", (size, size), "white")
    img.paste(Image.new("RGB", (size // 2, size // 2), color), (size // 4, size // 4))
    img.save(path)
    return path


def make_evil_zip(path: Path) -> Path:
    """A zip with a path-traversal entry next to an innocent-looking class folder."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("cats/a.png", buf.getvalue())
        z.writestr("../evil.txt", "escaped the upload folder")
    return path
