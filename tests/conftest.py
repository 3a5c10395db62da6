"""Shared fixtures: tiny timm models built with pretrained=False so every test runs on a CPU."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch

# Two cores on CI: extra intra-op threads only add contention between pytest and servers it starts.
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_MODELS = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)),
    "deit": ("deit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=56, depths=(1, 1), num_heads=(2, 4), embed_dim=64, window_size=7, drop_path_rate=0.0),
    ),
}


def make_tiny(kind: str, num_classes: int = 5, seed: int = 0) -> torch.nn.Module:
    name, kwargs = TINY_MODELS[kind]
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def load_script(filename: str) -> ModuleType:
    """Import a file of scripts/ (not a package) as a module, to call its main() in-process."""
    path = Path(__file__).resolve().parents[1] / "scripts" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_input(kind: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = TINY_MODELS[kind][1]["img_size"]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)


@pytest.fixture
def one_thread():
    """One intra-op thread for a test: on two shared cores a second one slows tiny models down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=sorted(TINY_MODELS))
def arch(request) -> str:
    return request.param
