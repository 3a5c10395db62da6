"""Device selection and mixed precision, shared by the trainer, the worker and the CLI.

``auto`` picks CUDA, then Apple MPS, then the CPU. Runs on CUDA train under bf16 autocast (no
loss scaling needed, unlike fp16); CPU and MPS runs stay in fp32 so CPU results are reproducible.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from .errors import ConfigError

__all__ = ["resolve_device", "device_key", "autocast", "describe_device"]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a user setting into a concrete ``torch.device``.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        ConfigError: the device is unknown or not present on this machine.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device name; use auto, cpu, cuda or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} was asked for but no CUDA GPU is visible; use --device cpu or auto.")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible; "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}."
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device={name!r} was asked for but MPS is not available here; use cpu or auto.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={name!r} is not supported; use auto, cpu, cuda or mps.")
    return device


def device_key(device: torch.device) -> str:
    """A file-name-safe key for the per-device lock, e.g. ``cpu``, ``cuda0``, ``mps``."""
    if device.type == "cuda":
        return f"cuda{device.index or 0}"
    return device.type


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs must be exactly reproducible)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_device(device: torch.device) -> str:
    """Human-readable device name for status and summaries (``cuda:0 (NVIDIA H200)``)."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return str(device)
