"""The ``karst`` command (also ``python -m karst``).

Subcommands: list, train, resume, runs, cancel, delete, export, predict, bench, worker, suite, sweep. Errors the user
can fix (any ``KarstError``, bad flags) print one line on stderr and exit with status 2; a run
that ends other than ``completed`` exits with 1, and so does an internal error (a bug): one line
naming the log file with its traceback (``karst --debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .callbacks import Callback, Progress
from .cluster import add_ray_flags, prepare_ray, ray_address, ray_options
from .config import TrainConfig, config_from_values, field_specs
from .data import list_datasets
from .errors import ConfigError, KarstError
from .flags import add_setting_flags, flag_values
from .jobs import WORKER_IDLE_EXIT_S, resume_foreground, run_foreground, run_worker
from .ray_worker import serve as serve_on_ray
from .recipes import RECIPES, apply_recipe
from .runs import UNREADABLE, RunStore
from .suites import add_parser as add_suite_parser
from .suites import cmd_suite
from .sweep import SweepSpec, load_space, render_markdown, run_sweep

__all__ = ["main", "build_parser"]

def _default_runs_dir() -> str:
    return os.environ.get("KARST_RUNS_DIR", "runs")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too; keep it short)
        self.exit(2, f"karst: error: {message} (see `{self.prog} --help`)\n")


def _add_train_parser(sub: Any) -> None:
    """`karst train`: one flag per declared setting, plus the config file, recipe and --set layers."""
    p = sub.add_parser("train", help="fine-tune (defaults: the embedded backbone and task)")
    add_setting_flags(p, field_specs())
    p.add_argument("--config", type=Path, help="JSON file with TrainConfig fields (as in a run's config.json); "
                   "flags override it")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a named set of settings under the config file and "
                   "flags: 'paper' = the paper's VTAB-1K recipe (sources in karst/recipes.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="any setting by its path, e.g. --set method.adapter.init_std_C=0.5 (repeatable)")
    p.add_argument("--runs-dir", default=_default_runs_dir())
    p.add_argument("--json", action="store_true", help="print the summary as JSON (the last stdout line)")
    add_ray_flags(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``karst`` command."""
    parser = _Parser(prog="karst", description="KARST Studio: Kronecker adapters for timm ViTs.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error instead of saving it to a log file")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="embedded and known backbones and datasets")
    p.add_argument("--json", action="store_true")

    _add_train_parser(sub)
    _add_sweep_parser(sub)

    p = sub.add_parser("resume", help="continue a cancelled or interrupted run from its last epoch")
    p.add_argument("run")
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
    p.add_argument("--idle-exit", type=float, default=WORKER_IDLE_EXIT_S, metavar="SECONDS",
                   help="exit after this long with nothing queued and no app attached "
                   f"(default {WORKER_IDLE_EXIT_S:g}; inf: never)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all CPUs but one)")
    add_ray_flags(p, "the queued runs")

    add_suite_parser(sub)  # karst suite vtab1k|fewshot|make-demo|resume|show|list
    return parser


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path} does not exist; give a JSON file of TrainConfig fields.") from None
    except OSError as e:
        raise ConfigError(f"--config {path} cannot be read ({e.strerror}); give a readable JSON file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path} is not valid JSON ({e}); fix the file or leave --config out.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a JSON object of TrainConfig fields.")
    return data


def _add_sweep_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="search settings with Ray Tune: choose on validation accuracy, retrain the "
                       "best on train+val, test it")
    p.add_argument("--space", type=Path, required=True, metavar="FILE",
                   help="JSON or YAML file: setting -> list (grid) or {choice|uniform|loguniform: [...]}; "
                   "short names lr, N, m, r, rescale, method, task, seed (see karst/sweep.py)")
    p.add_argument("--samples", type=int, default=1, help="trials per grid point; random choices are drawn anew")
    p.add_argument("--asha", action="store_true", help="stop poor trials after an epoch (Ray Tune's ASHA scheduler)")
    p.add_argument("--asha-grace", type=int, default=1, metavar="EPOCHS", help="epochs before ASHA may stop a trial")
    p.add_argument("--sweep-id", help="name of the sweep (default: a time stamp)")
    add_setting_flags(p, field_specs())  # the settings every trial shares, as for `karst train`
    p.add_argument("--config", type=Path, help="JSON file with TrainConfig fields; flags override it")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a named set of settings under the config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="any setting by its path (repeatable)")
    p.add_argument("--runs-dir", default=_default_runs_dir())
    p.add_argument("--json", action="store_true", help="print sweep.json instead of the table")
    add_ray_flags(p, "the trials (default: local, a Ray instance on this machine)")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    base = _read_config_file(args.config) if args.config is not None else {}
    if args.recipe:
        base = apply_recipe(args.recipe, base)
    values = flag_values(args, field_specs())
    for item in args.overrides:
        path, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} needs the form PATH=VALUE, e.g. --set method.adapter.rank=4.")
        values[path.strip()] = raw
    return config_from_values(values, base)


class _ProgressBar(Callback):
    """Trainer callback: tqdm's bar on a terminal; phase and epoch lines either way."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.bar: tqdm | None = None

    def _write(self, text: str) -> None:
        tqdm.write(text, file=self.stream)

    def on_phase(self, message: str) -> None:
        self._write(message + " ...")

    def on_start(self, info: dict[str, Any]) -> None:
        p = info["params"]
        self._write(f"training on {info['device']}: {p['trainable']:,} trainable of {p['total']:,} parameters, "
                    f"{info['train_size']} images, {info['total_steps']} steps")
        # disable=None: no bar when stderr is not a terminal (logs, CI), where it would only add noise.
        self.bar = tqdm(total=info["total_steps"], unit="step", file=self.stream, disable=None, dynamic_ncols=True)

    def on_step(self, record: dict[str, Any], progress: Progress) -> None:
        if self.bar is not None:
            self.bar.set_postfix(epoch=f"{progress.epoch + 1}/{progress.epochs}", loss=f"{record['loss']:.4f}",
                                 lr=f"{record['lr']:.2e}", refresh=False)
            self.bar.update(1)

    def on_epoch(self, record: dict[str, Any], progress: Progress) -> None:
        evals = [f"{split} acc {record[f'{split}_acc']:.3f}" for split in ("val", "test")
                 if record.get(f"{split}_acc") is not None]
        self._write(f"epoch {record['epoch']}/{progress.epochs}: train loss {record['train_loss']:.4f} "
                    f"acc {record['train_acc']:.3f}, {', '.join(evals) or 'not evaluated'} "
                    f"({record['elapsed_s']:.1f}s)")

    def on_end(self, summary: dict[str, Any], result: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        message = summary.get("message") or ""
        if summary["status"] != "failed":  # main() prints a failure itself, once
            self._write(summary["status"] + (f": {message}" if message != summary["status"] else ""))


def _cmd_list(args: argparse.Namespace) -> int:
    from .backbones import list_backbones  # local: timm takes seconds to import; `karst --help` needs none of it

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
    config = _train_config(args)
    address = ray_address(args.ray)
    if address is not None:
        prepare_ray(address)  # an unreachable cluster: one line, exit 2, before any run folder exists
        from .ray_backend import run_on_ray  # local: Ray is an optional extra, imported only with --ray

        summary = run_on_ray(config, address, args.runs_dir, ray_options(args), callbacks=[_ProgressBar()])
        return _report(summary, args)
    return _report(run_foreground(config, args.runs_dir, callbacks=[_ProgressBar()]), args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    base = _train_config(args)
    spec = SweepSpec(load_space(args.space, base), samples=args.samples, asha=args.asha, grace_epochs=args.asha_grace)
    address = ray_address(args.ray) or "local"  # Ray Tune needs Ray: without --ray, a local instance
    prepare_ray(address)
    doc = run_sweep(base, spec, address, args.runs_dir, ray_options(args), args.sweep_id)
    print(json.dumps(doc) if args.json else render_markdown(doc))
    return 0 if doc["status"] == "completed" else 1


def _cmd_resume(args: argparse.Namespace) -> int:
    return _report(resume_foreground(args.run, args.runs_dir, callbacks=[_ProgressBar()]), args)


def _report(summary: dict[str, Any], args: argparse.Namespace) -> int:
    """Print a finished run's summary; the exit status: 0 if it completed, else 1."""
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
        if r["status"]["status"] == UNREADABLE:
            print(f"{r['run_id']:38} {UNREADABLE:11} {r['status']['message']}")
            continue
        print(f"{r['run_id']:38} {r['status']['status']:11} {num(s, 'val_acc', '.3f'):>6} "
              f"{num(s, 'test_acc', '.3f'):>6} {num(s, 'trainable_params', ','):>10} {num(s, 'seconds', '.1f'):>7}")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    status = RunStore(args.runs_dir).request_cancel(args.run)
    print(f"{args.run}: {status['status']}" + (" (cancel requested)" if status["status"] == "running" else ""))
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    RunStore(args.runs_dir).delete(args.run)
    print(f"deleted {args.run}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run  # local: timm takes seconds to import; `karst --help` needs none of it

    files = export_run(args.run, args.out, runs_dir=args.runs_dir)
    for path in files.values():
        print(path)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .export import Predictor  # local: timm takes seconds to import; `karst --help` needs none of it

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
    address = ray_address(args.ray)
    if address is not None:
        prepare_ray(address)
        return serve_on_ray(args.runs_dir, address, ray_options(args), idle_exit_s=args.idle_exit)
    code = run_worker(args.runs_dir, idle_exit_s=args.idle_exit, threads=args.threads)
    # Everything is written and every lock released: leave without the interpreter's teardown of
    # torch & co., which takes seconds on a busy machine while the memory stays held.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_COMMANDS = {
    "list": _cmd_list,
    "train": _cmd_train,
    "resume": _cmd_resume,
    "runs": _cmd_runs,
    "cancel": _cmd_cancel,
    "delete": _cmd_delete,
    "export": _cmd_export,
    "predict": _cmd_predict,
    "worker": _cmd_worker,
    "suite": cmd_suite,
    "sweep": _cmd_sweep,
}


def _write_error_log(runs_dir: str | None) -> str:
    """Save the current exception's traceback; returns the file: ``<runs-dir>/.karst-cli.log``
    (the latest internal error only) when the runs directory exists, else a fresh temp file."""
    text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} karst {' '.join(sys.argv[1:])[:2000]}\n{traceback.format_exc()}"
    try:
        if runs_dir and Path(runs_dir).is_dir():
            path = Path(runs_dir) / ".karst-cli.log"
            path.write_text(text, encoding="utf-8")
            return str(path)
    except OSError:  # a read-only or odd runs directory: fall back to a temp file
        pass
    fd, name = tempfile.mkstemp(prefix="karst-cli-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``karst``; returns the exit status.

    A ``KarstError`` (bad input) prints one line and returns 2. Anything else is a bug: one line
    naming the log file that holds its traceback, status 1; ``karst --debug ...`` raises it instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"]
    args = None
    try:
        if argv[debug:][:1] == ["bench"]:
            # The benchmark owns its flags; hand them over untouched.
            from .bench import main as bench_main  # local: timm takes seconds to import

            return int(bench_main(argv[debug + 1:]) or 0)
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except KarstError as e:
        print(f"karst: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if debug:
            raise
        log = _write_error_log(getattr(args, "runs_dir", None) or _default_runs_dir())
        reason = (str(e).splitlines() or [""])[0][:200]
        print(f"karst: internal error ({type(e).__name__}: {reason}); this is a bug, its traceback is in {log} "
              "(or run `karst --debug ...` to see it here).", file=sys.stderr)
        return 1
