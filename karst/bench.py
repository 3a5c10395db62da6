"""Speed and memory benchmark: KARST against PEFT LoRA / LoKr, full fine-tuning, the floor and probe.

Every method is built on a copy of the same randomly initialised backbone (``pretrained=False``:
speed and memory do not depend on the weights) and trained on the same random batch. Methods are
timed round-robin, one step each per round, so that a noisy shared machine slows them alike; the
table gives the median ms/step and, as "× LoRA" and "× LoKr", the median over rounds of each round's
ratio (:func:`paired_ratio`), which cancels load changes that last a round. One training step =
forward + backward + AdamW step (timm's ``create_optimizer_v2``, as in :mod:`karst.train`).

The "floor (norms + head)" row trains only the normalisation layers and the classifier head (the
head every other row trains too), so its backward pass still runs through the whole frozen
backbone: no adapter's step can be cheaper. Its ratio to LoKr says how low "× LoKr" can go at all.

Peak memory, measured in a separate, untimed step per method:

- CUDA: ``torch.cuda.max_memory_allocated`` during the step, minus what was allocated before it,
  plus the method's own persistent tensors (parameters, buffers, optimiser state) — i.e. what the
  method would need alone, although every method's model sits on the device during the run.
- CPU: the peak of live tensor storage during the step, tracked op by op with a
  ``TorchDispatchMode`` (parameters, buffers, optimiser state, inputs, activations, gradients and
  temporaries; each storage counted once). It is exact and repeatable, unlike process RSS, and
  excludes allocator caching and library code.

"Saved MB" is the memory autograd keeps for the backward pass at the end of the forward (unique
storages of saved tensors, parameters excluded), from ``torch.autograd.graph.saved_tensors_hooks``.
Inference times the merged model (``Method.merged_model()``) against the unadapted backbone.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import functools
import json
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

from .backbones import list_backbones, load_backbone
from .config import MethodConfig, Settings, field_specs, setting
from .device import autocast, resolve_device
from .errors import ConfigError, KarstError
from .flags import add_setting_flags, flag_values
from .methods import build_method
from .model import head_parameter_names

__all__ = [
    "METHOD_SPECS",
    "METHOD_LABELS",
    "DEFAULT_MODELS",
    "BenchConfig",
    "run_benchmark",
    "format_table",
    "peak_tensor_bytes",
    "saved_tensor_bytes",
    "paired_ratio",
    "main",
]

BenchDevice = Literal["auto", "cpu", "cuda"]
Clock = Literal["wall", "cpu"]
_T = TypeVar("_T")

DEFAULT_MODELS: tuple[str, ...] = ("vit_small_patch16_224", "vit_base_patch16_224")

# Benchmark rows -> MethodConfig data (None: built here, see _build_floor).
# KARST: N=2, m=8, r=8; LoRA and LoKr r=8; all on the same targets (qkv, proj, fc1, fc2).
METHOD_SPECS: dict[str, dict[str, Any] | None] = {
    "karst": {"name": "karst", "adapter": {"n_kernels": 2, "stack_dim": 8, "rank": 8, "rescale": "channel"}},
    "karst-keep-output": {"name": "karst", "adapter": {"n_kernels": 2, "stack_dim": 8, "rank": 8,
                                                       "recompute_output": []}},
    "karst-norescale": {"name": "karst", "adapter": {"n_kernels": 2, "stack_dim": 8, "rank": 8, "rescale": "none"}},
    "lora": {"name": "lora", "adapter": {"rank": 8}},
    "lokr": {"name": "lokr", "adapter": {"rank": 8}},
    "full": {"name": "full"},
    "floor": None,
    "probe": {"name": "probe"},
}
# How a row is named in the table, where that differs from its key (the ``--methods`` value).
METHOD_LABELS: dict[str, str] = {"floor": "floor (norms + head)"}
_REFERENCE = "lora"
_LOKR = "lokr"


# -- memory accounting ------------------------------------------------------------------------


def _storages(tensors: Any) -> list[torch.UntypedStorage]:
    out: list[torch.UntypedStorage] = []
    tree_map_only(torch.Tensor, lambda t: out.append(t.untyped_storage()), tensors)
    return out


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages and their peak (any device, op by op).

    Every storage produced by an op is counted once until it is freed (a weak reference whose
    callback fires when PyTorch releases the storage). Tensors that existed before entering are
    registered with :meth:`track`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def _release(self, nbytes: int, _ref: weakref.ref) -> None:
        self.current -= nbytes

    def track(self, tensors: Any) -> None:
        for st in _storages(tensors):
            if st.device.type == "meta" or st in self._seen:
                continue
            nbytes = st.nbytes()
            self._seen[st] = weakref.ref(st, lambda ref, n=nbytes: self._release(n, ref))
            self.current += nbytes
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(out)
        return out


def _persistent_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def _unique_bytes(tensors: Sequence[torch.Tensor]) -> int:
    seen: dict[tuple[str, int], int] = {}
    for st in _storages(list(tensors)):
        seen[(str(st.device), st.data_ptr())] = st.nbytes()
    return sum(seen.values())


def peak_tensor_bytes(step: Callable[[], Any], persistent: Sequence[torch.Tensor]) -> int:
    """Peak bytes of live tensors while ``step()`` runs, counting ``persistent`` tensors as live.

    Tensors created before the call and not listed in ``persistent`` are invisible, so list the
    model's parameters, buffers, optimiser state and inputs.
    """
    tracker = _LiveTensorBytes()
    tracker.track(list(persistent))
    with tracker:
        step()
    return tracker.peak


def saved_tensor_bytes(forward: Callable[[], Any], exclude: Sequence[torch.Tensor] = ()) -> tuple[int, Any]:
    """Bytes autograd saves for backward while ``forward()`` runs (unique storages, ``exclude``d ones
    such as parameters not counted). Returns (bytes, forward's result); keep the result alive until
    the backward pass, or the graph is freed."""
    skip = {st.data_ptr() for st in _storages(list(exclude))}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = forward()
    return sum(saved.values()), result


# -- building the cases -----------------------------------------------------------------------


def _load_model(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    if name in {b["name"] for b in list_backbones() if b.get("embedded")}:  # karst-vit-micro
        return load_backbone(name, num_classes, pretrained=False).model
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        raise ConfigError(
            f"model {name!r} is not a timm model or embedded backbone ({err}); try one of "
            f"{', '.join(DEFAULT_MODELS)} or karst-vit-micro."
        ) from None


def _build_floor(model: nn.Module) -> nn.Module:
    """Only the normalisation layers' affine parameters and the classifier head train: backward still
    runs through the whole frozen backbone, so this is the floor any adapter's step time and memory
    can reach (every adapter row trains the same head)."""
    head = head_parameter_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in head)
    found = False
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)) or "Norm" in type(module).__name__:
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
                found = True
    if not found:
        raise ConfigError(f"{type(model).__name__} has no normalisation layers; drop 'floor' from --methods.")
    return model


def _input_size(model: nn.Module) -> tuple[int, ...]:
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img is not None:
        return (3, *img)
    return tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))


@dataclass
class _Case:
    method: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    merged: Callable[[], nn.Module]
    trainable: int
    total: int
    step_ms: list[float] = field(default_factory=list)  # on the chosen clock
    wall_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)


def _build_case(method: str, base: nn.Module, device: torch.device) -> _Case:
    model = copy.deepcopy(base)
    spec = METHOD_SPECS[method]
    if spec is None:
        module = _build_floor(model)
        merged: Callable[[], nn.Module] = lambda: copy.deepcopy(module)  # noqa: E731
    else:
        built = build_method(model, MethodConfig.from_dict(spec))
        module, merged = built.model, built.merged_model
    module.to(device)
    optimizer = create_optimizer_v2(module, opt="adamw", lr=1e-4, weight_decay=0.05)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return _Case(method, module, optimizer, merged, trainable, total)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(case: _Case, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    with autocast(device):
        loss = F.cross_entropy(case.model(x), y)
    loss.backward()
    case.optimizer.step()
    case.optimizer.zero_grad(set_to_none=True)


def _measure_memory(case: _Case, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[int, int]:
    """(peak bytes of one training step, bytes saved for backward)."""
    model, optimizer = case.model, case.optimizer
    params = list(model.parameters())
    saved = 0

    def step() -> None:
        nonlocal saved
        with autocast(device):
            saved, logits = saved_tensor_bytes(lambda: model(x), exclude=params)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    persistent = _persistent_tensors(model, optimizer) + [x, y]
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before + _unique_bytes(persistent)
    else:
        peak = peak_tensor_bytes(step, persistent)
    return peak, saved


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratio(values: Sequence[float], reference: Sequence[float]) -> float:
    """Median over rounds of values[i] / reference[i].

    Both were measured in the same round, moments apart, so a slow-down of the shared machine that
    lasts a round cancels out; a ratio of medians would let it through.
    """
    return statistics.median(a / b for a, b in zip(values, reference, strict=True))


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig(Settings):
    """What :func:`run_benchmark` measures and how; each field with a flag is a ``karst bench`` flag."""

    models: tuple[str, ...] = setting(DEFAULT_MODELS, "timm names (random weights: speed and memory do not "
                                      "depend on them) or karst-vit-micro", flag="--models", minimum=1)
    methods: tuple[str, ...] = setting(tuple(METHOD_SPECS), "rows to measure, all by default: "
                                       + ", ".join(METHOD_SPECS), flag="--methods", minimum=1)
    device: BenchDevice = setting("auto", "CUDA runs under bf16 autocast, as training does", flag="--device")
    batch_size: int = setting(4, "images per step (224×224, or the model's input size)", flag="--batch-size",
                              minimum=1)
    steps: int = setting(8, "measured steps per method, interleaved round-robin", flag="--steps", minimum=1)
    warmup: int = setting(3, "unmeasured steps per method before the measured ones", flag="--warmup", minimum=0)
    num_classes: int = setting(10, "classifier size", flag="--num-classes", minimum=1)
    threads: int | None = setting(None, "torch intra-op threads, process-wide (1 is steadiest on a shared CPU); "
                                  "unset: torch's default", flag="--threads", minimum=1)
    clock: Clock = setting("wall", "wall: perf_counter; cpu: this process's CPU time (CPU device only), which "
                           "excludes waiting for a core, so is steadier on a shared CPU", flag="--clock")
    memory: bool = setting(True, "the memory step: peak memory and bytes saved for backward, from one extra "
                           "untimed step per method", flag="--no-memory")
    inference: bool = setting(True, "merged-inference timing: each merged model against the unadapted one",
                              flag="--no-inference")
    seed: int = setting(0, "seeds the backbone's random weights and the random batch")
    # Extra keyword arguments for timm.create_model (tiny test configs); not a flag.
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def _resolve(self) -> None:
        unknown = [m for m in self.methods if m not in METHOD_SPECS]
        if unknown:
            raise ConfigError(
                f"methods {unknown} are not benchmarkable; choose from {', '.join(METHOD_SPECS)}.", field="methods"
            )
        if self.device != "auto":  # "auto" is checked once resolved, in run_benchmark
            _check_clock(self.clock, torch.device(self.device))


def _check_clock(clock: str, dev: torch.device) -> None:
    if clock == "cpu" and dev.type != "cpu":
        raise ConfigError(
            f"clock={clock!r} is not available on {dev}; use 'wall' (or 'cpu' on the CPU).", field="clock"
        )


# -- the benchmark ------------------------------------------------------------------------------


def _round_robin(items: list[_T], rounds: int) -> Iterator[tuple[int, list[_T]]]:
    """(round, order) per round: every item once, starting at an offset that moves by one each round."""
    for i in range(rounds):
        k = i % len(items)
        yield i, items[k:] + items[:k]


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) of ``fn()``, the device synchronised before and after."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return 1e3 * (time.perf_counter() - t0), 1e3 * (time.process_time() - c0)


class _ModelBench:
    """Every method on one model: copies of one backbone, each trained on the same random batch."""

    def __init__(self, config: BenchConfig, model_name: str, dev: torch.device, say: Callable[[str], None]):
        self.config, self.model_name, self.dev, self.say = config, model_name, dev, say
        torch.manual_seed(config.seed)
        self.base = _load_model(model_name, config.num_classes, config.model_kwargs).eval()
        gen = torch.Generator().manual_seed(config.seed)
        self.x = torch.randn(config.batch_size, *_input_size(self.base), generator=gen).to(dev)
        self.y = torch.randint(0, config.num_classes, (config.batch_size,), generator=gen).to(dev)
        self.cases = [_build_case(m, self.base, dev) for m in config.methods]
        self.memory: dict[str, tuple[int, int]] = {}  # method -> (peak bytes, bytes saved for backward)
        self.merge_err: dict[str, float] = {}  # method -> max |adapted(x) - merged(x)|
        self.base_infer_ms: list[float] = []

    def run(self) -> list[dict[str, Any]]:
        self.time_training()
        if self.config.memory:
            self.measure_memory()
        if self.config.inference:
            self.time_inference()
        return [self.row(case) for case in self.cases]

    def time_training(self) -> None:
        """Round-robin: every method does one step per round, starting at a rotating offset."""
        cfg, rounds = self.config, self.config.warmup + self.config.steps
        for case in self.cases:
            case.model.train()
        for i, order in _round_robin(self.cases, rounds):
            for case in order:
                wall, cpu = _timed(functools.partial(_train_step, case, self.x, self.y, self.dev), self.dev)
                if i >= cfg.warmup:
                    case.wall_ms.append(wall)
                    case.step_ms.append(wall if cfg.clock == "wall" else cpu)
            self.say(f"{self.model_name}: round {i + 1}/{rounds}")

    def measure_memory(self) -> None:
        for case in self.cases:
            self.memory[case.method] = _measure_memory(case, self.x, self.y, self.dev)
        self.say(f"{self.model_name}: memory measured")

    def _merge(self) -> dict[str, nn.Module]:
        """Each method's merged model, checked against the adapted one, whose training copy is then freed."""
        merged: dict[str, nn.Module] = {}
        with torch.no_grad(), autocast(self.dev):
            for case in self.cases:
                case.model.eval()
                merged[case.method] = case.merged().to(self.dev).eval()
                diff = case.model(self.x).float() - merged[case.method](self.x).float()
                self.merge_err[case.method] = diff.abs().max().item()
                case.model = case.optimizer = None  # free the training copy before timing
        return merged

    def time_inference(self) -> None:
        """Times each merged model and the unadapted backbone, round-robin as in training."""
        cfg = self.config
        self.base.to(self.dev)
        merged = self._merge()
        # A fresh copy, made like the merged ones, so both are timed under the same
        # conditions (allocation age and placement) as the models they are compared with.
        runners = [(self.base_infer_ms, copy.deepcopy(self.base))]
        runners += [(case.infer_ms, merged[case.method]) for case in self.cases]
        with torch.no_grad(), autocast(self.dev):
            for i, order in _round_robin(runners, cfg.warmup + cfg.steps):
                for times, module in order:
                    wall, cpu = _timed(functools.partial(module, self.x), self.dev)
                    if i >= cfg.warmup:
                        times.append(wall if cfg.clock == "wall" else cpu)
        self.say(f"{self.model_name}: inference timed")

    def row(self, case: _Case) -> dict[str, Any]:
        """The result row of ``case``; ratios to LoRA (LoKr) are None without a LoRA (LoKr) row."""
        cfg, dev, base_ms = self.config, self.dev, self.base_infer_ms
        by_method = {c.method: c for c in self.cases}
        ref, lokr = by_method.get(_REFERENCE), by_method.get(_LOKR)
        ref_mem = self.memory.get(_REFERENCE, (None,))[0]
        peak, saved = self.memory.get(case.method, (None, None))
        kind = ("cuda max_memory_allocated (method alone)" if dev.type == "cuda"
                else "peak live tensor bytes (dispatch tracker)")
        return {
            "model": self.model_name,
            "method": case.method,
            "trainable_params": case.trainable,
            "total_params": case.total,
            "ms_step": _median(case.step_ms),
            "ms_step_vs_lora": paired_ratio(case.step_ms, ref.step_ms) if ref else None,
            "ms_step_vs_lokr": paired_ratio(case.step_ms, lokr.step_ms) if lokr else None,
            "peak_mb": peak / 2**20 if peak is not None else None,
            "peak_vs_lora": peak / ref_mem if peak is not None and ref_mem else None,
            "saved_mb": saved / 2**20 if saved is not None else None,
            "infer_ms": _median(case.infer_ms) if case.infer_ms else None,
            "infer_vs_base": paired_ratio(case.infer_ms, base_ms) if case.infer_ms and base_ms else None,
            "base_infer_ms": _median(base_ms) if base_ms else None,
            "merge_max_abs_err": self.merge_err.get(case.method),
            "step_ms_all": [round(v, 2) for v in case.step_ms],
            "wall_ms_all": [round(v, 2) for v in case.wall_ms],
            "clock": cfg.clock,
            "device": str(dev),
            "memory_kind": kind if cfg.memory else None,
            "batch_size": cfg.batch_size,
            "steps": cfg.steps,
            "warmup": cfg.warmup,
        }


def run_benchmark(config: BenchConfig, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Benchmark ``config.methods`` on each of ``config.models``; one dict per (model, method).

    Args:
        config: what to measure and how (see :class:`BenchConfig`).
        log: called with progress lines.

    Returns:
        Rows with ``model, method, trainable_params, total_params, ms_step, ms_step_vs_lora,
        ms_step_vs_lokr, peak_mb, peak_vs_lora, saved_mb, infer_ms, infer_vs_base, base_infer_ms,
        merge_max_abs_err, step_ms_all, wall_ms_all, clock, device, memory_kind, batch_size, steps,
        warmup``; ratios to LoRA (LoKr) are None without a LoRA (LoKr) row.
    """
    dev = resolve_device(config.device)
    _check_clock(config.clock, dev)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    say = log or (lambda _msg: None)
    rows: list[dict[str, Any]] = []
    for model_name in config.models:
        # Built one at a time (and dropped after its rows), so only one model's copies are alive.
        rows += _ModelBench(config, model_name, dev, say).run()
    return rows


# -- output -----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per model (method, params, ms/step, × LoRA, × LoKr, peak MB, × LoRA, ...)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        first = group[0]
        prec = "bf16 autocast" if first["device"].startswith("cuda") else "fp32"
        out.append(
            f"### {model} — {first['device']}, {prec}, batch {first['batch_size']}, "
            f"median of {first['steps']} steps after {first['warmup']} warm-up"
        )
        if first["memory_kind"]:
            out.append(f"Peak memory: {first['memory_kind']}.")
        if first.get("clock") == "cpu":
            out.append(
                "Times: CPU time of the benchmark process (excludes waiting for a core); wall times in the JSON."
            )
        if first["base_infer_ms"] is not None:
            out.append(f"Unadapted model inference: {first['base_infer_ms']:.1f} ms/batch.")
        out.append("")
        out.append(
            "| method | trainable params | ms/step | × LoRA | × LoKr | peak memory (MB) | × LoRA"
            " | saved for backward (MB) | merged inference ms | × unadapted |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in group:
            out.append(
                f"| {METHOD_LABELS.get(r['method'], r['method'])} | {r['trainable_params']:,} "
                f"| {_fmt(r['ms_step'], '.1f')} | {_fmt(r['ms_step_vs_lora'], '.2f')} "
                f"| {_fmt(r.get('ms_step_vs_lokr'), '.2f')} | {_fmt(r['peak_mb'], '.1f')} "
                f"| {_fmt(r['peak_vs_lora'], '.3f')} | {_fmt(r['saved_mb'], '.1f')} "
                f"| {_fmt(r['infer_ms'], '.1f')} | {_fmt(r['infer_vs_base'], '.2f')} |"
            )
        out.append("")
    return "\n".join(out)


def _environment() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if names:
            cpu = f"{names[0]} ({len(names)} logical cores visible)"
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{_dt.date.today().isoformat()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU {cpu}{gpu}, Python {platform.python_version()}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="karst bench", description=__doc__.split("\n\n")[0])
    add_setting_flags(parser, field_specs(BenchConfig), defaults=True)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON ('-' for stdout)")
    parser.add_argument("--out", metavar="FILE.md", help="also write the table (with environment) to a file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def _config(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(**flag_values(args, field_specs(BenchConfig)))


def _write_files(args: argparse.Namespace, command: str, rows: list[dict[str, Any]]) -> None:
    """``--out`` (the table after the environment and command) and ``--json FILE``, all rows so far."""
    if args.out:
        text = f"{_environment()}\n\nCommand: `{command.strip()}`\n\n{format_table(rows)}"
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``karst bench`` / ``benchmarks/bench_speed.py``: print the table; exit 2 on bad settings."""
    args = _parser().parse_args(argv)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    command = "karst bench " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict[str, Any]] = []
    try:
        config = _config(args)
        # One model at a time, writing the files after each, so a long run leaves partial results.
        for model_name in config.models:
            new_rows = run_benchmark(dataclasses.replace(config, models=(model_name,)), log)
            rows += new_rows
            print(format_table(new_rows), flush=True)
            _write_files(args, command, rows)
    except KarstError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(rows, indent=1))
    return 0
