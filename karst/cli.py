"""The ``karst`` command (also ``python -m karst``).

Subcommands: list, train, runs, cancel, delete, export, predict, bench, worker. Errors the user
can fix (any ``KarstError``, bad flags) print one line on stderr and exit with status 2; a run
that ends other than ``completed`` exits with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import TrainConfig, default_lr_text
from .errors import ConfigError, KarstError

__all__ = ["main", "build_parser"]

# `karst train` flags → TrainConfig fields. Flags left out keep the config file's or the default.
_TRAIN_FLAGS = {
    "backbone": ("--backbone", str, "embedded name, timm model name or weight file"),
    "backbone_arch": ("--backbone-arch", str, "timm architecture of a local weight file"),
    "dataset": ("--dataset", str, "embedded task, folder, zip, VTAB-1K folder or torchvision:NAME"),
    "method": ("--method", str, "karst | lora | lokr | full | probe"),
    "n_kernels": ("--kernels", int, "N, Kronecker products summed"),
    "stack_dim": ("--stack", int, "m, side of each C_i"),
    "rank": ("--rank", int, "r, rank of each A_i B_i (also LoRA/LoKr rank)"),
    "rescale": ("--rescale", str, "channel | scalar | none"),
    "epochs": ("--epochs", int, "training epochs"),
    "warmup_epochs": ("--warmup-epochs", int, "linear warm-up epochs"),
    "batch_size": ("--batch-size", int, "images per step"),
    "lr": ("--lr", float, "peak learning rate (AdamW)"),
    "weight_decay": ("--weight-decay", float, "AdamW weight decay"),
    "seed": ("--seed", int, "random seed"),
    "device": ("--device", str, "auto | cpu | cuda | mps"),
    "max_train_samples": ("--max-train-samples", int, "use at most this many training images"),
}


def _default_runs_dir() -> str:
    return os.environ.get("KARST_RUNS_DIR", "runs")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too; keep it short)
        self.exit(2, f"karst: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``karst`` command."""
    parser = _Parser(prog="karst", description="KARST Studio: Kronecker adapters for timm ViTs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="embedded and known backbones and datasets")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("train", help="fine-tune (defaults: the embedded backbone and task)")
    defaults = TrainConfig()
    for field, (flag, kind, text) in _TRAIN_FLAGS.items():
        # The learning rate's default follows --method, so TrainConfig()'s (KARST's) would mislead.
        default = default_lr_text() if field == "lr" else getattr(defaults, field)
        p.add_argument(flag, dest=field, type=kind, default=None, help=f"{text} (default {default})")
    p.add_argument("--random-init", dest="pretrained", action="store_const", const=False, default=None,
                   help="the backbone's architecture with random weights (no download)")
    p.add_argument("--config", type=Path, help="JSON file with TrainConfig fields; flags override it")
    p.add_argument("--runs-dir", default=_default_runs_dir())
    p.add_argument("--json", action="store_true", help="print the summary as JSON (the last stdout line)")

    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--runs-dir", default=_default_runs_dir())
    p.add_argument("--json", action="store_true")

    for name, text in (("cancel", "cancel a queued or running run"), ("delete", "delete a finished run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run")
        p.add_argument("--runs-dir", default=_default_runs_dir())

    p = sub.add_parser("export", help="export a run to merged.safetensors + merged.json")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("--out", type=Path, help="merged .safetensors file (default: in the run folder)")
    p.add_argument("--runs-dir", default=_default_runs_dir())

    p = sub.add_parser("predict", help="top-k classes for images")
    p.add_argument("model", help="run id, run folder or merged .safetensors file")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--runs-dir", default=_default_runs_dir())
    p.add_argument("--json", action="store_true")

    sub.add_parser("bench", help="speed/memory benchmark (options: karst bench --help)", add_help=False)

    p = sub.add_parser("worker", help="serve the run queue of a runs directory")
    p.add_argument("--runs-dir", default=_default_runs_dir())
    p.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all CPUs but one)")
    return parser


def _train_config(args: argparse.Namespace) -> TrainConfig:
    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            data = json.loads(args.config.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"--config {args.config} does not exist; give a JSON file of TrainConfig fields."
            ) from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {args.config} is not valid JSON ({e.msg} at line {e.lineno}).") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config {args.config} must hold a JSON object of TrainConfig fields.")
    for field in (*_TRAIN_FLAGS, "pretrained"):
        value = getattr(args, field)
        if value is not None:
            data[field] = value
    if "warmup_epochs" not in data and "epochs" in data:
        # Keep the default warm-up valid for short runs (it must be below the epoch count).
        data["warmup_epochs"] = min(TrainConfig.warmup_epochs, max(0, data["epochs"] - 1))
    return TrainConfig.from_dict(data)


class _ProgressBar:
    """Trainer callback drawing a one-line bar on a terminal (plain epoch lines otherwise)."""

    def __init__(self, stream: Any = None, width: int = 24):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = width
        self._last = 0.0

    def _line(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()

    def on_phase(self, message: str) -> None:
        self._line(message + " ...", final=not self.tty)

    def on_start(self, info: dict[str, Any]) -> None:
        p = info["params"]
        self._line(f"training on {info['device']}: {p['trainable']:,} trainable of {p['total']:,} parameters, "
                   f"{info['train_size']} images, {info['total_steps']} steps", final=True)

    def on_step(self, record: dict[str, Any], progress: Any) -> None:
        now = time.monotonic()
        if not self.tty or now - self._last < 0.1:
            return
        self._last = now
        done = int(self.width * progress.step / max(progress.total_steps, 1))
        eta = f"{progress.eta_s:.0f}s" if progress.eta_s is not None else "?"
        self._line(f"epoch {progress.epoch + 1}/{progress.epochs} [{'#' * done}{'.' * (self.width - done)}] "
                   f"loss {record['loss']:.4f} lr {record['lr']:.2e} {record['img_per_s']:.0f} img/s ETA {eta}")

    def on_epoch(self, record: dict[str, Any], progress: Any) -> None:
        val = record["val_acc"]
        self._line(f"epoch {record['epoch']}/{progress.epochs}: train loss {record['train_loss']:.4f} "
                   f"acc {record['train_acc']:.3f}, val acc {val if val is None else f'{val:.3f}'} "
                   f"({record['elapsed_s']:.1f}s)", final=True)

    def on_snapshot(self, *args: Any) -> None:
        pass

    def on_test(self, record: dict[str, Any]) -> None:
        pass

    def on_end(self, summary: dict[str, Any], result: Any) -> None:
        message = summary.get("message") or ""
        if summary["status"] == "failed":
            return  # main() prints the error itself, once
        self._line(summary["status"] + (f": {message}" if message != summary["status"] else ""), final=True)


def _cmd_list(args: argparse.Namespace) -> int:
    from .backbones import list_backbones
    from .data import list_datasets

    def embedded_first(rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda r: not r.get("embedded"))

    out = {"backbones": embedded_first(list_backbones()), "datasets": embedded_first(list_datasets())}
    if args.json:
        print(json.dumps(out))
        return 0
    for kind, rows in out.items():
        print(f"{kind}:")
        for r in rows:
            tag = " (embedded)" if r.get("embedded") else ""
            print(f"  {r['name']}{tag}: {r.get('description', '')}")
    return 0


_SUMMARY_KEYS = ("run_id", "status", "val_acc", "test_acc", "trainable_params", "seconds", "device")


def _cmd_train(args: argparse.Namespace) -> int:
    from .jobs import run_foreground

    config = _train_config(args)
    summary = run_foreground(config, args.runs_dir, callbacks=[_ProgressBar()])
    if args.json:
        print(json.dumps({**{k: summary.get(k) for k in _SUMMARY_KEYS}, **summary}))
    else:
        acc = ", ".join(f"{k} {summary[k]:.4f}" for k in ("val_acc", "test_acc") if summary.get(k) is not None)
        print(f"run {summary.get('run_id')}: {summary['status']} {acc} in {summary.get('seconds') or 0:.1f}s "
              f"on {summary.get('device')} ({summary.get('trainable_params') or 0:,} trainable parameters)")
    if summary["status"] == "failed" and summary.get("message"):
        print(summary["message"], file=sys.stderr)
    return 0 if summary["status"] == "completed" else 1


def _cmd_runs(args: argparse.Namespace) -> int:
    from .runs import RunStore

    runs = RunStore(args.runs_dir).list_runs()
    if args.json:
        print(json.dumps(runs))
        return 0
    if not runs:
        print(f"no runs in {args.runs_dir}")
        return 0
    print(f"{'run':38} {'status':11} {'val':>6} {'test':>6} {'trainable':>10} {'secs':>7}")
    def num(summary: dict, key: str, fmt: str) -> str:
        return format(summary[key], fmt) if summary.get(key) is not None else "-"

    for r in runs:
        s = r["summary"] or {}
        print(f"{r['run_id']:38} {r['status']['status']:11} {num(s, 'val_acc', '.3f'):>6} "
              f"{num(s, 'test_acc', '.3f'):>6} {num(s, 'trainable_params', ','):>10} {num(s, 'seconds', '.1f'):>7}")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from .runs import RunStore

    status = RunStore(args.runs_dir).request_cancel(args.run)
    print(f"{args.run}: {status['status']}" + (" (cancel requested)" if status["status"] == "running" else ""))
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from .runs import RunStore

    RunStore(args.runs_dir).delete(args.run)
    print(f"deleted {args.run}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    files = export_run(args.run, args.out, runs_dir=args.runs_dir)
    for path in files.values():
        print(path)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .export import Predictor

    predictor = Predictor.from_source(args.model, runs_dir=args.runs_dir)
    results = predictor.predict(args.images, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"image": img, "top_k": [{"class": c, "prob": p} for c, p in res]}
                          for img, res in zip(args.images, results)]))
        return 0
    for img, res in zip(args.images, results):
        print(f"{img}: " + ", ".join(f"{c} {p:.3f}" for c, p in res))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from .jobs import run_worker

    return run_worker(args.runs_dir, idle_exit_s=args.idle_exit, threads=args.threads)


_COMMANDS = {
    "list": _cmd_list,
    "train": _cmd_train,
    "runs": _cmd_runs,
    "cancel": _cmd_cancel,
    "delete": _cmd_delete,
    "export": _cmd_export,
    "predict": _cmd_predict,
    "worker": _cmd_worker,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``karst``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            # The benchmark owns its flags; hand them over untouched.
            from .bench import main as bench_main

            return int(bench_main(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except KarstError as e:
        print(f"karst: error: {e}", file=sys.stderr)
        return 2
