"""Typed, validated configuration: the adapter (``KarstConfig``) and a whole run (``TrainConfig``).

Every check happens at construction, so a bad value fails where it was given, with a message that
names the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import ConfigError

__all__ = [
    "Rescale",
    "MethodName",
    "DeviceName",
    "KarstConfig",
    "TrainConfig",
    "DEFAULT_TARGETS",
    "DEFAULT_BACKBONE",
    "DEFAULT_DATASET",
    "DEFAULT_LR",
    "default_lr_text",
]

Rescale = Literal["channel", "scalar", "none"]
MethodName = Literal["karst", "lora", "lokr", "full", "probe"]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]

# The four linear layers of a ViT/Swin block: attention in/out and the two MLP layers.
DEFAULT_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
DEFAULT_BACKBONE = "karst-vit-micro"
DEFAULT_DATASET = "synth-objects"


def _choice(name: str, value: Any, literal: Any) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not a valid choice; allowed: {', '.join(map(repr, allowed))}.")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}.")


def _positive_float(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} must be a finite number {bound}.")


@dataclass(frozen=True)
class KarstConfig:
    """Settings of the KARST adapter (arXiv 2502.06779).

    Args:
        n_kernels: N, the number of Kronecker products summed in ΔW (paper default 2).
        stack_dim: m, the side of each ``C_i`` (m×m); must divide d_in and d_out of every target.
        rank: r, the rank of each ``A_i B_i`` block; at most min(d_out, d_in)/m.
        rescale: channel-wise ``s1, s2`` (paper), a single scalar pair, or no re-scaling (ablation).
        target_modules: module-name suffixes to adapt inside the transformer blocks.
        init_std_C: std of the Gaussian init of ``C_i``; see ``KarstLinear.reset_parameters``.
        init_std_A: std of the Gaussian init of ``A_i``; ``None`` means the unit-gain scale (see the layer).
        recompute_output: targets whose pre-scaling output is recomputed in the backward pass
            instead of kept (one extra frozen matmul in exchange for d_out values per token). Worth it
            where nothing downstream keeps the output anyway, e.g. ``proj`` before a residual add.
    """

    n_kernels: int = 2
    stack_dim: int = 8
    rank: int = 8
    rescale: Rescale = "channel"
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    init_std_C: float = 1.0
    init_std_A: float | None = None
    # proj's output only feeds a residual add, so keeping it for ∂s1 would cost d_out floats per
    # token that nothing else keeps; recomputing it (one frozen d×d matmul) measured 1.021× LoRA's
    # peak memory instead of 1.063× at equal step time (vit_small, benchmarks/RESULTS.md).
    recompute_output: tuple[str, ...] = ("proj",)

    def __post_init__(self) -> None:
        _positive_int("n_kernels", self.n_kernels)
        _positive_int("stack_dim", self.stack_dim)
        _positive_int("rank", self.rank)
        _choice("rescale", self.rescale, Rescale)
        targets = self.target_modules
        if isinstance(targets, str):
            targets = (targets,)
        targets = tuple(targets)
        if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise ConfigError(
                f"target_modules={self.target_modules!r} must be a non-empty list of module-name "
                "suffixes such as ('qkv', 'proj', 'fc1', 'fc2')."
            )
        object.__setattr__(self, "target_modules", targets)
        recompute = (self.recompute_output,) if isinstance(self.recompute_output, str) else self.recompute_output
        object.__setattr__(self, "recompute_output", tuple(recompute))
        _positive_float("init_std_C", self.init_std_C)
        if self.init_std_A is not None:
            _positive_float("init_std_A", self.init_std_A)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["recompute_output"] = list(self.recompute_output)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KarstConfig:
        return _from_dict(cls, data)


# Peak AdamW learning rate per method when none is given. The PETL literature trains adapters at
# about 1e-3 for ~100 epochs; the embedded default's 150-step CPU budget needs more. Picked on
# synth-orientation validation accuracy after 8 epochs (KARST 1e-3 / 3e-3 / 1e-2: 17 / 33 / 67%;
# LoRA 3e-3 / 1e-2: 67 / 17%, its alpha/r = 2 scaling already doubles the step; LoKr 3e-3 / 1e-2:
# 27 / 65%; full fine-tuning 2e-4 / 1e-3: 48 / 73%; linear probe 1e-2 / 3e-2: 19 / 21%). For a large
# pre-trained backbone (ViT-B/16 on VTAB-1K, 100 epochs) use 1e-3, as in the paper. (KARST at 1e-3
# and 3e-3 ran on an earlier random draw of the same orientation generator, the rest on the shipped one.)
DEFAULT_LR: dict[str, float] = {"karst": 1e-2, "lora": 3e-3, "lokr": 1e-2, "full": 1e-3, "probe": 3e-2}


def default_lr_text() -> str:
    """The per-method default learning rates in one line ("karst 0.01, lora 0.003, ..."), for help texts."""
    return ", ".join(f"{method} {lr:g}" for method, lr in DEFAULT_LR.items())


@dataclass
class TrainConfig:
    """Everything a run needs; stored as ``config.json`` in the run folder.

    Defaults run the embedded backbone on the default embedded task on a CPU.
    """

    backbone: str = DEFAULT_BACKBONE  # embedded name, timm model name, or path to a weight file
    backbone_arch: str | None = None  # timm architecture of a local weight file
    pretrained: bool = True  # False: same architecture, random weights (baseline, offline speed tests)
    dataset: str = DEFAULT_DATASET  # embedded task name, folder, zip, VTAB-1K folder or torchvision:NAME
    method: MethodName = "karst"
    n_kernels: int = 2  # N
    stack_dim: int = 8  # m
    rank: int = 8  # r (also the LoRA / LoKr rank)
    rescale: Rescale = "channel"
    lora_alpha: float = 16.0  # LoRA/LoKr scaling numerator (alpha / r)
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    # 6 epochs of 800 images = 150 steps: the default KARST run fits the 60 s budget on 2 CPU cores.
    epochs: int = 6
    batch_size: int = 32
    lr: float | None = None  # None: the method's default, DEFAULT_LR[method]
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    drop_path: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    device: DeviceName = "auto"
    num_workers: int = 0
    probe_size: int = 64  # images in the fixed probe batch for feature statistics
    max_train_samples: int | None = None  # None = all

    def __post_init__(self) -> None:
        for name in ("backbone", "dataset"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name}={value!r} must be a non-empty name or path.")
        _choice("method", self.method, MethodName)
        _choice("rescale", self.rescale, Rescale)
        _choice("device", self.device, DeviceName)
        if not isinstance(self.pretrained, bool):
            raise ConfigError(f"pretrained={self.pretrained!r} must be true or false.")
        for name in ("n_kernels", "stack_dim", "rank", "epochs", "batch_size", "probe_size"):
            _positive_int(name, getattr(self, name))
        for name in ("warmup_epochs", "seed", "num_workers"):
            _positive_int(name, getattr(self, name), minimum=0)
        if self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ConfigError(
                f"warmup_epochs={self.warmup_epochs} must be smaller than epochs={self.epochs}; "
                f"try warmup_epochs={max(0, self.epochs // 10)}."
            )
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        _positive_float("lr", self.lr)
        _positive_float("lora_alpha", self.lora_alpha)
        _positive_float("weight_decay", self.weight_decay, allow_zero=True)
        _positive_float("label_smoothing", self.label_smoothing, allow_zero=True)
        if self.label_smoothing >= 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must be below 1; try 0.1.")
        _positive_float("drop_path", self.drop_path, allow_zero=True)
        if self.drop_path >= 1:
            raise ConfigError(f"drop_path={self.drop_path} must be below 1; try 0.1.")
        if self.grad_clip is not None:
            _positive_float("grad_clip", self.grad_clip)
        if self.max_train_samples is not None:
            _positive_int("max_train_samples", self.max_train_samples)
        # Reuse KarstConfig's checks for the adapter fields so both report the same way.
        self.target_modules = self.karst_config().target_modules

    def karst_config(self) -> KarstConfig:
        return self.method_config().karst_config()

    def method_config(self):
        from .methods import MethodConfig

        return MethodConfig(
            method=self.method,
            n_kernels=self.n_kernels,
            stack_dim=self.stack_dim,
            rank=self.rank,
            rescale=self.rescale,
            lora_alpha=self.lora_alpha,
            target_modules=tuple(self.target_modules),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)


def _from_dict(cls, data: dict[str, Any]):
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(names))}."
        )
    kwargs = dict(data)
    for key in ("target_modules", "recompute_output"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return cls(**kwargs)

