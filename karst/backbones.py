"""Backbones: the embedded pre-trained tiny ViT, timm hub names, and local weight files.

Every backbone is a plain timm model with a fresh classifier head of ``num_classes`` outputs, so
KARST and the baselines see the same module tree whatever the source:

* ``karst-vit-micro``: the embedded ViT pre-trained by ``scripts/pretrain_embedded.py`` (weights
  and card under ``assets/backbones/``); ``pretrained=False`` gives the same architecture randomly
  initialised, the "random backbone" baseline.
* any timm model name (``vit_base_patch16_224.augreg_in21k``...): weights come through timm and
  huggingface_hub to the usual cache and are used offline once cached.
* a local ``.safetensors`` file (``.pt``/``.pth`` are read with ``weights_only=True`` only) for a
  timm architecture given by ``arch=`` (or stored in the file's metadata).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from PIL import Image
from safetensors import SafetensorError, safe_open
from timm.data import create_transform, resolve_data_config

from karst.data.safety import to_rgb
from karst.errors import BackboneError

__all__ = ["EMBEDDED_BACKBONE", "HUB_BACKBONES", "Backbone", "list_backbones", "load_backbone"]

EMBEDDED_BACKBONE = "karst-vit-micro"
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "backbones"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
EMBEDDED_ARCH = {
    "model_name": "vit_tiny_patch16_224",
    "kwargs": {
        "img_size": 32,
        "patch_size": 4,  # 8×8 = 64 patch tokens + the class token
        "embed_dim": 128,  # divisible by 8 so the default KARST stack_dim m=8 fits every layer
        "depth": 4,
        "num_heads": 4,
        "mlp_ratio": 4.0,
    },
}
"""Architecture of ``karst-vit-micro``; the card written next to the weights repeats it."""
# Used only until the card exists (a fresh checkout before pre-training): neutral statistics.
_FALLBACK_DATA_CONFIG = {
    "input_size": [3, 32, 32],
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
    "interpolation": "bicubic",
    "crop_pct": 1.0,
}

HUB_BACKBONES: dict[str, str] = {
    "vit_base_patch16_224.augreg_in21k": "ViT-B/16, ImageNet-21k (AugReg), 86M params, 224 px: the paper's setting",
    "vit_base_patch16_224.orig_in21k": "ViT-B/16, original ImageNet-21k weights, 86M params, 224 px: the paper's",
    "swin_base_patch4_window7_224": "Swin-B, ImageNet-22k then 1k, 88M params, 224 px (the paper's Swin-B)",
    "vit_small_patch16_224": "ViT-S/16, ImageNet-21k then 1k, 22M params, 224 px",
    "deit_small_patch16_224": "DeiT-S/16, ImageNet-1k, 22M params, 224 px",
    "swin_tiny_patch4_window7_224": "Swin-T, ImageNet-1k, 28M params, 224 px",
}
"""Curated hub backbones shown first; any other timm name works too."""


@dataclass
class Backbone:
    """A timm model with a fresh head, and what is needed to feed and rebuild it.

    Attributes:
        model: The timm model (head sized for the task).
        name: What the user asked for (embedded name, timm name or file path).
        arch: ``{"model_name", "kwargs"}``: ``timm.create_model(arch["model_name"],
            pretrained=False, num_classes=K, **arch["kwargs"])`` rebuilds the same module tree.
        data_config: timm data config (input_size, mean, std, interpolation, crop_pct).
        card: The embedded backbone's JSON card, else ``None``.
    """

    model: torch.nn.Module
    name: str
    arch: dict
    data_config: dict
    card: dict | None = None
    notes: list[str] = field(default_factory=list)

    def use_preprocess(self, preprocess: str) -> None:
        """Switch to the paper's preprocessing (``"paper"``) or keep the backbone's own (``"timm"``).

        The paper's (the authors' data/vtab.py): squash-resize to the input size with bicubic
        interpolation, no crop, mean = std = 0.5. Stored in ``data_config``, so an export records it.
        """
        if preprocess == "paper":
            self.data_config = {**self.data_config, "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                                "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "squash"}

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> normalised tensor, with the backbone's preprocessing.

        Training uses this same deterministic resize/crop as evaluation: the PETL literature
        (VTAB-1K) fine-tunes without augmentation.
        """
        tf = create_transform(**self.data_config, is_training=False)

        def apply(img: Image.Image) -> torch.Tensor:
            return tf(to_rgb(img))

        return apply


# ----------------------------------------------------------------------------------------------
# Public entry points


def load_backbone(
    name_or_path: str | os.PathLike,
    num_classes: int,
    *,
    pretrained: bool = True,
    arch: str | dict | None = None,
    drop_path_rate: float = 0.0,
) -> Backbone:
    """Build a backbone with a ``num_classes`` head.

    Args:
        name_or_path: ``karst-vit-micro``, a timm model name (with or without a pretrained tag),
            or a path to a local weight file.
        num_classes: Outputs of the freshly initialised classifier head.
        pretrained: Load pre-trained weights; ``False`` gives the same architecture randomly
            initialised (ignored for local files, which are weights by definition).
        arch: For a local file: a timm model name, ``karst-vit-micro``, or an
            ``{"model_name", "kwargs"}`` dict. Optional when the file records its architecture.
        drop_path_rate: Stochastic depth rate passed to timm.

    Returns:
        The :class:`Backbone`.

    Raises:
        BackboneError: Unknown name, missing or unreadable file, weights that do not fit the
            architecture, or hub weights that can neither be downloaded nor found in the cache.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BackboneError(
            f"num_classes={num_classes!r} is not a positive integer; pass the number of classes of the dataset."
        )
    name = str(name_or_path).strip()
    if not name:
        raise BackboneError("An empty backbone name was given; use karst-vit-micro or a timm model name.")
    if name == EMBEDDED_BACKBONE:
        return _load_embedded(num_classes, pretrained, drop_path_rate)
    if name.startswith(("hf-hub:", "hf_hub:")):  # timm's own syntax for any Hugging Face repo
        return _load_hub(name, num_classes, pretrained, drop_path_rate)
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError:  # a name the file system refuses (too long...): not a file, maybe a timm name
        exists = False
    if path.suffix.lower() in WEIGHT_SUFFIXES or exists or os.sep in name:
        return _load_local(path, num_classes, arch, drop_path_rate)
    return _load_hub(name, num_classes, pretrained, drop_path_rate)


def list_backbones() -> list[dict[str, Any]]:
    """The embedded backbone first, then the curated hub list.

    Returns:
        One dict per backbone with ``name``, ``embedded``, ``description``, ``available`` (usable
        offline now: the embedded asset exists or the hub weights are in the local cache) and
        ``input_size``.
    """
    card = _read_card()
    items: list[dict[str, Any]] = [
        {
            "name": EMBEDDED_BACKBONE,
            "embedded": True,
            "description": card.get("description", "embedded tiny ViT")
            if card
            else "embedded tiny ViT (weights missing)",
            "available": card is not None and (ASSETS_DIR / f"{EMBEDDED_BACKBONE}.safetensors").exists(),
            "input_size": card["image_size"] if card else 32,
        }
    ]
    for name, desc in HUB_BACKBONES.items():
        items.append(
            {"name": name, "embedded": False, "description": desc, "available": _hub_cached(name), "input_size": 224}
        )
    return items


# ----------------------------------------------------------------------------------------------
# Embedded


def _read_card() -> dict | None:
    path = ASSETS_DIR / f"{EMBEDDED_BACKBONE}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _embedded_arch() -> tuple[dict, dict]:
    """(arch, data_config) of the embedded backbone: from the card, which matches the weights."""
    card = _read_card()
    if card is None:
        return EMBEDDED_ARCH, dict(_FALLBACK_DATA_CONFIG)
    return card["arch"], dict(card["data_config"])


def _load_embedded(num_classes: int, pretrained: bool, drop_path_rate: float) -> Backbone:
    arch, data_config = _embedded_arch()
    model = _create(arch, num_classes, drop_path_rate)
    if pretrained:
        weights = ASSETS_DIR / f"{EMBEDDED_BACKBONE}.safetensors"
        if not weights.exists() or _read_card() is None:
            raise BackboneError(
                f"The weights {weights} of {EMBEDDED_BACKBONE} or their card are missing; "
                "run `python scripts/pretrain_embedded.py` "
                "or use pretrained=False for a randomly initialised backbone."
            )
        _load_state(model, _read_weights(weights)[0], str(weights), arch)
    _set_data_config(model, data_config)
    return Backbone(model, EMBEDDED_BACKBONE, arch, _resolve(model), card=_read_card())


# ----------------------------------------------------------------------------------------------
# timm hub


def _close_matches(name: str) -> list[str]:
    base = name.split(".")[0]
    candidates = set(timm.list_models())
    # Names sharing the family prefix ("vit_base", "swin") first, then plain string similarity.
    family = "_".join(base.split("_")[:2])
    close = difflib.get_close_matches(base, sorted(candidates), n=4, cutoff=0.6)
    if len(close) < 4 and family:
        close += [m for m in timm.list_models(f"{family}*") if m not in close][: 4 - len(close)]
    return close


def _load_hub(name: str, num_classes: int, pretrained: bool, drop_path_rate: float) -> Backbone:
    if not name.startswith(("hf-hub:", "hf_hub:")) and not timm.is_model(name):
        close = _close_matches(name[:100])
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models() for the names"
        raise BackboneError(
            f"Backbone {name[:200]!r} is not karst-vit-micro, a timm model name or an existing weight file; {hint}."
        )
    kwargs = {"num_classes": num_classes, "drop_path_rate": drop_path_rate}
    if pretrained or name.startswith(("hf-hub:", "hf_hub:")):  # hf-hub names need the repo's config
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            # OSError covers huggingface_hub's LocalEntryNotFoundError and connection errors;
            # RuntimeError is timm's "no pretrained weights" for untagged architectures.
            reason = str(err).split("\n")[0][:160]
            raise BackboneError(
                f"Pretrained weights for {name!r} could not be downloaded nor found in the local cache ({reason}); "
                "connect to the internet once (weights are cached under ~/.cache/huggingface), pass a local weight "
                "file with arch=, or use karst-vit-micro."
            ) from err
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    # For hf-hub names the architecture is only known once the repo's config is read.
    model_name = getattr(model, "default_cfg", {}).get("architecture") or name.split(".")[0]
    return Backbone(model, name, {"model_name": model_name, "kwargs": {}}, _resolve(model))


def _hub_cached(name: str) -> bool:
    """Whether the hub weights of ``name`` are already in the huggingface cache (no network)."""
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return False
    try:
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin"))
    except (OSError, ValueError):  # an unreadable cache or a malformed repo id: not cached, for a listing
        return False


# ----------------------------------------------------------------------------------------------
# Local weight files


def _arch_from(arch: str | dict | None, path: Path, metadata: dict[str, str]) -> dict:
    """Normalise ``arch`` to ``{"model_name", "kwargs"}``; fall back to the file's metadata."""
    if arch is None and "arch" in metadata:
        try:
            arch = json.loads(metadata["arch"])
        except ValueError:
            arch = None
    if arch is None:
        raise BackboneError(
            f"The weight file {path} does not say which architecture it is for; pass arch= a timm model name "
            "(e.g. vit_base_patch16_224) or karst-vit-micro."
        )
    if isinstance(arch, str):
        if arch == EMBEDDED_BACKBONE:
            return _embedded_arch()[0]
        if not timm.is_model(arch):
            close = _close_matches(arch)
            hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
            raise BackboneError(f"arch={arch!r} is not a timm model name; {hint}.")
        return {"model_name": arch.split(".")[0], "kwargs": {}}
    if isinstance(arch, dict) and isinstance(arch.get("model_name"), str) and isinstance(arch.get("kwargs", {}), dict):
        return {"model_name": arch["model_name"], "kwargs": dict(arch.get("kwargs", {}))}
    raise BackboneError(
        f"arch={arch!r} is neither a timm model name nor a {{'model_name', 'kwargs'}} dict; pass a timm model name."
    )


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a weight file, never unpickling arbitrary objects."""
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise _unreadable(path, err) from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's unpickler raises KeyError, EOFError... on arbitrary bytes
        raise _unreadable(path, err) from err
    # Common wrappers of a state dict in training checkpoints.
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"The file {path} does not hold a state dict of tensors; save model.state_dict() to it.")
    return {k.removeprefix("module."): v for k, v in obj.items()}, {}


def _unreadable(path: Path, err: Exception) -> BackboneError:
    reason = str(err).split("\n")[0][:160]
    return BackboneError(
        f"Could not read the weight file {path} ({type(err).__name__}: {reason}); give a .safetensors file, or a "
        ".pt/.pth state dict loadable with torch.load(weights_only=True)."
    )


def _load_local(path: Path, num_classes: int, arch: str | dict | None, drop_path_rate: float) -> Backbone:
    if not path.is_file():
        raise BackboneError(
            f"Backbone {str(path)!r} is not an existing weight file (nor karst-vit-micro or a timm name); "
            "check the path."
        )
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise BackboneError(f"The weight file {path} has suffix {path.suffix!r}; use .safetensors (or .pt/.pth).")
    state, metadata = _read_weights(path)
    resolved = _arch_from(arch, path, metadata)
    model = _create(resolved, num_classes, drop_path_rate)
    notes = _load_state(model, state, str(path), resolved)
    data_config = None
    if "data_config" in metadata:
        try:
            data_config = json.loads(metadata["data_config"])
        except ValueError:
            data_config = None
    if data_config is None and resolved == _embedded_arch()[0]:
        data_config = _embedded_arch()[1]
    if data_config:
        _set_data_config(model, data_config)
    return Backbone(model, str(path), resolved, _resolve(model), notes=notes)


# ----------------------------------------------------------------------------------------------
# Shared helpers


def _create(arch: dict, num_classes: int, drop_path_rate: float) -> torch.nn.Module:
    try:
        return timm.create_model(
            arch["model_name"],
            pretrained=False,
            num_classes=num_classes,
            drop_path_rate=drop_path_rate,
            **arch["kwargs"],
        )
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise BackboneError(
            f"timm could not build {arch['model_name']!r} with {arch['kwargs']} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120] if str(err) else ''}); check the architecture settings."
        ) from err


def _is_head(key: str, model: torch.nn.Module) -> bool:
    head = model.default_cfg.get("classifier", "head") if hasattr(model, "default_cfg") else "head"
    heads = head if isinstance(head, (list, tuple)) else [head]
    return any(key == h or key.startswith(h + ".") for h in heads)


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, arch: dict) -> list[str]:
    """Load everything but the classifier head strictly; the head only when its shape fits.

    A pre-trained head for another label set is dropped (the task gets a fresh one), which is
    what fine-tuning a backbone means; any mismatch in the body is an error.
    """
    own = model.state_dict()
    body_missing = [k for k in own if k not in state and not _is_head(k, model)]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape and not _is_head(k, model)
    ]
    if body_missing or unexpected or wrong_shape:
        parts = []
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatch(es) e.g. {'; '.join(wrong_shape[:2])}")
        if body_missing:
            parts.append(f"{len(body_missing)} missing key(s) e.g. {', '.join(body_missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(unexpected[:3])}")
        raise BackboneError(
            f"The weights in {source} do not fit architecture {arch['model_name']}{_kwargs_text(arch)}: "
            f"{'; '.join(parts)}; pass the arch= these weights were trained with."
        )
    notes = []
    head_keys = [k for k in own if _is_head(k, model)]
    head_fits = all(k in state and state[k].shape == own[k].shape for k in head_keys)
    to_load = {k: v for k, v in state.items() if k in own and (head_fits or not _is_head(k, model))}
    if not head_fits and any(_is_head(k, model) for k in state):
        notes.append("the file's classifier head has another number of classes; a fresh head was created")
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in to_load.items()}}, strict=True)
    return notes


def _kwargs_text(arch: dict) -> str:
    return f" {arch['kwargs']}" if arch["kwargs"] else ""


def _set_data_config(model: torch.nn.Module, data_config: dict) -> None:
    """Record preprocessing on the model so timm's ``resolve_data_config(model=...)`` finds it."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg.update(
        input_size=tuple(data_config["input_size"]),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        interpolation=data_config.get("interpolation", "bicubic"),
        crop_pct=data_config.get("crop_pct", 1.0),
        crop_mode=data_config.get("crop_mode", "center"),
    )
    model.pretrained_cfg = cfg


def _resolve(model: torch.nn.Module) -> dict:
    return dict(resolve_data_config({}, model=model))
