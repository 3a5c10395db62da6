"""Model surgery: put KARST adapters into a timm model, count parameters, merge, save and load.

``apply_karst`` replaces matching ``nn.Linear`` layers with :class:`KarstLinear` and freezes the rest
(except the classifier head); ``merge_karst`` turns every adapter back into a plain ``nn.Linear`` so
the state_dict has exactly the keys of the original timm model.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import KarstConfig
from .errors import ConfigError, KarstError, RunError
from .layer import KarstLinear, valid_stack_dims

__all__ = [
    "ParamCount",
    "apply_karst",
    "merge_karst",
    "karst_layers",
    "find_target_linears",
    "head_parameter_names",
    "count_parameters",
    "save_adapter",
    "load_adapter",
    "copy_checked",
]

ADAPTER_FORMAT = "karst-adapter/1"


@dataclass(frozen=True)
class ParamCount:
    """Parameter accounting: trainable adapter, trainable head, frozen, and the total."""

    adapter: int
    head: int
    frozen: int
    total: int

    @property
    def trainable(self) -> int:
        return self.adapter + self.head

    def to_dict(self) -> dict[str, int]:
        return {"adapter": self.adapter, "head": self.head, "frozen": self.frozen,
                "total": self.total, "trainable": self.trainable}


def _classifier_modules(model: nn.Module) -> list[nn.Module]:
    get = getattr(model, "get_classifier", None)
    if get is None:
        return []
    heads = get()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    return [h for h in heads if isinstance(h, nn.Module)]


def head_parameter_names(model: nn.Module) -> set[str]:
    """Qualified names of the classifier head's parameters (timm's ``get_classifier()``)."""
    head_ids = {id(p) for h in _classifier_modules(model) for p in h.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in head_ids}


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def find_target_linears(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers whose name ends in a target, outside the patch embedding and head.

    Only ``nn.Linear`` qualifies, so ``patch_embed.proj`` (a Conv2d in timm ViTs) is never touched;
    the name check also excludes a linear patch embedding and the classifier.
    """
    head_ids = {id(m) for h in _classifier_modules(model) for m in h.modules()}
    found = {}
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or id(module) in head_ids:
            continue
        if name.startswith("patch_embed") or ".patch_embed." in name:
            continue
        if _matches(name, targets):
            found[name] = module
    return found


def _available_linear_suffixes(model: nn.Module) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names)


def _reads_weight_directly(parent: nn.Module, child: str) -> bool:
    """True when the parent's forward uses ``self.<child>.weight`` instead of calling the module.

    Some timm families (BEiT, EVA) build qkv with ``F.linear(x, self.qkv.weight, bias)``: an adapter
    placed there would never run, so we refuse instead of training something that does nothing.
    """
    try:
        src = inspect.getsource(type(parent).forward)
    except (OSError, TypeError):
        return False
    return re.search(rf"self\.{re.escape(child)}\.weight\b", src) is not None


def check_karst(model: nn.Module, config: KarstConfig) -> dict[str, nn.Linear]:
    """Validate ``config`` against ``model`` without changing it; return the layers it would adapt."""
    targets = find_target_linears(model, config.target_modules)
    if not targets:
        raise ConfigError(
            f"target_modules {list(config.target_modules)} match no nn.Linear layer of "
            f"{type(model).__name__}; its linear layers are named: {', '.join(_available_linear_suffixes(model))}."
        )
    dims = sorted({d for lin in targets.values() for d in (lin.in_features, lin.out_features)})
    m, r = config.stack_dim, config.rank
    bad_m = [(n, lin) for n, lin in targets.items() if lin.in_features % m or lin.out_features % m]
    if bad_m:
        name, lin = bad_m[0]
        fits = ", ".join(map(str, valid_stack_dims(*dims)))
        raise ConfigError(
            f"m={m} does not divide {name} ({lin.out_features}×{lin.in_features}); "
            f"m values that fit every targeted layer: {fits}."
        )
    small = min(targets.items(), key=lambda kv: min(kv[1].in_features, kv[1].out_features))
    max_rank = min(small[1].in_features, small[1].out_features) // m
    if r > max_rank:
        raise ConfigError(
            f"rank r={r} is larger than the Kronecker block of {small[0]} "
            f"({small[1].out_features // m}×{small[1].in_features // m} for m={m}); use r <= {max_rank} "
            "or a smaller m."
        )
    modules = dict(model.named_modules())
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        if _reads_weight_directly(modules[parent_name], child):
            raise ConfigError(
                f"{type(modules[parent_name]).__name__} reads {name}.weight directly instead of calling "
                f"the layer, so an adapter there would never run; remove '{child}' from target_modules."
            )
    return targets


def apply_karst(model: nn.Module, config: KarstConfig | None = None) -> nn.Module:
    """Insert KARST adapters into ``model`` in place and return it.

    Every matching ``nn.Linear`` becomes a :class:`KarstLinear`; all other parameters are frozen
    except the classifier head's. Raises :class:`ConfigError` (naming the layer and the fix) when the
    settings do not fit the model.
    """
    config = config or KarstConfig()
    if karst_layers(model):
        raise ConfigError("the model already has KARST adapters; call merge_karst first or use a fresh model.")
    targets = check_karst(model, config)
    head_names = head_parameter_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in head_names)
    no_bias = []
    modules = dict(model.named_modules())
    for name, linear in targets.items():
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, KarstLinear(linear, config, name=name))
        if linear.bias is None and config.rescale != "none":
            no_bias.append(name)
    if no_bias:
        warnings.warn(
            f"{len(no_bias)} adapted layers have no bias (e.g. {no_bias[0]}); their shift s2 cannot be "
            "merged into the plain architecture, so merge_karst will refuse if it is non-zero.",
            stacklevel=2,
        )
    model.karst_config = config
    return model


def karst_layers(model: nn.Module) -> dict[str, KarstLinear]:
    """All KARST layers of ``model`` by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, KarstLinear)}


@torch.no_grad()
def merge_karst(model: nn.Module) -> nn.Module:
    """Replace every :class:`KarstLinear` by its merged ``nn.Linear`` (in place) and return the model.

    The result is a plain timm model: its state_dict keys are exactly those of the original, so it
    loads with ``strict=True`` into ``timm.create_model(name, num_classes=K)``.
    """
    modules = dict(model.named_modules())
    for name, layer in karst_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        try:
            merged = layer.merged_linear()
        except KarstError as err:  # name the layer; keep the type (RunError: NaN weights, ConfigError: settings)
            raise type(err)(f"{name}: {err}", field=err.field) from None
        setattr(modules[parent_name], child, merged)
    if hasattr(model, "karst_config"):
        del model.karst_config
    return model


def count_parameters(model: nn.Module) -> ParamCount:
    """Trainable adapter parameters, trainable head parameters, frozen parameters and the total."""
    head_names = head_parameter_names(model)
    adapter = head = frozen = total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if not p.requires_grad:
            frozen += p.numel()
        elif name in head_names or _strip_peft(name) in head_names:
            head += p.numel()
        else:
            adapter += p.numel()
    return ParamCount(adapter=adapter, head=head, frozen=frozen, total=total)


def _strip_peft(name: str) -> str:
    return name.removeprefix("base_model.model.")


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    head_names = head_parameter_names(model)
    out = {}
    for name, layer in karst_layers(model).items():
        for pname, p in layer.named_parameters():
            if not pname.startswith("base."):
                out[f"{name}.{pname}"] = p
    for name, p in model.named_parameters():
        if name in head_names:
            out[name] = p
    return out


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Save the adapter and head tensors (safetensors) with the KarstConfig as JSON metadata."""
    config = getattr(model, "karst_config", None)
    if config is None or not karst_layers(model):
        raise ConfigError("the model has no KARST adapters to save; call apply_karst first.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in _adapter_tensors(model).items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": ADAPTER_FORMAT, "karst_config": json.dumps(config.to_dict())})
    tmp.replace(path)
    return path


def read_adapter_config(path: str | Path) -> KarstConfig:
    """The KarstConfig stored in an adapter file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"adapter file {path} does not exist; pass the adapter.safetensors of a run.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise RunError(f"{path} is not a readable safetensors file ({type(err).__name__}).") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise RunError(f"{path} is not a KARST adapter file (format {meta.get('format')!r}).")
    return KarstConfig.from_dict(json.loads(meta["karst_config"]))


@torch.no_grad()
def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter file into ``model`` (applying KARST first if it has no adapters yet)."""
    config = read_adapter_config(path)
    if not karst_layers(model):
        apply_karst(model, config)
    copy_checked(
        _adapter_tensors(model),
        load_file(str(path)),
        mismatch=f"adapter file {path} does not fit this model",
        hint="use the backbone and number of classes the adapter was trained with",
    )
    return model


@torch.no_grad()
def copy_checked(
    targets: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], *, mismatch: str, hint: str
) -> None:
    """Copy ``tensors`` into ``targets`` after checking both have the same keys and shapes.

    Args:
        targets: the model's tensors to overwrite, by name.
        tensors: the loaded tensors, by name.
        mismatch: the start of the error when the keys differ ("adapter file X does not fit ...").
        hint: what to try, ending both error messages.

    Raises:
        RunError: the keys or shapes differ (weights from another model); nothing is copied then.
    """
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise RunError(
            f"{mismatch}: {len(missing)} missing tensors (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); {hint}."
        )
    for key, tensor in tensors.items():
        if targets[key].shape != tensor.shape:
            raise RunError(
                f"adapter tensor {key} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(targets[key].shape)}; {hint}."
            )
    for key, tensor in tensors.items():
        targets[key].copy_(tensor)
