"""Export a run to a plain timm model, load it back, and predict.

A run exports to ``merged.safetensors`` (the adapter folded into the weights: a plain timm
state_dict), ``merged.json`` (how to rebuild the architecture and preprocess images) and
``adapter.safetensors`` (only the trained tensors, small). The merged file loads without this
package — only timm and safetensors::

    import json, timm, torch
    from safetensors.torch import load_file

    meta = json.load(open("merged.json"))
    model = timm.create_model(meta["arch"]["model_name"], pretrained=False,
                              num_classes=meta["num_classes"], **meta["arch"]["kwargs"])
    model.load_state_dict(load_file("merged.safetensors"), strict=True)
    transform = timm.data.create_transform(**meta["preprocessing"])
    probs = model.eval()(transform(image.convert("RGB"))[None]).softmax(-1)
    # class names: meta["class_names"]

``merged.json`` is also stored in the safetensors header (key ``karst_export``), so a merged file
that travelled alone (an upload) still carries its configuration.
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import timm.data
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .backbones import load_backbone
from .callbacks import Callback
from .config import TrainConfig
from .errors import ConfigError, DataError, KarstError, RunError
from .images import open_image
from .methods import build_method
from .model_safety import (
    MAX_MODEL_BYTES,
    check_fits,
    check_merged_meta,
    check_model_file,
    read_json_capped,
    tensor_shapes,
)
from .runs import ACTIVE_STATES, RunStore, atomic_write_json, publish, read_json

__all__ = [
    "EXPORT_FORMAT", "RunExporter", "export_result", "export_run", "load_merged", "load_run", "Predictor", "predict",
    "Confidence", "confidence", "run_class_names", "UNSURE_BELOW", "NEAR_UNIFORM",
]

EXPORT_FORMAT = "karst-merged/1"
_PREPROCESS_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _preprocessing(data_config: dict[str, Any]) -> dict[str, Any]:
    out = {k: data_config[k] for k in _PREPROCESS_KEYS if k in data_config}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def export_meta(backbone: Any, class_names: Sequence[str], method: str, run_id: str | None) -> dict[str, Any]:
    """The ``merged.json`` content for a model built on ``backbone``."""
    return {
        "format": EXPORT_FORMAT,
        "arch": {"model_name": backbone.arch["model_name"], "kwargs": dict(backbone.arch.get("kwargs", {}))},
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "preprocessing": _preprocessing(backbone.data_config),
        "backbone": backbone.name,
        "method": method,
        "run_id": run_id,
    }


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    # Own, contiguous CPU copies: safetensors refuses tensors that share storage.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    publish(tmp, path)


def write_merged(model: nn.Module, meta: dict[str, Any], path: str | Path) -> dict[str, str]:
    """Write ``model.state_dict()`` to ``path`` (.safetensors) and ``meta`` next to it (.json)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"export file {path} must end in .safetensors; try {path.with_suffix('.safetensors')}.")
    state = model.state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"cannot export: {bad[0]} contains NaN or Inf (the run diverged); retrain with a lower lr.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(state, path, {"karst_export": json.dumps(meta)})
        atomic_write_json(path.with_suffix(".json"), meta)
    except OSError as e:
        raise ConfigError(f"cannot write the export file {str(path)[:200]} ({e.strerror or type(e).__name__}); "
                          "check that folder's space and permissions, or choose another --out location.") from None
    return {"merged": str(path), "merged_json": str(path.with_suffix(".json"))}


def _adapter_metadata(method: str, class_names: Sequence[str], config: dict | None) -> dict[str, str]:
    meta = {"method": method, "class_names": json.dumps(list(class_names))}
    if config is not None:
        meta["train_config"] = json.dumps(config)
    return meta


def export_result(
    run_dir: str | Path, result: Any, *, merged: bool = True, run_id: str | None = None
) -> dict[str, str]:
    """Write ``adapter.safetensors`` (and the merged pair) for a just-finished ``TrainResult``."""
    run_dir = Path(run_dir)
    method = result.method
    config = read_json(run_dir / "config.json")
    files = {"adapter": str(run_dir / "adapter.safetensors")}
    _save(method.adapter_state_dict(), run_dir / "adapter.safetensors",
          _adapter_metadata(method.name, result.class_names, config))
    if merged:
        meta = export_meta(result.backbone, result.class_names, method.name, run_id)
        files.update(write_merged(method.merged_model(), meta, run_dir / "merged.safetensors"))
    return files


class RunExporter(Callback):
    """Trainer callback: at the end of a run, write its weights into the run folder.

    A completed run gets the adapter and the merged model; a cancelled one keeps its current weights
    (adapter only: quick to write). The files, or why they could not be written, go into the summary
    that the run recorder saves next.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def on_end(self, summary: dict[str, Any], result: Any) -> None:
        status = summary["status"]
        if result is None or status not in ("completed", "cancelled"):
            return
        try:
            summary["files"] = export_result(self.run_dir, result, merged=status == "completed",
                                             run_id=self.run_dir.name)
        except KarstError as e:
            summary["export_error"] = str(e)
        except Exception as e:  # a bug in export must not lose the run's results: log it and go on
            (self.run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            summary["export_error"] = f"internal error ({type(e).__name__}); see {self.run_dir / 'error.log'}"


def _run_dir(run: str | Path, runs_dir: str | Path | None) -> Path:
    p = Path(run)
    try:
        if p.is_dir() and (p / "config.json").is_file():
            return p
    except OSError:  # a name the file system refuses (too long...): then it is no folder, try it as an id
        pass
    return RunStore(runs_dir).path(str(run))


def load_run(run: str | Path, runs_dir: str | Path | None = None, device: str = "cpu") -> tuple[Any, Any, list[str]]:
    """Rebuild a run's adapted model from its newest weights (final adapter or last snapshot).

    Works for interrupted and cancelled runs too. Needs the backbone's pre-trained weights (the
    adapter alone is only the difference).

    Returns:
        (method, backbone, class_names); ``method.model`` is in eval mode on ``device``.
    """
    run_dir = _run_dir(run, runs_dir)
    store = RunStore(run_dir.parent)
    checkpoint = store.last_checkpoint(run_dir.name)
    if checkpoint is None:
        raise RunError(f"run {run_dir.name} has no saved weights yet (not even the epoch-0 snapshot).")
    config = TrainConfig.from_dict(read_json(run_dir / "config.json"))
    try:
        with safe_open(str(checkpoint), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise RunError(f"{checkpoint} cannot be read ({e}); delete it to use the run's previous snapshot.") from None
    if "class_names" not in metadata:
        raise RunError(f"{checkpoint} does not record its class names; it was not written by karst.")
    class_names = json.loads(metadata["class_names"])
    # Same seed and creation order as the trainer: a random-init backbone (pretrained=False)
    # gets the very W0 the adapter was trained on.
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.backbone, num_classes=1, pretrained=config.pretrained, arch=config.backbone_arch)
    backbone.use_preprocess(config.preprocess)
    backbone.model.reset_classifier(len(class_names))
    method = build_method(backbone.model, config.method)
    params = dict(method.model.named_parameters())
    method.load_adapter_state_dict({k: v.to(params[k].dtype) if k in params else v for k, v in state.items()})
    method.model.to(device).eval()
    return method, backbone, class_names


def export_run(run: str | Path, out: str | Path | None = None, runs_dir: str | Path | None = None) -> dict[str, str]:
    """Export a run (any state with saved weights) to a merged model.

    Args:
        run: run id (looked up in ``runs_dir``) or run folder.
        out: the merged ``.safetensors`` file; default ``<run>/merged.safetensors``. The JSON
            config is written next to it with the same stem.
    """
    run_dir = _run_dir(run, runs_dir)
    out = Path(out) if out is not None else run_dir / "merged.safetensors"
    state = RunStore(run_dir.parent).read_status(run_dir.name).get("status")
    if state in ACTIVE_STATES and out.resolve().is_relative_to(run_dir.resolve()):
        # The run writes its own merged model when it ends; one written now would pair old weights
        # with the adapter of a later epoch in the same folder.
        raise RunError(f"run {run_dir.name} is still {state}; its merged model is written when it ends. "
                       "Wait for it, or pass --out FILE outside the run folder to export its newest snapshot now.")
    method, backbone, class_names = load_run(run_dir)
    meta = export_meta(backbone, class_names, method.name, run_dir.name)
    return write_merged(method.merged_model(), meta, out)


def _merged_meta(path: Path, trusted: bool) -> dict[str, Any]:
    """The checked configuration of a merged file: its ``.json`` sidecar, else its header."""
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        meta = read_json_capped(sidecar)
    else:
        try:
            with safe_open(str(path), framework="pt") as f:
                header = (f.metadata() or {}).get("karst_export")
            meta = json.loads(header) if header else None
        except (SafetensorError, OSError, ValueError) as e:
            raise RunError(f"{path.name} is not a readable safetensors file ({str(e)[:120]}); "
                           "export a run with `karst export`.") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise RunError(f"{path.name} has no karst export config (merged.json); export it with `karst export RUN`.")
    return check_merged_meta(meta, path.name, trusted)


def load_merged(path: str | Path, max_bytes: int = MAX_MODEL_BYTES, *,
                trusted: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Load an exported merged model with timm only; returns (model in eval mode, meta).

    The file is treated as untrusted (:mod:`karst.model_safety`): its size is limited, its
    configuration may only name a known architecture with known arguments, and its tensors must
    fit that architecture (checked on the meta device) before any weight is allocated.

    Args:
        trusted: the file is a run's own export in its runs directory (not an upload, not a path a
            user typed): any timm architecture it was trained on is accepted.
    """
    path = Path(path)
    check_model_file(path, max_bytes)
    meta = _merged_meta(path, trusted)
    if not trusted:
        check_fits(meta, tensor_shapes(path), path.name)
    arch = meta["arch"]
    model = timm.create_model(arch["model_name"], pretrained=False, num_classes=meta["num_classes"], **arch["kwargs"])
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise RunError(f"{path.name} does not load into {arch['model_name']}: {str(e).splitlines()[0][:160]}; "
                       "export the run again.") from None
    return model.eval(), meta


# An answer whose top class has less than this is reported as unsure: the model then gives the
# other classes, together, more weight than its answer.
UNSURE_BELOW = 0.5
# Normalised entropy from which an answer is unsure whatever its top probability: with two or
# three classes even a near blind guess tops 50%.
NEAR_UNIFORM = 0.9


@dataclass(frozen=True)
class Confidence:
    """How spread out one softmax answer is.

    This is the model's own doubt, not a test that a picture resembles the training images: a
    model can be sure about noise. It flags the plain cases (an answer close to a blind guess).

    Attributes:
        top_prob: the highest class probability (the maximum softmax probability).
        entropy: the answer's entropy over log(num_classes): 0 = one class certain, 1 = uniform.
        num_classes: how many classes the model can answer with.
    """

    top_prob: float
    entropy: float
    num_classes: int

    @property
    def unsure(self) -> bool:
        return self.top_prob < UNSURE_BELOW or self.entropy >= NEAR_UNIFORM


def confidence(probs: torch.Tensor) -> list[Confidence]:
    """One :class:`Confidence` per row of ``probs`` (N, K), each row a softmax."""
    probs = probs.detach().float().cpu()
    k = probs.shape[-1]
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(k) if k > 1 else torch.zeros(len(probs))
    return [Confidence(top, min(max(h, 0.0), 1.0), k)
            for top, h in zip(probs.max(-1).values.tolist(), entropy.tolist())]


def run_class_names(run: str | Path, runs_dir: str | Path | None = None) -> list[str]:
    """A run's class names, read from the header of its newest weights file (no model is built)."""
    run_dir = _run_dir(run, runs_dir)
    checkpoint = RunStore(run_dir.parent).last_checkpoint(run_dir.name)
    if checkpoint is None:
        raise RunError(f"run {run_dir.name} has no saved weights yet; wait for its first snapshot.")
    try:
        with safe_open(str(checkpoint), framework="pt") as f:
            names = json.loads((f.metadata() or {})["class_names"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise RunError(f"{checkpoint} does not say its class names ({type(e).__name__}); "
                       "delete it to use the run's previous snapshot.") from None
    return [str(n) for n in names]


def _eval_transform(preprocessing: dict[str, Any]) -> Any:
    return timm.data.create_transform(**preprocessing, is_training=False)


def _normalisation(transform: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (C, 1, 1), of the transform's normalising step; (0, 1) if it has none."""
    for step in getattr(transform, "transforms", ()):
        if hasattr(step, "mean") and hasattr(step, "std"):
            return (torch.as_tensor(step.mean, dtype=torch.float32).reshape(-1, 1, 1),
                    torch.as_tensor(step.std, dtype=torch.float32).reshape(-1, 1, 1))
    return torch.zeros(1, 1, 1), torch.ones(1, 1, 1)


class Predictor:
    """Images → top-k (class, probability), from a run or an exported merged file.

    :meth:`predict` does it in one call; :meth:`inputs`, :meth:`probabilities`, :meth:`top_k` and
    :meth:`pixels` are its steps, for a caller that also wants to show what the model was given.

    Args:
        model: a classifier returning logits.
        transform: PIL image → tensor.
        class_names: names in logit order.
        device: where to run.
    """

    def __init__(self, model: nn.Module, transform: Any, class_names: Sequence[str], device: str = "cpu"):
        self.model = model.to(device).eval()
        self.transform = transform
        self.class_names = list(class_names)
        self.device = device

    @classmethod
    def from_source(cls, source: str | Path, runs_dir: str | Path | None = None, device: str = "cpu") -> Predictor:
        """A run id, a run folder, or a merged ``.safetensors`` file."""
        p = Path(source)
        if p.suffix == ".safetensors":
            return cls._from_merged(p, device)
        run_dir = _run_dir(source, runs_dir)
        if (run_dir / "merged.safetensors").is_file():
            return cls._from_merged(run_dir / "merged.safetensors", device, trusted=True)
        method, backbone, class_names = load_run(run_dir, device=device)
        # The very transform its export would record: a run and its merged file see the same pixels.
        return cls(method.model, _eval_transform(_preprocessing(backbone.data_config)), class_names, device)

    @classmethod
    def _from_merged(cls, path: Path, device: str, trusted: bool = False) -> Predictor:
        model, meta = load_merged(path, trusted=trusted)
        return cls(model, _eval_transform(meta["preprocessing"]), meta["class_names"], device)

    def inputs(self, images: Sequence[Any]) -> torch.Tensor:
        """The batch the model is given, (N, C, H, W): ``images`` (paths, PIL images or arrays, as
        :func:`karst.images.open_image` takes) through this predictor's transform."""
        batch = [self.transform(open_image(img)) for img in images]  # DataError for an unreadable image
        if not batch:
            raise DataError("no image given; pass at least one image to predict on.")
        return torch.stack(batch)

    @torch.no_grad()
    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes, (N, K) on the CPU, for a batch from :meth:`inputs`."""
        return self.model(inputs.to(self.device)).float().softmax(-1).cpu()

    def top_k(self, probs: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``top_k`` most likely (class, probability) per row of ``probs``, most likely first."""
        if top_k < 1:
            raise ConfigError(f"top_k={top_k} must be at least 1.")
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [
            [(self.class_names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
            for vs, ix in zip(values, indices)
        ]

    def pixels(self, inputs: torch.Tensor) -> list[np.ndarray]:
        """A batch from :meth:`inputs` as pictures, (H, W, 3) uint8 each: what the model sees.

        The transform's normalisation is undone; its resize and crop stay, so a 32 px model's
        picture is 32×32. A transform without a normalising step is shown as is, clipped to 0..1.
        """
        mean, std = _normalisation(self.transform)
        x = (inputs.detach().float().cpu() * std + mean).clamp(0, 1)
        if x.shape[1] == 1:  # a grey-scale model: shown grey
            x = x.expand(-1, 3, -1, -1)
        return [np.ascontiguousarray((img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()) for img in x]

    def predict(self, images: Sequence[Any], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k per image; ``images``: paths, PIL images or arrays, as :func:`karst.images.open_image` takes."""
        if top_k < 1:
            raise ConfigError(f"top_k={top_k} must be at least 1.")
        if not images:
            return []
        return self.top_k(self.probabilities(self.inputs(images)), top_k)


def predict(
    source: str | Path, images: Sequence[Any], top_k: int = 5, runs_dir: str | Path | None = None
) -> list[list[tuple[str, float]]]:
    """One-shot :meth:`Predictor.predict` (build the predictor once yourself for many calls)."""
    return Predictor.from_source(source, runs_dir).predict(images, top_k)
