"""Every setting, declared once: its default, its allowed values and a one-line help text.

A run (:class:`TrainConfig`) holds a method spec (:class:`MethodConfig`), which holds the adapter's
settings (:class:`KarstConfig`). Each field is declared with :func:`setting`; from that one
declaration come

- the checks at construction: a bad value fails where it was given, naming the field, the value,
  what is allowed and the default (:class:`~karst.errors.ConfigError` with ``.field`` set);
- ``karst train``'s flags and the app's Setup fields (:func:`field_specs`, :func:`parse_value`);
- the JSON form of ``config.json`` (:meth:`Settings.to_dict` / :meth:`Settings.from_dict`, which
  also reads the flat ``config.json`` of runs written before the nesting).

Adding a setting is one ``setting(...)`` line plus its use.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args, get_origin

from .errors import ConfigError

__all__ = [
    "Rescale",
    "MethodName",
    "DeviceName",
    "Init",
    "Preprocess",
    "FieldSpec",
    "Settings",
    "KarstConfig",
    "MethodConfig",
    "TrainConfig",
    "DEFAULT_TARGETS",
    "DEFAULT_BACKBONE",
    "DEFAULT_DATASET",
    "DEFAULT_LR",
    "METHODS",
    "default_lr_text",
    "field_specs",
    "field_spec",
    "parse_value",
    "config_from_values",
]

Rescale = Literal["channel", "scalar", "none"]
MethodName = Literal["karst", "lora", "lokr", "full", "probe"]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]
Init = Literal["unit-gain", "kaiming"]
Preprocess = Literal["timm", "paper"]
METHODS: tuple[str, ...] = get_args(MethodName)

# The four linear layers of a ViT/Swin block: attention in/out and the two MLP layers.
DEFAULT_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
DEFAULT_BACKBONE = "karst-vit-micro"
DEFAULT_DATASET = "synth-objects"

# Peak AdamW learning rate per method when none is given, chosen on validation accuracy for the
# embedded default's short CPU budget (benchmarks/RESULTS.md, "Learning-rate defaults"). For a large
# pre-trained backbone trained ~100 epochs (ViT-B/16 on VTAB-1K) use 1e-3, as the paper does.
DEFAULT_LR: dict[str, float] = {"karst": 1e-2, "lora": 3e-3, "lokr": 1e-2, "full": 1e-3, "probe": 3e-2}


def default_lr_text() -> str:
    """The per-method default learning rates in one line ("karst 0.01, lora 0.003, ..."), for help texts."""
    return ", ".join(f"{method} {lr:g}" for method, lr in DEFAULT_LR.items())


# ---------------------------------------------------------------------------------------------- fields
@dataclass(frozen=True)
class FieldSpec:
    """One setting as the CLI, the form and the checks see it.

    Attributes:
        path: dotted place in a :class:`TrainConfig` ("method.adapter.rank").
        name: the field's own name ("rank").
        kind: "int" | "float" | "bool" | "str" | "list" (of strings) | "config" (nested settings).
        optional: ``None`` is allowed (and means "the default rule", said in ``help``).
        default: the declared default (``None`` for nested settings).
        help: one line for ``--help`` and the form's info text.
        label: short label for a form field.
        flag: the ``karst train`` flag, or ``None`` (then it is set from a JSON config file).
        choices: allowed values of a ``Literal`` field.
        minimum: inclusive lower bound (for "list": the fewest items).
        above: exclusive lower bound.
        below: exclusive upper bound.
    """

    path: str
    name: str
    kind: str
    optional: bool
    default: Any
    help: str
    label: str
    flag: str | None = None
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    above: float | None = None
    below: float | None = None
    nested: type | None = None

    def requirement(self) -> str:
        """What a valid value looks like, as words ("an integer >= 1")."""
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        noun = {"int": "an integer", "float": "a finite number", "bool": "true or false",
                "str": "a non-empty text", "list": "a list of names"}.get(self.kind, "a settings object")
        bounds = [f">= {self.minimum:g}" if self.minimum is not None and self.kind != "list" else "",
                  f"> {self.above:g}" if self.above is not None else "",
                  f"< {self.below:g}" if self.below is not None else ""]
        if self.kind == "list" and self.minimum:
            noun = "a non-empty list of names"
        return " ".join([noun, " and ".join(b for b in bounds if b)]).strip()


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    label: str | None = None,
    flag: str | None = None,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    factory: Any = None,
) -> Any:
    """Declare a settings field: its default, its bounds, its help text and (optionally) its flag."""
    meta = {"help": help, "label": label, "flag": flag, "minimum": minimum, "above": above, "below": below}
    if factory is not None:
        return field(default_factory=factory, metadata={"karst": meta})
    return field(default=default, metadata={"karst": meta})


def _kind(hint: Any) -> tuple[str, bool, tuple | None, type | None]:
    """(kind, optional, choices, nested class) of a type hint."""
    optional = False
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        optional, hint = len(args) < len(get_args(hint)), args[0]
    if get_origin(hint) is Literal:
        return "str", optional, get_args(hint), None
    if get_origin(hint) is tuple:
        return "list", optional, None, None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return "config", optional, None, hint
    return {int: "int", float: "float", bool: "bool", str: "str"}[hint], optional, None, None


@functools.cache
def _own_specs(cls: type) -> tuple[FieldSpec, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("karst")
        if meta is None:
            continue
        kind, optional, choices, nested = _kind(hints[f.name])
        default = None if f.default is dataclasses.MISSING else f.default
        label = meta["label"] or f.name.replace("_", " ")
        out.append(FieldSpec(path=f.name, name=f.name, kind=kind, optional=optional, default=default,
                             help=meta["help"], label=label, flag=meta["flag"], choices=choices,
                             minimum=meta["minimum"], above=meta["above"], below=meta["below"], nested=nested))
    return tuple(out)


@functools.cache
def field_specs(cls: type | None = None) -> tuple[FieldSpec, ...]:
    """Every leaf setting of ``cls`` (default :class:`TrainConfig`), nested ones with dotted paths."""
    out: list[FieldSpec] = []
    for spec in _own_specs(cls or TrainConfig):
        if spec.kind == "config":
            out += [dataclasses.replace(s, path=f"{spec.path}.{s.path}") for s in field_specs(spec.nested)]
        else:
            out.append(spec)
    return tuple(out)


def field_spec(path: str) -> FieldSpec:
    """The :class:`FieldSpec` at ``path`` of a TrainConfig ("method.adapter.rank")."""
    for spec in field_specs():
        if spec.path == path:
            return spec
    known = ", ".join(s.path for s in field_specs())
    raise ConfigError(f"unknown setting {path!r}; known settings: {known}.")


def _fail(spec: FieldSpec, value: Any) -> ConfigError:
    shown = "method" if spec.name == "name" else spec.name  # MethodConfig.name is "the method" to a user
    if spec.choices:
        allowed = ", ".join(map(repr, spec.choices))
        return ConfigError(f"{shown}={value!r} is not a valid choice; allowed: {allowed}.", field=spec.path)
    default = "" if spec.default is None else f"; the default is {_show(spec.default)}"
    return ConfigError(f"{shown}={value!r} must be {spec.requirement()} ({spec.help}){default}.", field=spec.path)


def _show(value: Any) -> str:
    return ",".join(value) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else str(value)


def _in_bounds(spec: FieldSpec, x: float) -> bool:
    return ((spec.minimum is None or x >= spec.minimum) and (spec.above is None or x > spec.above)
            and (spec.below is None or x < spec.below))


def _check(spec: FieldSpec, value: Any) -> Any:
    """The normalised value of ``spec`` (tuples for lists, nested settings built), or ConfigError."""
    if value is None:
        if spec.optional:
            return None
        raise _fail(spec, value)
    if spec.kind == "config":
        return spec.nested.coerce(value)
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise _fail(spec, value)
        return value
    if spec.kind in ("int", "float"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if spec.kind == "int" and isinstance(value, float):
            number = False
        if not number or not math.isfinite(value) or not _in_bounds(spec, value):
            raise _fail(spec, value)
        return float(value) if spec.kind == "float" else value
    if spec.kind == "list":
        items = (value,) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) and t.strip() for t in items):
            raise _fail(spec, value)
        if len(items) < (spec.minimum or 0):
            raise _fail(spec, value)
        return tuple(t.strip() for t in items)
    if not isinstance(value, str) or not value.strip() or (spec.choices and value not in spec.choices):
        raise _fail(spec, value)
    return value.strip()


# -------------------------------------------------------------------------------------------- settings
class Settings:
    """Behaviour shared by the settings dataclasses: checks at construction, JSON round trip."""

    # Keys a subclass accepts in from_dict() besides its fields (old layouts); see TrainConfig.
    _legacy_keys: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for spec in _own_specs(type(self)):
            object.__setattr__(self, spec.name, _check(spec, getattr(self, spec.name)))
        self._resolve()

    def _resolve(self) -> None:
        """Checks across fields and defaults that depend on other fields (after each field's check)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (lists for tuples, dicts for nested settings)."""
        out = {}
        for spec in _own_specs(type(self)):
            value = getattr(self, spec.name)
            out[spec.name] = value.to_dict() if isinstance(value, Settings) else (
                list(value) if isinstance(value, tuple) else value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build from :meth:`to_dict` data; unknown keys are refused with the list of known ones."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}.")
        names = {s.name for s in _own_specs(cls)}
        unknown = sorted(set(data) - names - set(cls._legacy_keys))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(names))}."
            )
        return cls(**cls._upgrade(dict(data)))

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """An instance from an instance or a dict (as nested fields are given)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise ConfigError(f"{cls.__name__} expects an object of its fields, got {value!r}.")


@dataclass(frozen=True)
class KarstConfig(Settings):
    """Settings of the KARST adapter (arXiv 2502.06779); see ``karst.layer`` for the formula."""

    n_kernels: int = setting(2, "N: Kronecker products summed in ΔW", label="N kernels", flag="--kernels",
                             minimum=1)
    stack_dim: int = setting(8, "m: side of each C_i (m×m); must divide every targeted layer's sizes",
                             label="m (C is m×m)", flag="--stack", minimum=1)
    rank: int = setting(8, "r: rank of each A_i B_i; also the LoRA / LoKr rank", label="r (rank)", flag="--rank",
                        minimum=1)
    alpha: float | None = setting(None, "ΔW is scaled by alpha/r, as LoRA scales BA; empty: no scaling",
                                  label="α (ΔW × α/r)", flag="--alpha", above=0)
    rescale: Rescale = setting("channel", "re-scaling after the update: channel-wise s1, s2 (paper), "
                               "one scalar pair, or none (ablation)", label="Re-scaling", flag="--rescale")
    target_modules: tuple[str, ...] = setting(DEFAULT_TARGETS, "layer-name suffixes to adapt (the same layers "
                                              "for KARST, LoRA and LoKr)", label="Target layers",
                                              flag="--targets", minimum=1)
    init: Init = setting("unit-gain", "initialisation of C_i and A_i: unit-gain Gaussians (ours, see KarstLinear), "
                         "or Kaiming-uniform as the authors' code does", label="Init", flag="--init")
    init_std_C: float = setting(1.0, "scale of C_i's Gaussian init relative to the unit-gain std 1/√m", above=0)
    init_std_A: float | None = setting(None, "std of A_i's Gaussian init; empty: the unit-gain √(m/(N·d_out))",
                                       above=0)
    # proj's output only feeds a residual add, so keeping it for ∂s1 costs memory that nothing else
    # needs; recomputing it is one frozen matmul (benchmarks/RESULTS.md, "recompute_output").
    recompute_output: tuple[str, ...] = setting(("proj",), "targets whose pre-scaling output is recomputed in "
                                                "the backward pass instead of kept (memory for one matmul)")


@dataclass(frozen=True)
class MethodConfig(Settings):
    """Which method to build and its settings; ``adapter.rank`` and ``adapter.target_modules`` are
    shared by KARST, LoRA and LoKr so that "r=8" is one budget knob for every adapter."""

    name: MethodName = setting("karst", "karst, lora or lokr (peft), full fine-tuning, or probe (head only)",
                               label="Method", flag="--method")
    adapter: KarstConfig = setting(help="the adapter's settings", factory=KarstConfig)
    lora_alpha: float = setting(16.0, "LoRA / LoKr scaling numerator: the update is multiplied by lora_alpha/r",
                                label="LoRA α", flag="--lora-alpha", above=0)

    @classmethod
    def coerce(cls, value: Any) -> MethodConfig:
        # A bare method name ("lora") means that method with default settings.
        return cls(name=value) if isinstance(value, str) else super().coerce(value)


# Flat keys of config.json written before the method spec was nested, and where they live now.
_LEGACY_METHOD_KEYS = {"lora_alpha": "lora_alpha"}
_LEGACY_ADAPTER_KEYS = ("n_kernels", "stack_dim", "rank", "rescale", "target_modules", "init_std_C",
                        "init_std_A", "recompute_output")


@dataclass
class TrainConfig(Settings):
    """Everything a run needs; stored as ``config.json`` in the run folder.

    Defaults run the embedded backbone on the default embedded task on a CPU.
    """

    _legacy_keys: ClassVar[tuple[str, ...]] = (*_LEGACY_METHOD_KEYS, *_LEGACY_ADAPTER_KEYS)

    backbone: str = setting(DEFAULT_BACKBONE, "embedded name, timm model name or weight file", label="Backbone",
                            flag="--backbone")
    backbone_arch: str | None = setting(None, "timm architecture of a local weight file",
                                        label="timm architecture of that file", flag="--backbone-arch")
    pretrained: bool = setting(True, "pre-trained weights; off: the same architecture with random weights",
                               label="Pre-trained weights", flag="--random-init")
    dataset: str = setting(DEFAULT_DATASET, "embedded task, folder, zip, VTAB-1K folder or torchvision:NAME",
                           label="Embedded task", flag="--dataset")
    method: MethodConfig = setting(help="the method and its adapter", factory=MethodConfig)
    # 6 epochs of 800 images = 150 steps: the default KARST run fits in about a minute on 2 CPU cores.
    preprocess: Preprocess = setting("timm", "image preprocessing: the backbone's own (timm's resize and crop), or "
                                     "the paper's (squash-resize to the input size, bicubic, mean = std = 0.5)",
                                     flag="--preprocess")
    train_on_val: bool = setting(False, "train on train + val and evaluate on test (the VTAB-1K final protocol, "
                                 "train800val200); the periodic evaluations then use the test set",
                                 flag="--train-on-val")
    epochs: int = setting(6, "training epochs", label="Epochs", flag="--epochs", minimum=1)
    eval_every: int = setting(1, "evaluate (and snapshot) every this many epochs, and after the last",
                              flag="--eval-every", minimum=1)
    batch_size: int = setting(32, "images per step", label="Batch size", flag="--batch-size", minimum=1)
    lr: float | None = setting(None, f"peak AdamW learning rate; empty: the method's default ({default_lr_text()})",
                               label="Learning rate", flag="--lr", above=0)
    weight_decay: float = setting(1e-4, "AdamW weight decay (not on biases, norms, s1, s2)", flag="--weight-decay",
                                  minimum=0)
    warmup_epochs: int | None = setting(None, "linear warm-up epochs; empty: 1 (0 for a one-epoch run)",
                                        label="Warm-up epochs", flag="--warmup-epochs", minimum=0)
    label_smoothing: float = setting(0.0, "label smoothing of the training loss", flag="--label-smoothing",
                                     minimum=0, below=1)
    drop_path: float = setting(0.0, "stochastic depth rate of the backbone", flag="--drop-path", minimum=0, below=1)
    grad_clip: float | None = setting(None, "clip the gradient norm to this; empty: no clipping",
                                      flag="--grad-clip", above=0)
    seed: int = setting(0, "random seed (data order, init, subsets)", label="Seed", flag="--seed", minimum=0)
    device: DeviceName = setting("auto", "auto picks cuda, then mps, then cpu", label="Device", flag="--device")
    num_workers: int = setting(0, "data-loader worker processes", flag="--num-workers", minimum=0)
    probe_size: int = setting(64, "validation images whose feature statistics the alignment view shows",
                              label="Probe images for the alignment statistics", flag="--probe-size", minimum=1)
    max_train_samples: int | None = setting(None, "use at most this many training images; empty: all",
                                            label="Use at most this many training images (empty = all)",
                                            flag="--max-train-samples", minimum=1)
    tensorboard: bool = setting(False, "write TensorBoard event files to <run>/tensorboard "
                                "(pip install -r requirements-loggers.txt)", flag="--tensorboard")
    mlflow: bool = setting(False, "log to MLflow in a local mlruns/ folder next to the runs, no server "
                           "(pip install -r requirements-loggers.txt)", flag="--mlflow")
    save_state: bool = setting(True, "save the training state (trainable weights, optimiser, schedule, random "
                               "generators) after each epoch, so a stopped run can be resumed; only the newest "
                               "is kept", flag="--no-save-state")

    def __post_init__(self) -> None:
        if isinstance(self.method, str):  # TrainConfig(method="lora") in a notebook
            self.method = MethodConfig(name=self.method)
        super().__post_init__()

    def _resolve(self) -> None:
        # Resolved here so that config.json records the numbers the run used.
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method.name]
        if self.warmup_epochs is None:
            self.warmup_epochs = min(1, self.epochs - 1)
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs={self.warmup_epochs} must be smaller than epochs={self.epochs}; "
                f"try warmup_epochs={max(0, self.epochs // 10)}.",
                field="warmup_epochs",
            )

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Runs written before the nesting have the method's settings at the top level.
        legacy = [k for k in cls._legacy_keys if k in data]
        if not legacy and not isinstance(data.get("method"), str):
            return data
        method = data.get("method", "karst")
        method = {"name": method} if isinstance(method, str) else dict(method)
        adapter = dict(method.get("adapter") or {})
        for key in legacy:
            value = data.pop(key)
            if key in _LEGACY_METHOD_KEYS:
                method[_LEGACY_METHOD_KEYS[key]] = value
            else:
                adapter[key] = value
        data["method"] = {**method, "adapter": adapter}
        return data

    # Short names for the two nested levels, read in many places.
    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def adapter(self) -> KarstConfig:
        return self.method.adapter


# ------------------------------------------------------------------------------------ form and flags
def parse_value(spec: FieldSpec, raw: Any) -> Any:
    """A form's or a flag's raw value as the type ``spec`` wants (8.0 -> 8, "1e-3" -> 0.001, "" -> None).

    Range and choice checks happen when the config is built; this only refuses what is not even of
    the right type, naming the field by its label.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if spec.optional:
            return None
        raise ConfigError(f"{spec.label} is empty; enter {spec.requirement()} ({spec.help}).", field=spec.path)
    if spec.kind in ("int", "float") and not isinstance(raw, bool):
        try:
            number = float(raw)
        except (TypeError, ValueError):
            number = None
        if number is None or (spec.kind == "int" and math.isfinite(number) and not number.is_integer()):
            what = "a whole number" if spec.kind == "int" else "a number such as 1e-3"
            raise ConfigError(f"{spec.label}={raw!r} must be {what}.", field=spec.path)
        return int(number) if spec.kind == "int" and math.isfinite(number) else number
    if spec.kind == "bool" and isinstance(raw, str):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if spec.kind == "list" and isinstance(raw, str):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        child = data.get(key)
        if isinstance(child, Settings):
            child = child.to_dict()
        elif isinstance(child, str):  # a bare method name
            child = {"name": child}
        data[key] = child = dict(child or {})
        data = child
    data[leaf] = value


def config_from_values(values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from raw values keyed by setting path, over ``base`` (a config dict or file).

    Args:
        values: ``{"method.adapter.rank": "4", "epochs": 2.0, ...}`` as a form or flags give them;
            each is parsed with :func:`parse_value`.
        base: ``TrainConfig.to_dict()`` data (nested, or a flat ``config.json`` of an older run).

    Raises:
        ConfigError: an unknown setting, a value of the wrong type or out of range.
    """
    data = TrainConfig._upgrade(copy.deepcopy(dict(base or {})))
    for path, raw in values.items():
        _set_path(data, path, parse_value(field_spec(path), raw))
    return TrainConfig.from_dict(data)
