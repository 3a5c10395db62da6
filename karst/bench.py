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
import datetime as _dt
import json
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

from .device import autocast, resolve_device
from .errors import ConfigError, KarstError
from .config import MethodConfig
from .methods import build_method
from .model import head_parameter_names

__all__ = [
    "METHOD_SPECS",
    "METHOD_LABELS",
    "DEFAULT_MODELS",
    "run_benchmark",
    "format_table",
    "peak_tensor_bytes",
    "saved_tensor_bytes",
    "paired_ratio",
    "main",
]

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
    try:  # the embedded backbones (karst-vit-micro)
        from .backbones import list_backbones, load_backbone

        embedded = {b["name"] for b in list_backbones() if b.get("embedded")}
    except ImportError:
        embedded = set()
    if name in embedded:
        return load_backbone(name, num_classes, pretrained=False).model
    import timm

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
    from timm.optim import create_optimizer_v2

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


# -- the benchmark ------------------------------------------------------------------------------


def run_benchmark(
    model_names: Sequence[str] = DEFAULT_MODELS,
    methods: Sequence[str] = tuple(METHOD_SPECS),
    device: str = "auto",
    batch_size: int = 4,
    steps: int = 8,
    warmup: int = 3,
    *,
    num_classes: int = 10,
    model_kwargs: dict[str, Any] | None = None,
    memory: bool = True,
    inference: bool = True,
    seed: int = 0,
    clock: Literal["wall", "cpu"] = "wall",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark ``methods`` on each model; one dict per (model, method).

    Args:
        model_names: timm model names (built with ``pretrained=False``) or embedded backbones.
        methods: keys of :data:`METHOD_SPECS`.
        device: ``auto``, ``cpu`` or ``cuda`` (CUDA runs under bf16 autocast, as training does).
        batch_size: images per step (224×224, or the model's input size).
        steps: measured steps per method (after ``warmup``), interleaved round-robin.
        warmup: unmeasured steps per method.
        num_classes: classifier size.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (tiny test configs).
        memory: also measure peak memory and saved activations (one extra untimed step each).
        inference: also time the merged model against the unadapted one.
        clock: ``wall`` (perf_counter) or ``cpu`` (this process's CPU time, CPU device only): on a
            shared, oversubscribed machine the CPU time of a one-thread run excludes the time spent
            waiting for a core, so it is far steadier than wall time.
        log: called with progress lines.

    Returns:
        Rows with ``model, method, trainable_params, total_params, ms_step, ms_step_vs_lora,
        ms_step_vs_lokr, peak_mb, peak_vs_lora, saved_mb, infer_ms, infer_vs_base, base_infer_ms,
        merge_max_abs_err, device, memory_kind, batch_size, steps, warmup``; ratios to LoRA (LoKr)
        are None without a LoRA (LoKr) row.
    """
    unknown = [m for m in methods if m not in METHOD_SPECS]
    if unknown or not methods:
        raise ConfigError(f"methods {unknown or '[]'} are not benchmarkable; choose from {', '.join(METHOD_SPECS)}.")
    for name, value in (("batch_size", batch_size), ("steps", steps)):
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1.")
    if warmup < 0:
        raise ConfigError(f"warmup={warmup} must be >= 0.")
    dev = resolve_device(device)
    if clock not in ("wall", "cpu") or (clock == "cpu" and dev.type != "cpu"):
        raise ConfigError(f"clock={clock!r} is not available on {dev}; use 'wall' (or 'cpu' on the CPU).")
    say = log or (lambda _msg: None)
    rows: list[dict[str, Any]] = []
    for model_name in model_names:
        torch.manual_seed(seed)
        base = _load_model(model_name, num_classes, model_kwargs or {}).eval()
        size = _input_size(base)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, *size, generator=gen).to(dev)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(dev)
        cases = [_build_case(m, base, dev) for m in methods]
        for case in cases:
            case.model.train()

        # Round-robin: every method does one step per round, starting at a rotating offset.
        for i in range(warmup + steps):
            order = cases[i % len(cases) :] + cases[: i % len(cases)]
            for case in order:
                _sync(dev)
                t0, c0 = time.perf_counter(), time.process_time()
                _train_step(case, x, y, dev)
                _sync(dev)
                if i >= warmup:
                    wall = 1e3 * (time.perf_counter() - t0)
                    case.wall_ms.append(wall)
                    case.step_ms.append(wall if clock == "wall" else 1e3 * (time.process_time() - c0))
            say(f"{model_name}: round {i + 1}/{warmup + steps}")

        mem: dict[str, tuple[int, int]] = {}
        if memory:
            for case in cases:
                mem[case.method] = _measure_memory(case, x, y, dev)
            say(f"{model_name}: memory measured")

        base_ms: list[float] = []
        merge_err: dict[str, float] = {}
        if inference:
            base.to(dev)
            merged_models: dict[str, nn.Module] = {}
            with torch.no_grad(), autocast(dev):
                for case in cases:
                    case.model.eval()
                    merged = case.merged().to(dev).eval()
                    merge_err[case.method] = (case.model(x).float() - merged(x).float()).abs().max().item()
                    merged_models[case.method] = merged
                    case.model = case.optimizer = None  # free the training copy before timing
                # A fresh copy, made like the merged ones, so both are timed under the same
                # conditions (allocation age and placement) as the models they are compared with.
                runners = [("unadapted", copy.deepcopy(base))] + list(merged_models.items())
                for i in range(warmup + steps):
                    for name, module in runners[i % len(runners) :] + runners[: i % len(runners)]:
                        _sync(dev)
                        t0, c0 = time.perf_counter(), time.process_time()
                        module(x)
                        _sync(dev)
                        if i >= warmup:
                            clock_now, start = (
                                (time.perf_counter(), t0) if clock == "wall" else (time.process_time(), c0)
                            )
                            elapsed = 1e3 * (clock_now - start)
                            if name == "unadapted":
                                base_ms.append(elapsed)
                            else:
                                next(c for c in cases if c.method == name).infer_ms.append(elapsed)
            say(f"{model_name}: inference timed")

        ref = next((c for c in cases if c.method == _REFERENCE), None)
        lokr = next((c for c in cases if c.method == _LOKR), None)
        ref_mem = mem.get(_REFERENCE, (None,))[0]
        base_infer = _median(base_ms) if base_ms else None
        kind = (
            "cuda max_memory_allocated (method alone)"
            if dev.type == "cuda"
            else "peak live tensor bytes (dispatch tracker)"
        )
        for case in cases:
            ms = _median(case.step_ms)
            peak, saved = mem.get(case.method, (None, None))
            infer = _median(case.infer_ms) if case.infer_ms else None
            infer_ratio = paired_ratio(case.infer_ms, base_ms) if case.infer_ms and base_ms else None
            rows.append(
                {
                    "model": model_name,
                    "method": case.method,
                    "trainable_params": case.trainable,
                    "total_params": case.total,
                    "ms_step": ms,
                    "ms_step_vs_lora": paired_ratio(case.step_ms, ref.step_ms) if ref else None,
                    "ms_step_vs_lokr": paired_ratio(case.step_ms, lokr.step_ms) if lokr else None,
                    "peak_mb": peak / 2**20 if peak is not None else None,
                    "peak_vs_lora": peak / ref_mem if peak is not None and ref_mem else None,
                    "saved_mb": saved / 2**20 if saved is not None else None,
                    "infer_ms": infer,
                    "infer_vs_base": infer_ratio,
                    "base_infer_ms": base_infer,
                    "merge_max_abs_err": merge_err.get(case.method),
                    "step_ms_all": [round(v, 2) for v in case.step_ms],
                    "wall_ms_all": [round(v, 2) for v in case.wall_ms],
                    "clock": clock,
                    "device": str(dev),
                    "memory_kind": kind if memory else None,
                    "batch_size": batch_size,
                    "steps": steps,
                    "warmup": warmup,
                }
            )
        del cases, base
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


def _split(values: Sequence[str]) -> list[str]:
    return [v for item in values for v in item.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    """``karst bench`` / ``benchmarks/bench_speed.py``: print the table; exit 2 on bad settings."""
    parser = argparse.ArgumentParser(prog="karst bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="timm names or karst-vit-micro")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_SPECS), help=", ".join(METHOD_SPECS))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per method")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (1 is steadiest on a shared CPU)"
    )
    parser.add_argument(
        "--clock", default="wall", choices=("wall", "cpu"), help="cpu: process CPU time (steadier on a shared CPU)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory step")
    parser.add_argument("--no-inference", action="store_true", help="skip merged-inference timing")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON ('-' for stdout)")
    parser.add_argument("--out", metavar="FILE.md", help="also write the table (with environment) to a file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads={args.threads} must be >= 1.", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    command = "karst bench " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict[str, Any]] = []
    try:
        # One model at a time, writing the files after each, so a long run leaves partial results.
        for model_name in _split(args.models):
            new_rows = run_benchmark(
                [model_name],
                _split(args.methods),
                device=args.device,
                batch_size=args.batch_size,
                steps=args.steps,
                warmup=args.warmup,
                num_classes=args.num_classes,
                memory=not args.no_memory,
                inference=not args.no_inference,
                clock=args.clock,
                log=log,
            )
            rows += new_rows
            print(format_table(new_rows), flush=True)
            if args.out:
                text = f"{_environment()}\n\nCommand: `{command.strip()}`\n\n{format_table(rows)}"
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(text + "\n")
            if args.json and args.json != "-":
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    except KarstError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(rows, indent=1))
    return 0
