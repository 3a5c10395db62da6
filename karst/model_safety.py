"""Reading a merged model file that came from outside (an upload, ``karst predict FILE``).

A merged file names the architecture to rebuild (``merged.json``, also in its safetensors header),
so without checks the file decides what the server builds: any timm model, a hub reference that
makes the server download, keyword arguments such as ``checkpoint_path`` that make timm open a
server file, or a huge model from a file of a few bytes. Here the file is data:

* its size and header size are limited before anything is read (:func:`check_model_file`);
* its configuration may only name a ViT, DeiT or Swin architecture of timm by its plain name (the
  families this project adapts: the embedded backbone, the curated hub list and the test models),
  with keyword arguments from :data:`ARCH_KWARGS` of the right type and range, and preprocessing
  with bounded sizes (:func:`check_merged_meta`);
* the architecture is then built on the ``meta`` device (no memory) and must have exactly the
  tensors the file holds, by name and shape, before real weights are allocated
  (:func:`check_fits`), so the memory a load takes is bounded by the file's size.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from .errors import RunError

__all__ = [
    "ARCH_FAMILIES", "ARCH_KWARGS", "MAX_HEADER_BYTES", "MAX_IMAGE_SIDE", "MAX_MODEL_BYTES", "MAX_TOKENS",
    "check_arch", "check_fits", "check_merged_meta", "check_model_file", "read_json_capped", "tensor_shapes",
]

# A merged ViT-L/16 in float32 is 1.2 GB; nothing this project trains comes near 2 GiB.
MAX_MODEL_BYTES = 2 * 1024**3
# The safetensors header (tensor table + metadata, class names included); safetensors itself allows 100 MB.
MAX_HEADER_BYTES = 16 * 1024**2
# timm modules whose models this project adapts and exports (their ``*_tiny_*`` models are the tests').
ARCH_FAMILIES = ("timm.models.vision_transformer", "timm.models.deit", "timm.models.swin_transformer")
# Largest image side a merged model may ask for, and patch tokens per image (224 px at patch 16 is 196;
# 1024 px at patch 8 is 16,384): bounds the work of one prediction.
MAX_IMAGE_SIDE = 1024
MAX_TOKENS = 16_384
MAX_CLASSES = 100_000
_NAME = re.compile(r"^[a-z0-9_]{1,100}$")  # a plain timm name: no tag, no "hf-hub:", no path
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


# ---------------------------------------------------------------------------- value checks
def _int(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and lo <= v <= hi


def _ints(lo: int, hi: int, max_len: int = 8) -> Callable[[Any], bool]:
    """An int, or a list/tuple of 1..max_len ints (Swin's per-stage values, (h, w) pairs)."""
    one = _int(lo, hi)
    return lambda v: one(v) or (isinstance(v, (list, tuple)) and 0 < len(v) <= max_len and all(map(one, v)))


def _float(lo: float, hi: float, none: bool = False) -> Callable[[Any], bool]:
    return lambda v: (none and v is None) or (type(v) in (int, float) and math.isfinite(v) and lo <= v <= hi)


def _bool(none: bool = False) -> Callable[[Any], bool]:
    return lambda v: type(v) is bool or (none and v is None)


def _choice(*values: Any) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in values


ARCH_KWARGS: dict[str, Callable[[Any], bool]] = {
    "img_size": _ints(8, MAX_IMAGE_SIDE, 2), "patch_size": _ints(1, 64, 2), "window_size": _ints(1, 64, 2),
    "embed_dim": _int(8, 4096), "depth": _int(1, 64), "depths": _ints(1, 64), "num_heads": _ints(1, 128),
    "mlp_ratio": _float(0.25, 16.0), "init_values": _float(0.0, 10.0, none=True), "reg_tokens": _int(0, 16),
    "qkv_bias": _bool(), "qk_norm": _bool(), "proj_bias": _bool(), "class_token": _bool(),
    "no_embed_class": _bool(), "pre_norm": _bool(), "final_norm": _bool(), "fc_norm": _bool(none=True),
    "global_pool": _choice("", "token", "avg", "avgmax", "max", "map"),
    **{k: _float(0.0, 0.99) for k in ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate",
                                       "pos_drop_rate", "patch_drop_rate")},
    "num_classes": _int(1, MAX_CLASSES),
}
"""Keyword arguments a merged file may pass to ``timm.create_model``, each with its check.
Nothing that names a file, a device, a dtype, a layer class or pretrained weights."""


def _refuse(name: str, why: str) -> RunError:
    return RunError(f"{name} was refused: {why}; load only a merged model exported by `karst export` or the app.")


# ---------------------------------------------------------------------------- the file
def check_model_file(path: Path, max_bytes: int = MAX_MODEL_BYTES) -> None:
    """A readable file under ``max_bytes`` whose safetensors header is under :data:`MAX_HEADER_BYTES`."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
    except (OSError, ValueError):
        raise RunError(f"model file {path.name!r} does not exist or cannot be read; "
                       "give a run id, a run folder or a merged .safetensors file.") from None
    if size > max_bytes:
        raise _refuse(path.name, f"it is {size / 1024**3:.1f} GiB, over the {max_bytes / 1024**3:.1f} GiB limit")
    if len(head) < 8 or struct.unpack("<Q", head)[0] > min(MAX_HEADER_BYTES, size - 8):
        raise RunError(f"{path.name!r} is not a readable safetensors file (bad or oversized header); "
                       "export a run with `karst export`.")


def read_json_capped(path: Path, max_bytes: int = MAX_HEADER_BYTES) -> Any:
    """A JSON file of at most ``max_bytes`` (an uploaded ``merged.json``)."""
    try:
        too_big = path.stat().st_size > max_bytes
        if not too_big:
            return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
        raise RunError(f"{path.name!r} is not a readable JSON config; upload the merged.json written "
                       "with the model, or only the .safetensors file.") from None
    raise _refuse(path.name, f"it is over {max_bytes // 1024**2} MiB, far more than a model config")


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a safetensors file, from its header (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{path.name!r} is not a readable safetensors file ({str(e)[:120]}); "
                       "export a run with `karst export`.") from None


# ---------------------------------------------------------------------------- the configuration
def check_arch(arch: Any, name: str = "the model file") -> dict[str, Any]:
    """``{"model_name", "kwargs"}`` naming a known architecture with allowed kwargs, else RunError."""
    if not isinstance(arch, Mapping) or not isinstance(arch.get("kwargs", {}), Mapping):
        raise _refuse(name, "its config has no architecture ({'model_name', 'kwargs'})")
    model_name, kwargs = arch.get("model_name"), dict(arch.get("kwargs", {}))
    if not isinstance(model_name, str) or not _NAME.match(model_name):
        raise _refuse(name, f"architecture {str(model_name)[:80]!r} is not a plain timm model name "
                            "(hub references, tags and paths are not accepted)")
    if not timm.is_model(model_name) or timm.models.model_entrypoint(model_name).__module__ not in ARCH_FAMILIES:
        raise _refuse(name, f"architecture {model_name!r} is not a timm ViT, DeiT or Swin model")
    for key, value in kwargs.items():
        if key not in ARCH_KWARGS:
            raise _refuse(name, f"keyword argument {str(key)[:40]!r} is not one a merged model may set "
                                f"(allowed: {', '.join(sorted(ARCH_KWARGS))})")
        if not ARCH_KWARGS[key](value):
            raise _refuse(name, f"{key}={str(value)[:40]} is out of range or of the wrong type")
    return {"model_name": model_name, "kwargs": kwargs}


def _floats3(lo: float, hi: float) -> Callable[[Any], bool]:
    one = _float(lo, hi)
    return lambda v: isinstance(v, list) and len(v) == 3 and all(map(one, v))


_PREPROCESS: dict[str, Callable[[Any], bool]] = {
    "input_size": lambda v: isinstance(v, list) and len(v) == 3 and v[0] == 3
    and all(map(_int(8, MAX_IMAGE_SIDE), v[1:])),
    "mean": _floats3(-1e3, 1e3), "std": _floats3(1e-6, 1e3), "interpolation": _choice(*_INTERPOLATIONS),
    "crop_pct": _float(0.25, 1.0), "crop_mode": _choice("center", "squash", "border"),
}
"""The preprocessing a merged model may ask for: timm ``create_transform`` arguments of bounded size."""


def _check_preprocessing(pre: Any, name: str) -> None:
    if not isinstance(pre, Mapping) or not {"input_size", "mean", "std"} <= set(pre):
        raise _refuse(name, "its config has no preprocessing (input_size, mean, std)")
    for key, value in pre.items():
        if key not in _PREPROCESS or not _PREPROCESS[key](value):
            raise _refuse(name, f"preprocessing {str(key)[:40]}={str(value)[:40]} is not allowed "
                                f"(input_size [3, H, W] up to {MAX_IMAGE_SIDE} px, mean, std, interpolation, "
                                "crop_pct 0.25..1, crop_mode)")


def _any_arch(arch: Any, name: str) -> dict[str, Any]:
    """The shape of ``{"model_name", "kwargs"}`` only (a run's own export: any timm model it trained)."""
    if not (isinstance(arch, Mapping) and isinstance(arch.get("model_name"), str)
            and isinstance(arch.get("kwargs", {}), Mapping)):
        raise _refuse(name, "its config has no architecture ({'model_name', 'kwargs'})")
    return {"model_name": arch["model_name"], "kwargs": dict(arch.get("kwargs", {}))}


def check_merged_meta(meta: Any, name: str = "the model file", trusted: bool = False) -> dict[str, Any]:
    """A merged model's configuration (``merged.json``) with every field a loader uses checked.

    Args:
        trusted: the export of a run in the runs directory (written by karst, not uploaded): its
            architecture may be any timm model with any arguments; the other fields are checked.

    Returns:
        ``meta`` with ``arch`` normalised (the ``num_classes`` kwarg, if any, merged into the top level).
    """
    if not isinstance(meta, Mapping):
        raise _refuse(name, "its config is not a JSON object")
    arch = _any_arch(meta.get("arch"), name) if trusted else check_arch(meta.get("arch"), name)
    classes, names = meta.get("num_classes"), meta.get("class_names")
    if not _int(1, MAX_CLASSES)(classes) or arch["kwargs"].pop("num_classes", classes) != classes:
        raise _refuse(name, f"num_classes={str(classes)[:20]} is not a number of classes from 1 to {MAX_CLASSES}")
    if not (isinstance(names, list) and len(names) == classes
            and all(isinstance(c, str) and len(c) <= 256 for c in names)):
        raise _refuse(name, f"class_names is not a list of {classes} names")
    _check_preprocessing(meta.get("preprocessing"), name)
    return {**meta, "arch": arch}


# ---------------------------------------------------------------------------- the tensors
def _build_on_meta(meta: Mapping[str, Any], name: str) -> nn.Module:
    arch = meta["arch"]
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            return timm.create_model(arch["model_name"], pretrained=False, num_classes=meta["num_classes"],
                                     **arch["kwargs"])
    except (TypeError, ValueError, AssertionError, RuntimeError, NotImplementedError) as e:
        raise _refuse(name, f"timm cannot build {arch['model_name']} with {arch['kwargs']} "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from None


def check_fits(meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], name: str = "the model file") -> None:
    """The architecture of a checked ``meta`` holds exactly ``shapes``, built on the meta device.

    Also bounds what the file does not show: patch tokens per image (the cost of a prediction),
    the preprocessing size (it must be the model's own) and buffers that are not saved.
    """
    model = _build_on_meta(meta, name)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if own != dict(shapes):
        wrong = [k for k in own if k in shapes and own[k] != tuple(shapes[k])]
        missing, extra = [k for k in own if k not in shapes], [k for k in shapes if k not in own]
        detail = (f"{len(missing)} missing, {len(extra)} unexpected, {len(wrong)} of another shape, e.g. "
                  f"{(missing + extra + wrong)[0][:80]!r}")
        raise _refuse(name, f"its tensors do not fit {meta['arch']['model_name']} ({detail})")
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if grid is None or math.prod(grid) > MAX_TOKENS:
        raise _refuse(name, f"its model takes {grid} patches per image, over the {MAX_TOKENS} limit")
    if list(size) != meta["preprocessing"]["input_size"][1:]:
        raise _refuse(name, f"its preprocessing input_size does not match the model's {tuple(size)} images")
    saved = sum(math.prod(s) for s in own.values())
    unsaved = sum(b.numel() for k, b in model.named_buffers() if k not in own)
    if unsaved > max(saved, 1_000_000):
        raise _refuse(name, f"its model needs {unsaved:,} values beyond the {saved:,} in the file")
