"""One interface over every fine-tuning method, so the trainer and the app treat them alike.

- ``karst``: this package's KARST adapter (``apply_karst``).
- ``lora`` / ``lokr``: the maintained reference implementations from ``peft``.
- ``full``: every parameter trains.  ``probe``: only the classifier head trains.

Each method exposes the trainable module, its parameter count, its adapter tensors, and a merged
plain timm model whose state_dict has the original keys.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .config import METHODS, KarstConfig, MethodConfig
from .errors import ConfigError
from .model import (
    ParamCount,
    apply_karst,
    check_karst,
    copy_checked,
    find_target_linears,
    head_parameter_names,
    merge_karst,
)

__all__ = ["MethodConfig", "Method", "build_method", "check_settings", "METHODS"]

_PEFT_PREFIX = "base_model.model."


class Method:
    """A model prepared for one fine-tuning method.

    Attributes:
        name: the method name.
        model: the module to train and to call for predictions.
    """

    def __init__(self, name: str, model: nn.Module, config: MethodConfig):
        self.name = name
        self.model = model
        self.config = config

    def base_model(self) -> nn.Module:
        """The underlying timm model (inside any wrapper)."""
        return self.model

    def param_count(self) -> ParamCount:
        base = self.base_model()
        head_names = head_parameter_names(base)
        adapter = head = frozen = total = 0
        for name, p in self.model.named_parameters():
            total += p.numel()
            if not p.requires_grad:
                frozen += p.numel()
            elif name.removeprefix(_PEFT_PREFIX) in head_names:
                head += p.numel()
            else:
                adapter += p.numel()
        return ParamCount(adapter=adapter, head=head, frozen=frozen, total=total)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors (adapter + head), keyed by their name in the model."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        copy_checked(
            {n: p for n, p in self.model.named_parameters() if p.requires_grad},
            state,
            mismatch=f"adapter weights do not fit this {self.name} model",
            hint="load them into the backbone, classes and method they came from",
        )

    def merged_model(self) -> nn.Module:
        """A plain timm model equal to the adapted one (state_dict keys of the original model)."""
        return copy.deepcopy(self.model)


class KarstMethod(Method):
    def merged_model(self) -> nn.Module:
        return merge_karst(copy.deepcopy(self.model))


class PeftMethod(Method):
    def base_model(self) -> nn.Module:
        return self.model.get_base_model()

    def merged_model(self) -> nn.Module:
        return copy.deepcopy(self.model).merge_and_unload()


def _freeze_all_but_head(model: nn.Module) -> None:
    head = head_parameter_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in head)


def _peft_targets(model: nn.Module, config: MethodConfig) -> list[str]:
    # The exact module names KARST would adapt, so LoRA/LoKr touch the same layers. (A bare suffix
    # "proj" given to peft would also match the Conv2d patch_embed.proj.)
    names = list(find_target_linears(model, config.adapter.target_modules))
    if not names:
        check_karst(model, KarstConfig(target_modules=config.adapter.target_modules))  # raises the clear error
    return names


def _check_peft_rank(model: nn.Module, config: MethodConfig) -> None:
    targets = find_target_linears(model, config.adapter.target_modules)
    smallest = min(min(lin.in_features, lin.out_features) for lin in targets.values())
    if config.adapter.rank > smallest:
        raise ConfigError(
            f"rank r={config.adapter.rank} exceeds the smallest targeted layer dimension {smallest}; "
            f"use r <= {smallest}."
        )


def check_settings(model: nn.Module, config: MethodConfig) -> None:
    """Raise :class:`ConfigError` if ``config`` does not fit ``model``; never modifies the model."""
    if config.name == "karst":
        check_karst(model, config.adapter)
    elif config.name in ("lora", "lokr"):
        _peft_targets(model, config)
        _check_peft_rank(model, config)
    elif config.name == "probe" and not head_parameter_names(model):
        raise ConfigError(f"{type(model).__name__} has no classifier head (get_classifier) to probe.")


def build_method(model: nn.Module, config: MethodConfig | None = None) -> Method:
    """Prepare ``model`` (modified in place) for ``config.name`` and return the :class:`Method`."""
    config = config or MethodConfig()
    check_settings(model, config)
    if config.name == "karst":
        return KarstMethod("karst", apply_karst(model, config.adapter), config)
    if config.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return Method("full", model, config)
    if config.name == "probe":
        _freeze_all_but_head(model)
        return Method("probe", model, config)
    return _build_peft(model, config)


def _build_peft(model: nn.Module, config: MethodConfig) -> Method:
    from peft import LoKrConfig, LoraConfig, get_peft_model  # local: ~1 s to import, only LoRA/LoKr need it

    targets = _peft_targets(model, config)
    if config.name == "lora":
        peft_config = LoraConfig(r=config.adapter.rank, lora_alpha=config.lora_alpha, target_modules=targets,
                                 lora_dropout=0.0)
    else:
        peft_config = LoKrConfig(r=config.adapter.rank, alpha=config.lora_alpha, target_modules=targets)
    head = head_parameter_names(model)
    wrapped = get_peft_model(model, peft_config)
    # peft freezes everything but the adapters; the classifier head is trained by every method.
    for name, p in wrapped.named_parameters():
        if name.removeprefix(_PEFT_PREFIX) in head:
            p.requires_grad_(True)
    return PeftMethod(config.name, wrapped, config)
