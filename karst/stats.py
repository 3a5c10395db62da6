"""Per-channel feature statistics of the adapted layers on a fixed probe batch (the alignment view's data).

For every ``KarstLinear`` a forward hook catches the layer's input and runs ``forward_parts`` on
it: W0x+b0 (``base``), +ΔWx (``pre``, before re-scaling) and the layer output (``out``). Other
methods have no such parts: their targeted linears (a peft LoRA/LoKr wrapper counts as its linear)
give their output (``out``) only. Each chunk's mean and variance are taken in float32 and merged
across chunks in float64 (Chan et al.'s pairwise update), so memory stays at one chunk's activations.

The alignment view compares these with a *reference*: the frozen model's statistics on the data it
was pre-trained on, where that data is known (:func:`reference_images`), else on the run's own
probe images (:func:`reference_stats`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .backbones import EMBEDDED_BACKBONE
from .config import KarstConfig
from .data.synthetic import pretrain_batch
from .device import autocast
from .model import find_target_linears, karst_layers

__all__ = ["feature_stats", "observed_layers", "reference_images", "reference_stats", "REFERENCE_IMAGES"]

# Pre-training images the reference statistics are taken on: enough for ±3 % on a channel's std.
REFERENCE_IMAGES = 256


class _RunningMoments:
    """Count, mean and sum of squared deviations per channel, merged chunk by chunk."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, t: torch.Tensor) -> None:
        t = t.detach().reshape(-1, t.shape[-1]).float()  # (tokens, d_out)
        var_b, mean_b = torch.var_mean(t, dim=0, correction=0)
        n_b, mean_b, m2_b = t.shape[0], mean_b.double(), var_b.double() * t.shape[0]
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (self.n * n_b / n)
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        std = (self.m2 / self.n).clamp_min(0.0).sqrt()
        return self.mean.float().cpu().numpy(), std.float().cpu().numpy()


def _rescaled(entry: dict[str, np.ndarray], layer: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    # out = (1 + s1) ⊙ pre + s2  ⇒  μ_out = (1 + s1) μ_pre + s2,  σ_out = |1 + s1| σ_pre: the
    # re-scaled statistics follow exactly from pre's, so the activations are reduced twice, not thrice.
    if layer.s1 is None:
        return entry["pre_mean"].copy(), entry["pre_std"].copy()
    scale = (1.0 + layer.s1.detach().double().cpu()).numpy()
    shift = layer.s2.detach().double().cpu().numpy()
    return (scale * entry["pre_mean"] + shift).astype(np.float32), (np.abs(scale) * entry["pre_std"]).astype(np.float32)


def observed_layers(model: nn.Module, targets: tuple[str, ...] = KarstConfig().target_modules) -> dict[str, nn.Module]:
    """The layers whose outputs the statistics describe, by their name in the timm model.

    KARST layers if there are any; else a peft model's adapted linears (the wrapper, whose output
    includes the update); else the plain linears ``targets`` names (full fine-tuning, linear probe).
    """
    layers = karst_layers(model)
    if layers:
        return dict(layers)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    wrapped = [name.removesuffix(".base_layer") for name, m in base.named_modules()
               if name.endswith(".base_layer") and type(m) is nn.Linear]
    if wrapped:
        return {name: base.get_submodule(name) for name in wrapped}
    return dict(find_target_linears(base, targets))


@torch.no_grad()
def feature_stats(
    model: nn.Module, probe: torch.Tensor, device: torch.device, chunk: int = 32, max_tokens: int | None = 2048,
    targets: tuple[str, ...] = KarstConfig().target_modules,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-channel mean and std of each observed layer's outputs on ``probe`` (see :func:`observed_layers`).

    ``forward_parts`` and the reductions run on every ``s``-th token of the flattened (image, token)
    axis, with ``s`` chosen so that about ``max_tokens`` tokens are used (``None``: all). The subset
    is fixed by the probe, so epochs stay comparable; 2048 tokens estimate a channel's std to about
    ±3 %, plenty for the plots, at a fraction of the cost on a CPU.

    Returns:
        For KARST layers ``{layer: {"base_mean", "base_std", "pre_mean", "pre_std", "out_mean",
        "out_std"}}``; for other methods' layers ``{layer: {"out_mean", "out_std"}}``. Each value
        is a float32 array of length d_out.
    """
    layers = observed_layers(model, targets)
    if not layers or len(probe) == 0:
        return {}
    karst = {name for name, layer in layers.items() if hasattr(layer, "forward_parts")}
    moments = {name: {"base": _RunningMoments(), "pre": _RunningMoments()} if name in karst
               else {"out": _RunningMoments()} for name in layers}
    chunk_images = [0]  # images in the chunk being run (the hooks see tokens only)

    def stride(rows: int) -> int:
        if max_tokens is None:
            return 1
        total = rows // chunk_images[0] * len(probe)
        return max(1, math.ceil(total / max_tokens))

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name not in karst:
                out = output.reshape(-1, output.shape[-1])  # (images·tokens, d_out)
                moments[name]["out"].add(out[:: stride(out.shape[0])])
                return
            x = inputs[0].reshape(-1, inputs[0].shape[-1])  # (images·tokens, d_in)
            base, pre, _ = module.forward_parts(x[:: stride(x.shape[0])])
            moments[name]["base"].add(base)
            moments[name]["pre"].add(pre)

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
    return _collect(moments, layers, karst)


def _collect(moments: dict[str, dict[str, _RunningMoments]], layers: dict[str, nn.Module],
             karst: set[str]) -> dict[str, dict[str, np.ndarray]]:
    """The per-layer arrays of :func:`feature_stats` from the accumulated moments."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, parts in moments.items():
        if any(acc.mean is None for acc in parts.values()):  # a layer the forward pass never reached
            continue
        entry = {}
        for key, acc in parts.items():
            entry[f"{key}_mean"], entry[f"{key}_std"] = acc.result()
        if name in karst:
            entry["out_mean"], entry["out_std"] = _rescaled(entry, layers[name])
        out[name] = entry
    return out


def reference_images(backbone: Any, n: int = REFERENCE_IMAGES, seed: int = 0) -> tuple[torch.Tensor, str] | None:
    """Images of the data ``backbone`` was pre-trained on, preprocessed as in pre-training, or None.

    Known for the embedded backbone: its corpus is :func:`karst.data.synthetic.pretrain_batch`,
    normalised with the statistics on its card (what ``scripts/pretrain_embedded.py`` did). The
    batch is a fixed function of ``seed``, so every run of that backbone gets the same reference.

    Returns:
        ``(images (n, 3, H, W), description)``.
    """
    card = getattr(backbone, "card", None)
    if getattr(backbone, "name", None) != EMBEDDED_BACKBONE or not card:
        return None
    images, _ = pretrain_batch(np.random.default_rng([seed, 7]), n)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(card["data_config"]["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(card["data_config"]["std"], dtype=torch.float32)[:, None, None]
    return (x - mean) / std, f"{n} images of {EMBEDDED_BACKBONE}'s own pre-training corpus"


def _frozen_output(entry: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Before training every variant equals the frozen layer's output; a KARST entry calls it "base".
    key = "base" if "base_mean" in entry else "out"
    return {"mean": entry[f"{key}_mean"], "std": entry[f"{key}_std"]}


def reference_stats(model: nn.Module, probe_stats: dict[str, dict[str, np.ndarray]], backbone: Any,
                    pretrained: bool, device: torch.device,
                    targets: tuple[str, ...] = KarstConfig().target_modules) -> dict[str, Any]:
    """The statistics adapted outputs are compared with: the frozen model on its pre-training data.

    Call it before training (``model`` still computes the frozen function). Where the pre-training
    data is not known (hub or local weights, or ``pretrained=False``) the reference is the frozen
    model on the run's probe images, ``probe_stats``, and says so.

    Returns:
        ``{"source": "pretraining" | "target", "description": str, "layers": {layer: {"mean", "std"}}}``.
    """
    batch = reference_images(backbone) if pretrained else None
    if batch is None:
        return {"source": "target",
                "description": "the frozen model on this run's probe images (the backbone's pre-training "
                               "data is not available here)",
                "layers": {name: _frozen_output(entry) for name, entry in probe_stats.items()}}
    images, description = batch
    stats = feature_stats(model, images, device, max_tokens=4096, targets=targets)
    return {"source": "pretraining", "description": f"the frozen model on {description}",
            "layers": {name: _frozen_output(entry) for name, entry in stats.items()}}
