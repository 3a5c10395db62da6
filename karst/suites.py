"""Benchmark suites: VTAB-1K and few-shot FGVC as lists of ordinary runs plus one summary file.

``karst suite vtab1k --data-root DIR`` reads the whole root first (one DataError listing every
problem, before anything is created), builds every run's settings (a bad setting fails here too),
then trains the runs in this process one after another, as ``karst train`` does, with one progress
line for the suite. Each run is an ordinary run of the runs directory: the app lists it, and it can
be inspected, exported and compared like any other.

The suite itself is ``<suites-dir>/<suite-id>/suite.json`` (what was asked, each run's id, status
and accuracies, the results) and ``suite.md`` (the table, with the paper's published mean beside
ours), both rewritten after every run. Re-running with the same ``--suite-id``, or
``karst suite resume ID``, continues where it stopped: a completed run is never repeated, an
interrupted or cancelled one continues from its last saved epoch (``karst resume``), and one that
failed or cannot be resumed is trained again as a new run (its old id kept under ``attempts``).
The default suites dir is ``<runs-dir>/suites``, where the app's Compare view looks.

VTAB-1K runs follow the final protocol (train on ``train800val200``, test on ``test.txt``:
``train_on_val``); few-shot runs train on the shot list, validate on ``val_meta.list`` and test on
``test_meta.list``. The settings shared by all runs are a recipe (``--recipe paper``) under the
flags of ``karst train``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import suite_report
from .callbacks import Callback, Progress
from .cluster import add_ray_flags, prepare_ray, ray_address, ray_options
from .config import METHODS, TrainConfig, config_from_values, field_specs
from .data.benchmarks import (
    DEMO_SIZES,
    FEWSHOT_SEEDS,
    FEWSHOT_SHOTS,
    Protocol,
    check_fewshot_root,
    check_vtab_root,
    fewshot_train_list,
    make_demo,
    read_protocol,
)
from .errors import ConfigError, KarstError, RunError
from .flags import add_setting_flags, flag_values
from .jobs import execute_run, resume_foreground
from .recipes import RECIPES, apply_recipe
from .runs import FileLock, RunStore, atomic_write_json, default_runs_dir, read_json

__all__ = ["SuiteSpec", "SuiteFolder", "default_suites_dir", "plan_runs", "run_config", "submit_run", "continue_run",
           "run_suite", "resume_suite", "list_suites", "load_suite", "suite_markdown", "add_parser", "cmd_suite"]

# Set per run by the suite, so not flags of `karst suite`.
_PER_RUN = ("dataset", "method.name", "seed", "train_on_val")
_SAFE_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
DONE = ("completed", "diverged")  # a run in these states is a result and is never repeated


def default_suites_dir(runs_dir: str | os.PathLike | None = None) -> Path:
    """``<runs-dir>/suites``: the suites of a runs directory (the app looks there)."""
    return Path(runs_dir if runs_dir is not None else default_runs_dir()) / "suites"


@dataclass
class SuiteSpec:
    """What a suite runs: a protocol on a data root, tasks × methods × seeds (× shots), shared settings.

    ``values`` are settings by path (``{"epochs": 2, "method.adapter.rank": 4}``) laid over the
    recipe ``recipe``; each run adds its dataset, method and seed.
    """

    protocol: str
    data_root: str
    tasks: list[str] = field(default_factory=list)  # empty: every task of the protocol
    methods: list[str] = field(default_factory=lambda: ["karst"])
    seeds: list[int] = field(default_factory=lambda: [0])
    shots: list[int] = field(default_factory=list)  # few-shot only
    recipe: str = "default"
    values: dict[str, Any] = field(default_factory=dict)
    check_images: str = "header"

    def __post_init__(self) -> None:
        self.data_root = str(Path(self.data_root).expanduser().resolve())
        self.methods, self.seeds = list(dict.fromkeys(self.methods)), list(dict.fromkeys(self.seeds))
        self.shots = list(dict.fromkeys(self.shots or (FEWSHOT_SHOTS if self.protocol == "fewshot" else ())))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"--methods {' '.join(unknown)}: allowed methods are {', '.join(METHODS)}.")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ConfigError(f"--seeds {self.seeds}: give one or more integers >= 0, e.g. --seeds 0 1 2.")
        if self.protocol == "fewshot" and any(not isinstance(k, int) or k < 1 for k in self.shots):
            raise ConfigError(f"--shots {self.shots}: give images per class >= 1, e.g. --shots 1 2 4 8 16.")
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe {self.recipe!r} is unknown; choose one of {', '.join(RECIPES)}.")

    def request(self) -> dict[str, Any]:
        """The parts a user chose; two commands ask for the same suite when these are equal."""
        return asdict(self)


def plan_runs(spec: SuiteSpec, protocol: Protocol) -> list[dict[str, Any]]:
    """One entry per run. Seeds are the outer loop, so a suite stopped early has whole seeds done."""
    tasks = protocol.select(spec.tasks)
    shots: Sequence[int | None] = spec.shots if spec.protocol == "fewshot" else (None,)
    return [{"task": t.name, "group": t.group, "method": m, "seed": s, "shot": k, "run_id": None,
             "status": "pending", "attempts": []}
            for s in spec.seeds for t in tasks for k in shots for m in spec.methods]


def run_config(spec: SuiteSpec, base: dict[str, Any], run: dict[str, Any], folders: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one run: the shared settings plus its dataset, method and seed."""
    root = Path(spec.data_root)
    if spec.protocol == "vtab1k":
        dataset = str(folders[run["task"]])
    else:
        dataset = str(fewshot_train_list(root, folders[run["task"]], run["shot"], run["seed"]))
    values = {**spec.values, "dataset": dataset, "method.name": run["method"], "seed": run["seed"],
              "train_on_val": spec.protocol == "vtab1k"}
    return config_from_values(values, base)


def submit_run(store: RunStore, config: TrainConfig, on_created: Callable[[str], None],
               callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Train one run of a suite in this process, as ``karst train`` does; returns its summary.

    This is the one step another backend replaces. ``on_created(run_id)`` is called as soon as the
    run folder exists, before training, so the suite records the id of a run that gets interrupted.

    Raises:
        KarstError: settings or data the run refused (recorded in the run as ``failed``).
    """
    run_id, lock = store.create_claimed(config)
    on_created(run_id)
    return execute_run(store, run_id, lock, callbacks, raise_errors=True)


def continue_run(store: RunStore, run_id: str, callbacks: Iterable[Callback] = ()) -> dict[str, Any] | None:
    """Continue a cancelled or interrupted run of a suite from its last saved state, in this process.

    Returns:
        Its summary, or None when it cannot be resumed (then the suite trains it again as a new run).
    """
    try:
        return resume_foreground(run_id, store.root, callbacks)
    except RunError:
        return None


# ------------------------------------------------------------------------------------- the folder
class SuiteFolder:
    """``<suites-dir>/<id>/``: ``suite.json`` (atomic writes), ``suite.md`` and the lock of the process running it."""

    def __init__(self, root: Path, suite_id: str):
        if not suite_id or not set(suite_id) <= _SAFE_ID_CHARS or suite_id[0] in ".-":
            raise RunError(f"suite id {suite_id!r} is not valid; use letters, digits, '.', '_' and '-'.")
        self.id, self.path = suite_id, Path(root) / suite_id
        self.doc: dict[str, Any] = read_json(self.path / "suite.json") or {}
        self.lock = FileLock(self.path / ".lock") if self.path.is_dir() else None

    @classmethod
    def create(cls, root: Path, protocol: str, suite_id: str | None) -> SuiteFolder:
        """A new suite folder (``os.mkdir``: atomic), or the existing one of ``suite_id``."""
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            sid = suite_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{protocol}-{secrets.token_hex(2)}"
            folder = cls(root, sid)
            try:
                os.mkdir(folder.path)
            except FileExistsError:
                if suite_id:
                    return folder
                continue
            folder.lock = FileLock(folder.path / ".lock")
            return folder
        raise RunError(f"could not create a unique suite folder in {root}; try again.")  # pragma: no cover

    def claim(self) -> None:
        if self.lock is None or not self.lock.acquire():
            pid = self.doc.get("pid")
            raise RunError(f"suite {self.id} is being run by another process (pid {pid}); wait for it to end "
                           f"or stop it, then `karst suite resume {self.id}`.")

    def save(self) -> None:
        self.doc["updated_at"] = time.time()
        self.doc["results"] = suite_report.results(self.doc)
        atomic_write_json(self.path / "suite.json", self.doc)
        tmp = self.path / ".suite.md.tmp"
        tmp.write_text(suite_report.render_markdown(self.doc), encoding="utf-8")
        os.replace(tmp, self.path / "suite.md")

    def refresh(self, store: RunStore) -> None:
        """Bring each run's entry up to date from its run folder (a run may have ended after the last save)."""
        for run in self.doc["runs"]:
            if run["run_id"] and run["status"] not in DONE and store.exists(run["run_id"]):
                status = store.read_status(run["run_id"])["status"]
                summary = store.read_summary(run["run_id"]) or {}
                self.record(run, {**summary, "status": status} if status in DONE else {"status": status})

    @staticmethod
    def record(run: dict[str, Any], summary: dict[str, Any]) -> None:
        run["status"] = summary.get("status", "failed")
        for key in ("test_acc", "best_test_acc", "val_acc", "seconds", "trainable_params"):
            run[key] = summary.get(key)
        if summary.get("message") and run["status"] not in DONE:
            run["message"] = summary["message"]


# -------------------------------------------------------------------------------------- progress
class _SuiteProgress(Callback):
    """One tqdm line for the whole suite (runs done, the current run's step) and a line per finished run."""

    def __init__(self, total: int, done: int, stream: Any = None):
        self.stream = stream or sys.stderr
        # disable=None: no bar when stderr is not a terminal (logs, CI); the per-run lines still print.
        self.bar = tqdm(total=total, initial=done, unit="run", desc="suite", file=self.stream, disable=None,
                        dynamic_ncols=True)
        self.label, self._shown, self.done, self.total = "", 0.0, done, total  # the bar keeps no count when off

    def begin(self, run: dict[str, Any]) -> None:
        shot = f" {run['shot']}-shot" if run.get("shot") else ""
        self.label = f"{run['task']}{shot} {run['method']} seed {run['seed']}"
        self.bar.set_postfix_str(self.label)

    def on_step(self, record: dict[str, Any], progress: Progress) -> None:
        if time.monotonic() - self._shown > 0.5:
            self._shown = time.monotonic()
            self.bar.set_postfix_str(f"{self.label}: step {progress.step}/{progress.total_steps}")

    def end(self, run: dict[str, Any]) -> None:
        self.bar.update(1)
        self.done += 1
        acc = run.get("test_acc")
        best = run.get("best_test_acc")
        text = f"test {100 * acc:.1f}%" if acc is not None else run["status"]
        text += f" (best* {100 * best:.1f}%)" if best is not None else ""
        tqdm.write(f"[{self.done}/{self.total}] {self.label}: {text}, run {run['run_id']}", file=self.stream)

    def close(self) -> None:
        self.bar.close()


# -------------------------------------------------------------------------------------------- run
def _check_root(spec: SuiteSpec, protocol: Protocol) -> dict[str, Any]:
    tasks = protocol.select(spec.tasks)
    if spec.protocol == "vtab1k":
        return check_vtab_root(spec.data_root, tasks, spec.check_images)
    return check_fewshot_root(spec.data_root, tasks, spec.shots, spec.seeds, spec.check_images)


def _prepare(spec: SuiteSpec) -> tuple[Protocol, list[dict], dict[str, Any], dict[str, Any], list[TrainConfig]]:
    """Read and check the root, plan the runs and build every run's settings, before anything is created."""
    protocol = read_protocol(spec.protocol, spec.data_root)
    runs = plan_runs(spec, protocol)
    folders = _check_root(spec, protocol)
    base = apply_recipe(spec.recipe, {})
    configs = [run_config(spec, base, run, folders) for run in runs]
    return protocol, runs, folders, base, configs


def _new_doc(folder: SuiteFolder, spec: SuiteSpec, protocol: Protocol, runs: list[dict], backbone: str) -> dict:
    return {
        "suite_id": folder.id, "status": "running", "created_at": time.time(), "pid": os.getpid(),
        "spec": {**spec.request(), "backbone": backbone},
        "protocol_info": {"kind": protocol.kind, "title": protocol.title, "official": protocol.official,
                          "tasks": [{"name": t.name, "group": t.group, "classes": t.classes}
                                    for t in protocol.select(spec.tasks)]},
        "runs": runs,
    }


def _open(spec: SuiteSpec, suites_dir: Path, suite_id: str | None, protocol: Protocol, runs: list[dict],
          backbone: str) -> SuiteFolder:
    """The suite's folder, claimed: new, or the same suite asked for again (then it must match)."""
    folder = SuiteFolder.create(suites_dir, spec.protocol, suite_id)
    folder.claim()
    if not folder.doc:
        folder.doc = _new_doc(folder, spec, protocol, runs, backbone)
    else:
        asked, stored = spec.request(), {k: folder.doc["spec"].get(k) for k in spec.request()}
        if asked != stored:
            changed = ", ".join(k for k in asked if asked[k] != stored[k])
            folder.lock.release()
            raise ConfigError(f"suite {folder.id} was started with other settings ({changed}); resume it with "
                              f"`karst suite resume {folder.id}` or give a new --suite-id.")
    folder.doc.update(status="running", pid=os.getpid())
    return folder


def run_suite(spec: SuiteSpec, runs_dir: str | os.PathLike | None = None,
              suites_dir: str | os.PathLike | None = None, suite_id: str | None = None,
              runner: Any = None) -> dict[str, Any]:
    """Check the root, then train every run not yet done, recording the suite as it goes.

    ``runner``: None trains here, one run after another; a ``karst.ray_backend.RayBackend`` gets
    every pending run at once (its cluster trains as many in parallel as it holds).

    Returns:
        The suite document (``suite.json``); ``status`` is completed, incomplete (some run did not
        complete) or stopped (cancelled; resume it later).

    Raises:
        DataError: the root has problems (all listed; nothing was created).
        ConfigError: a bad setting, or ``suite_id`` names a suite started with other settings.
        RunError: the suite is being run by another process.
    """
    store = RunStore(runs_dir)
    protocol, runs, _, _, configs = _prepare(spec)
    suite_dir = Path(suites_dir) if suites_dir is not None else default_suites_dir(store.root)
    folder = _open(spec, suite_dir, suite_id, protocol, runs, configs[0].backbone)
    by_key = {_key(r): c for r, c in zip(runs, configs)}
    try:
        folder.refresh(store)
        folder.save()
        if runner is None:
            folder.doc["status"] = _train_pending(folder, store, by_key)
        else:
            folder.doc["status"] = _send_pending(runner, folder, by_key)
    except KeyboardInterrupt:
        folder.doc["status"] = "stopped"
    except KarstError:
        folder.doc["status"] = "incomplete"
        raise
    finally:
        folder.doc["pid"] = None
        folder.save()
        folder.lock.release()
    return folder.doc


def _key(run: dict[str, Any]) -> tuple:
    return run["task"], run["method"], run["shot"], run["seed"]


def _train_pending(folder: SuiteFolder, store: RunStore, configs: dict[tuple, TrainConfig]) -> str:
    """Train the runs that are not done, in plan order; the suite's status at the end."""
    runs = folder.doc["runs"]
    progress = _SuiteProgress(len(runs), sum(r["status"] in DONE for r in runs))
    try:
        for run in runs:
            if run["status"] in DONE:
                continue
            progress.begin(run)

            def created(run_id: str, run: dict[str, Any] = run) -> None:
                if run["run_id"]:
                    run["attempts"].append(run["run_id"])
                run.update(run_id=run_id, status="running")
                folder.save()

            try:
                summary = _continue(folder, store, run, progress) or submit_run(store, configs[_key(run)], created,
                                                                                [progress])
            except KarstError as err:
                folder.record(run, {"status": "failed", "message": str(err)})
                raise
            folder.record(run, summary)
            folder.save()
            progress.end(run)
            if summary["status"] == "cancelled":
                return "stopped"
    finally:
        progress.close()
    return "completed" if all(r["status"] == "completed" for r in runs) else "incomplete"


def _send_pending(runner: Any, folder: SuiteFolder, configs: dict[tuple, TrainConfig]) -> str:
    """Send every run that is not done to ``runner`` at once, then record each as it ends (plan order)."""
    sent = [run for run in folder.doc["runs"] if run["status"] not in DONE]
    for run in sent:
        if run["run_id"]:
            run["attempts"].append(run["run_id"])
        run.update(run_id=runner.submit(configs[_key(run)]), status="running")
    folder.save()
    for run in sent:
        summary = runner.wait(run["run_id"])
        if summary.get("run_id") not in (None, run["run_id"]):  # a retry after its node died
            run["attempts"].append(run["run_id"])
            run["run_id"] = summary["run_id"]
        folder.record(run, summary)
        folder.save()
        print(f"{run['run_id']}: {run['status']}", file=sys.stderr, flush=True)
    return "completed" if all(r["status"] == "completed" for r in folder.doc["runs"]) else "incomplete"


def _continue(folder: SuiteFolder, store: RunStore, run: dict[str, Any], progress: Callback) -> dict | None:
    """The summary of the run's interrupted or cancelled run continued from its last epoch, if it can be."""
    if not run["run_id"] or run["status"] not in ("interrupted", "cancelled"):
        return None
    previous = run["status"]
    run["status"] = "running"
    folder.save()
    summary = continue_run(store, run["run_id"], [progress])
    if summary is None:
        run["status"] = previous
    return summary


def resume_suite(suite_id: str, runs_dir: str | os.PathLike | None = None,
                 suites_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Continue a suite with the settings it was started with (completed runs are kept)."""
    store = RunStore(runs_dir)
    suite_dir = Path(suites_dir) if suites_dir is not None else default_suites_dir(store.root)
    doc = read_json(SuiteFolder(suite_dir, suite_id).path / "suite.json")
    if not doc:
        raise RunError(f"no suite {suite_id!r} in {suite_dir}; list suites with `karst suite list`.")
    stored = {k: v for k, v in doc["spec"].items() if k != "backbone"}
    return run_suite(SuiteSpec(**stored), store.root, suite_dir, suite_id)


# ------------------------------------------------------------------------------------ for readers
def list_suites(runs_dir: str | os.PathLike | None = None, suites_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every suite, newest first: ``{"suite_id", "title", "status", "completed", "runs", "updated_at"}``.

    A suite that says ``running`` but whose process is gone is shown as ``interrupted``.
    """
    root = Path(suites_dir) if suites_dir is not None else default_suites_dir(runs_dir)
    out = []
    for path in sorted(root.glob("*/suite.json")) if root.is_dir() else []:
        try:
            doc = read_json(path)
        except RunError:
            continue
        status = doc.get("status")
        if status == "running":
            probe = FileLock(path.parent / ".lock")
            if probe.acquire():
                probe.release()
                status = "interrupted"
        out.append({"suite_id": doc["suite_id"], "title": doc["protocol_info"]["title"], "status": status,
                    "completed": sum(r["status"] == "completed" for r in doc["runs"]), "runs": len(doc["runs"]),
                    "updated_at": doc.get("updated_at")})
    return sorted(out, key=lambda s: s["updated_at"] or 0, reverse=True)


def load_suite(suite_id: str, runs_dir: str | os.PathLike | None = None,
               suites_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """A suite's ``suite.json`` with its results recomputed from the runs it lists."""
    root = Path(suites_dir) if suites_dir is not None else default_suites_dir(runs_dir)
    doc = read_json(SuiteFolder(root, suite_id).path / "suite.json")
    if not doc:
        raise RunError(f"no suite {suite_id!r} in {root}; list suites with `karst suite list`.")
    doc["results"] = suite_report.results(doc)
    return doc


def suite_markdown(suite_id: str, runs_dir: str | os.PathLike | None = None,
                   suites_dir: str | os.PathLike | None = None) -> str:
    """The suite's table as Markdown (tasks × methods, group means, the best of each row in bold)."""
    return suite_report.render_markdown(load_suite(suite_id, runs_dir, suites_dir))


# ---------------------------------------------------------------------------------------- the CLI
def _dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=None, help="runs directory (default $KARST_RUNS_DIR or ./runs)")
    p.add_argument("--suites-dir", type=Path, default=None, help="where suites are kept (default <runs-dir>/suites)")


def _add_run_parser(sub: Any, kind: str, text: str) -> None:
    p = sub.add_parser(kind, help=text)
    p.add_argument("--data-root", type=Path, required=True, help="the benchmark root (README: 'Benchmark suites')")
    p.add_argument("--methods", nargs="+", default=["karst"], choices=METHODS, help="methods to run (default karst)")
    seeds = list(FEWSHOT_SEEDS) if kind == "fewshot" else [0]  # few-shot: NOAH's three split seeds
    p.add_argument("--seeds", nargs="+", type=int, default=seeds,
                   help=f"seeds (default {' '.join(map(str, seeds))}; several give 95%% intervals)")
    p.add_argument("--tasks", nargs="+", help="only these tasks (default: all of the root's protocol)")
    if kind == "fewshot":
        p.add_argument("--shots", nargs="+", type=int, default=list(FEWSHOT_SHOTS), help="images per class")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                   help="settings under the flags: 'paper' = the paper's recipe (karst/recipes.py)")
    p.add_argument("--check-images", choices=("header", "full", "none"), default="header",
                   help="before training, read every image's header (default), decode them all, or skip")
    p.add_argument("--suite-id", help="name of the suite; the same id again continues it")
    p.add_argument("--dry-run", action="store_true", help="check the root and the settings, print the plan, stop")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="any setting by its path, e.g. --set method.adapter.init_std_C=0.5 (repeatable)")
    _dirs(p)
    add_setting_flags(p, [s for s in field_specs() if s.path not in _PER_RUN])
    add_ray_flags(p, "every run of the suite at once")


def add_parser(sub: Any) -> None:
    """``karst suite …``: added to the ``karst`` parser by ``karst.cli``."""
    p = sub.add_parser("suite", help="benchmark suites: VTAB-1K, few-shot FGVC, a demo; one table")
    ss = p.add_subparsers(dest="suite_command", required=True, parser_class=type(p))
    _add_run_parser(ss, "vtab1k", "run the VTAB-1K protocol (final: train800val200 → test)")
    _add_run_parser(ss, "fewshot", "run the few-shot FGVC protocol (NOAH's splits)")
    q = ss.add_parser("make-demo", help="write a small suite in the VTAB-1K (or few-shot) layout from the "
                      "embedded generators")
    q.add_argument("dir", type=Path)
    q.add_argument("--protocol", choices=("vtab1k", "fewshot"), default="vtab1k")
    q.add_argument("--images", nargs=3, type=int, default=list(DEMO_SIZES), metavar=("TRAIN", "VAL", "TEST"),
                   help=f"images per task (default {' '.join(map(str, DEMO_SIZES))})")
    q.add_argument("--seed", type=int, default=0, help="generator seed")
    for name, text in (("resume", "continue a stopped or interrupted suite"), ("show", "print a suite's table")):
        q = ss.add_parser(name, help=text)
        q.add_argument("suite")
        q.add_argument("--json", action="store_true", help="print suite.json instead")
        _dirs(q)
    _dirs(ss.add_parser("list", help="list suites"))


def _spec_from_args(args: argparse.Namespace) -> SuiteSpec:
    values = flag_values(args, [s for s in field_specs() if s.path not in _PER_RUN])
    for item in args.overrides:
        path, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} needs the form PATH=VALUE, e.g. --set method.adapter.rank=4.")
        if path.strip() in _PER_RUN:
            raise ConfigError(f"--set {path.strip()} is set per run by the suite; use --tasks, --methods, --seeds.")
        values[path.strip()] = raw
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # JSON-ready
    return SuiteSpec(protocol=args.suite_command, data_root=str(args.data_root), tasks=list(args.tasks or []),
                     methods=args.methods, seeds=args.seeds, shots=list(getattr(args, "shots", None) or []),
                     recipe=args.recipe, values=values, check_images=args.check_images)


def _report(doc: dict[str, Any], suite_dir: Path) -> int:
    runs = doc["runs"]
    done = sum(r["status"] == "completed" for r in runs)
    print(suite_report.render_markdown(doc))
    seconds = sum(r.get("seconds") or 0 for r in runs)
    print(f"suite {doc['suite_id']}: {doc['status']}, {done}/{len(runs)} runs completed ({seconds:.0f} s of "
          f"training); table in {suite_dir / doc['suite_id'] / 'suite.md'}", file=sys.stderr)
    if doc["status"] != "completed":
        print(f"continue it with `karst suite resume {doc['suite_id']}`", file=sys.stderr)
    return 0 if doc["status"] == "completed" else 1


def _cmd_run(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    suite_dir = args.suites_dir or default_suites_dir(args.runs_dir)
    if args.dry_run:
        protocol, runs, _, _, configs = _prepare(spec)
        print(f"{protocol.title} root {spec.data_root}: OK; {len(runs)} runs, e.g. "
              f"{json.dumps(configs[0].to_dict())}")
        return 0
    return _report(_on_runner(args, lambda runner: run_suite(spec, args.runs_dir, suite_dir, args.suite_id,
                                                             runner=runner)), suite_dir)


def _on_runner(args: argparse.Namespace, call: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """``call(runner)``: None trains here; with ``--ray`` a backend on that cluster (checked first)."""
    address = ray_address(args.ray)
    if address is None:
        return call(None)
    prepare_ray(address)  # an unreachable cluster: one line, exit 2, before the suite is created
    from .ray_backend import RayBackend, connected  # local: Ray is an optional extra, imported only with --ray

    with connected(address):
        backend = RayBackend(args.runs_dir, ray_options(args))
        try:
            return call(backend)
        finally:
            backend.close()


def _cmd_make_demo(args: argparse.Namespace) -> int:
    protocol = make_demo(args.dir, args.protocol, args.images, args.seed)
    tasks = ", ".join(f"{t.name} ({t.group}, {t.classes} classes)" for t in protocol.tasks)
    print(f"wrote {protocol.title} to {args.dir}: {tasks}")
    print(f"run it: karst suite {args.protocol} --data-root {args.dir}")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    suite_dir = args.suites_dir or default_suites_dir(args.runs_dir)
    return _report(resume_suite(args.suite, args.runs_dir, suite_dir), suite_dir)


def _cmd_show(args: argparse.Namespace) -> int:
    doc = load_suite(args.suite, args.runs_dir, args.suites_dir)
    print(json.dumps(doc, indent=1) if args.json else suite_report.render_markdown(doc))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    suites = list_suites(args.runs_dir, args.suites_dir)
    if not suites:
        print(f"no suites in {args.suites_dir or default_suites_dir(args.runs_dir)}")
    for s in suites:
        print(f"{s['suite_id']:40} {s['title'][:28]:28} {s['status']:11} {s['completed']}/{s['runs']} runs")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    """Handler of ``karst suite``; returns the exit status (0 = every run completed)."""
    handlers = {"vtab1k": _cmd_run, "fewshot": _cmd_run, "make-demo": _cmd_make_demo, "resume": _cmd_resume,
                "show": _cmd_show, "list": _cmd_list}
    return handlers[args.suite_command](args)
