"""Reading runs for display: labels, curves read incrementally, comparison rows, change fingerprints.

Used by the app's panels and usable from the CLI or a notebook; it only reads run folders.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import KarstError
from .runs import ACTIVE_STATES, UNREADABLE, RunStore

__all__ = ["RunView", "MetricsTail", "run_label", "run_config", "compare_rows", "run_choices", "default_run",
           "runs_signature", "run_signature", "distinguishing_labels", "run_colors", "RUN_PALETTE", "run_labels",
           "related_runs", "run_details"]


def run_config(raw: dict[str, Any] | None) -> TrainConfig | None:
    """A run's ``config.json`` data as a TrainConfig (either layout), or None if it cannot be read."""
    try:
        return TrainConfig.from_dict(raw or {})
    except KarstError:
        return None


def run_label(config: TrainConfig | None) -> str:
    """A short name of a run's method and settings ("karst N2 m8 r8", "lora r8 (random init)")."""
    if config is None:
        return "?"
    method, adapter = config.method.name, config.method.adapter
    if method == "karst":
        label = f"karst N{adapter.n_kernels} m{adapter.stack_dim} r{adapter.rank}"
    elif method in ("lora", "lokr"):
        label = f"{method} r{adapter.rank}"
    else:
        label = method
    # A random-init run must not pass for a pre-trained one in the run list and comparisons.
    return label if config.pretrained else f"{label} (random init)"


# Settings that change neither what a run learns nor how it is compared: never part of a label.
_UNLABELLED = {"device", "num_workers", "tensorboard", "mlflow", "save_state", "eval_every", "probe_size",
               "backbone_arch", "method.adapter.recompute_output"}
# Short names of settings in labels; others go by their last name.
_SHORT = {"method.adapter.n_kernels": "N", "method.adapter.stack_dim": "m", "method.adapter.rank": "r",
          "method.adapter.alpha": "α", "method.adapter.target_modules": "targets", "method.lora_alpha": "lora α",
          "method.adapter.init_std_C": "std C", "method.adapter.init_std_A": "std A", "batch_size": "batch",
          "max_train_samples": "train images", "weight_decay": "wd", "warmup_epochs": "warm-up",
          "label_smoothing": "smoothing", "drop_path": "drop-path", "grad_clip": "clip"}
# What each method's label already says (run_label), and the adapter settings it uses at all.
_IN_BASE = {"karst": {"method.adapter.n_kernels", "method.adapter.stack_dim", "method.adapter.rank"},
            "lora": {"method.adapter.rank"}, "lokr": {"method.adapter.rank"}}
_USES = {"lora": {"method.adapter.rank", "method.adapter.target_modules", "method.lora_alpha"},
         "lokr": {"method.adapter.rank", "method.adapter.target_modules", "method.lora_alpha"}}


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{path}."))
        else:
            out[path] = tuple(value) if isinstance(value, list) else value
    return out


def _applies(path: str, method: str) -> bool:
    if path == "method.lora_alpha":
        return method in ("lora", "lokr")
    if path.startswith("method.adapter."):
        return method == "karst" or path in _USES.get(method, set())
    return True


def _setting_text(path: str, value: Any) -> str:
    if path == "pretrained":
        return "pre-trained" if value else "random init"
    if path in ("dataset", "backbone"):
        return str(value)
    if isinstance(value, bool):
        value = "on" if value else "off"
    elif isinstance(value, float):
        value = f"{value:g}"
    elif isinstance(value, tuple):
        value = ",".join(map(str, value))
    elif value is None:
        value = "all" if path == "max_train_samples" else "default"
    name = _SHORT.get(path, path.rsplit(".", 1)[-1].replace("_", " "))
    return f"{name} {value}"


def distinguishing_labels(configs: dict[str, TrainConfig | None], names: dict[str, str] | None = None,
                          id_tails: bool = True) -> dict[str, str]:
    """A label per run that shows every setting differing between ``configs`` (run id → config).

    Starts from :func:`run_label` and adds each setting whose value differs among the runs and
    that the run's method uses ("karst N2 m8 r8 · rescale none"). A run with a name given by the
    user (``names``) is labelled by it. Runs that still share a label get their id's last 4 characters
    (``id_tails``; off where the label shows the whole id anyway).
    """
    names = names or {}
    flat = {run_id: _flat(config.to_dict()) if config else {} for run_id, config in configs.items()}
    paths = sorted({p for f in flat.values() for p in f} - _UNLABELLED - {"method.name"})
    # Among readable configs only: a damaged run (no config) would make every setting "differ".
    readable = [f for f in flat.values() if f]
    differing = [p for p in paths if len({repr(f.get(p)) for f in readable}) > 1]
    labels = {}
    for run_id, config in configs.items():
        if names.get(run_id):
            labels[run_id] = names[run_id]
            continue
        method = config.method.name if config else "?"
        extra = [_setting_text(p, flat[run_id].get(p)) for p in differing
                 if p in flat[run_id] and _applies(p, method) and p not in _IN_BASE.get(method, set())
                 and not (p == "pretrained" and not flat[run_id][p])]  # run_label says "random init"
        labels[run_id] = " · ".join([run_label(config), *extra])
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {run_id: (f"{label} #{run_id[-4:]}" if counts[label] > 1 and id_tails else label)
            for run_id, label in labels.items()}


# Distinct on white and readable as thin lines; a run keeps its colour in every plot.
# (No grey: the views draw the frozen model in grey.)
RUN_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#393b79", "#ad494a", "#637939", "#7b4173")


def run_colors(run_ids: list[str] | tuple[str, ...] | set[str]) -> dict[str, str]:
    """A colour per run id: its hash picks a slot of :data:`RUN_PALETTE`, and a run takes the next free
    slot if one of the previous runs (in id order, i.e. creation order) already has it.

    Pass every run of a runs directory: a run's colour then never changes when later runs are added,
    and any ``len(RUN_PALETTE)`` consecutive runs have different colours.
    """
    out: dict[str, str] = {}
    recent: list[str] = []
    size = len(RUN_PALETTE)
    for run_id in sorted(run_ids):
        slot = zlib.crc32(run_id.encode()) % size
        taken = set(recent[-(size - 1):])
        while RUN_PALETTE[slot] in taken:
            slot = (slot + 1) % size
        out[run_id] = RUN_PALETTE[slot]
        recent.append(RUN_PALETTE[slot])
    return out


@dataclass
class RunView:
    """Status, configuration and curves of one run, as a watch view needs them."""

    run_id: str
    status: dict[str, Any]
    config: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None
    queue_position: int | None = None


class MetricsTail:
    """Each run's ``metrics.jsonl`` read incrementally: a poll reads only the lines added since the last.

    ``metrics.jsonl`` only grows, so a long run costs the same per poll as a short one; a resumed
    run rewinds it by writing a new file, which is noticed by its inode. Thread-safe.
    """

    def __init__(self, store: RunStore):
        self.store = store
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, list[dict], list[dict], dict | None, int | None]] = {}

    def read(self, run_id: str) -> tuple[list[dict], list[dict], dict | None]:
        """(step records, epoch records, test record) of ``run_id`` so far."""
        with self._lock:
            offset, steps, epochs, test, inode = self._seen.get(run_id, (0, [], [], None, None))
        try:
            now = os.stat(self.store.path(run_id) / "metrics.jsonl").st_ino
        except FileNotFoundError:
            now = None
        if now != inode:  # a new file (first read, or rewound by a resume): read it from the start
            offset, steps, epochs, test = 0, [], [], None
        records, new_offset = self.store.read_metrics(run_id, offset)
        if records:
            steps, epochs = list(steps), list(epochs)
            for rec in records:
                kind = rec.get("type")
                if kind == "step":
                    steps.append(rec)
                elif kind == "epoch":
                    epochs.append(rec)
                elif kind == "test":
                    test = rec
        with self._lock:
            self._seen[run_id] = (new_offset, steps, epochs, test, now)
        return steps, epochs, test

    def view(self, run_id: str) -> RunView:
        """Status, config and curves of one run."""
        status = self.store.read_status(run_id)
        config = self.store.read_config(run_id).to_dict()
        steps, epochs, test = self.read(run_id)
        position = self.store.queue_position(run_id) if status.get("status") == "queued" else None
        return RunView(run_id, status, config, steps, epochs, test, position)


def _summary_acc(summary: dict[str, Any]) -> float | None:
    return summary.get("test_acc") if summary.get("test_acc") is not None else summary.get("val_acc")


def _meta(store: RunStore, run_id: str) -> dict[str, str]:
    try:
        return store.read_meta(run_id)
    except KarstError:  # deleted meanwhile, or a damaged meta.json: the run is still listed
        return {"name": "", "note": ""}


def run_choices(store: RunStore) -> list[tuple[str, str, float | None]]:
    """(label, run id, accuracy) of every run, newest first.

    The label leads with what tells the runs apart, since a narrow picker shows only its start:
    "[name ·] method and the settings that differ between the runs · state · run id" (the id begins
    with the date and time the run was made, and lets a user find a run by typing part of it).
    """
    listed = store.list_runs()
    settings = distinguishing_labels({r["run_id"]: run_config(r.get("config")) for r in listed}, id_tails=False)
    out = []
    for r in listed:
        state = _state_text(r.get("status") or {}) or "?"  # an unreadable one says why: repair or delete it
        name = _meta(store, r["run_id"])["name"]
        label = " · ".join([*([name] if name else []), settings[r["run_id"]], state, r["run_id"]])
        out.append((label, r["run_id"], _summary_acc(r.get("summary") or {})))
    return out


def run_labels(store: RunStore, run_ids: list[str]) -> dict[str, str]:
    """:func:`distinguishing_labels` of these runs, with the names users gave them."""
    configs, names = {}, {}
    for run_id in run_ids:
        try:
            configs[run_id] = store.read_config(run_id)
        except KarstError:
            configs[run_id] = None
        names[run_id] = _meta(store, run_id)["name"]
    return distinguishing_labels(configs, names)


def related_runs(store: RunStore, run_id: str, limit: int = 8) -> list[str]:
    """``run_id`` and the newest other runs of the same backbone and dataset (at most ``limit`` in all)."""
    chosen = store.read_config(run_id)
    out = [run_id]
    for r in store.list_runs():
        config = run_config(r.get("config"))
        if len(out) >= limit:
            break
        if r["run_id"] != run_id and config and (config.backbone, config.dataset) == (chosen.backbone, chosen.dataset):
            out.append(r["run_id"])
    return out


def default_run(store: RunStore) -> str | None:
    """The run a fresh view should attach to: an active one if any, else the newest readable one."""
    runs = [r for r in store.list_runs() if (r.get("status") or {}).get("status") != UNREADABLE]
    for r in runs:
        if (r.get("status") or {}).get("status") in ACTIVE_STATES:
            return r["run_id"]
    return runs[0]["run_id"] if runs else None


def compare_rows(store: RunStore) -> list[dict[str, Any]]:
    """One row per run for a comparison table (newest first); ``label`` tells the runs apart
    (:func:`distinguishing_labels` over all of them)."""
    rows = []
    listed = store.list_runs()
    configs = {r["run_id"]: run_config(r.get("config")) for r in listed}
    metas = {r["run_id"]: _meta(store, r["run_id"]) for r in listed}
    labels = distinguishing_labels(configs, {k: m["name"] for k, m in metas.items()})
    for r in listed:
        config, summary = configs[r["run_id"]], r.get("summary") or {}
        method = config.method.name if config else "?"
        adapter = config.method.adapter if config else None
        kron, ranked = method == "karst", method in ("karst", "lora", "lokr")
        rows.append({
            "run": r["run_id"], "label": labels[r["run_id"]], "name": metas[r["run_id"]]["name"],
            "note": metas[r["run_id"]]["note"], "method": method,
            "N": adapter.n_kernels if kron else None, "m": adapter.stack_dim if kron else None,
            "r": adapter.rank if ranked else None, "rescale": adapter.rescale if kron else None,
            "dataset": config.dataset if config else None, "backbone": config.backbone if config else None,
            "lr": config.lr if config else None, "epochs": config.epochs if config else None,
            "batch_size": config.batch_size if config else None,
            "train_images": summary.get("train_images", config.max_train_samples if config else None),
            "trainable": summary.get("trainable_params"),
            "val_acc": summary.get("best_val_acc", summary.get("val_acc")), "test_acc": summary.get("test_acc"),
            "seconds": summary.get("seconds"), "status": _state_text(r.get("status") or {}),
        })
    return rows


def _state_text(status: dict[str, Any]) -> str | None:
    """The state as a view shows it; an unreadable run folder says why."""
    state = status.get("status")
    return f"{UNREADABLE}: {status.get('message')}" if state == UNREADABLE else state


def _when(t: float | None) -> str:
    return "–" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _share(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def run_details(store: RunStore, run_id: str) -> list[tuple[str, str]]:
    """A run's status, results and settings as (field, value) rows a person can read: local dates,
    durations, percentages and the settings in the words of :func:`distinguishing_labels`."""
    status, summary = store.read_status(run_id), store.read_summary(run_id) or {}
    config, meta = store.read_config(run_id), _meta(store, run_id)
    started, finished = status.get("started_at"), status.get("finished_at")
    elapsed = summary.get("seconds") if summary.get("seconds") is not None else (
        (finished or time.time()) - started if started else None)
    flat = _flat(config.to_dict())
    shown = _UNLABELLED | {"method.name", "backbone", "dataset"}
    settings = [_setting_text(p, v) for p, v in flat.items() if p not in shown and _applies(p, config.method.name)]
    rows = [("Run", run_id), ("Name", meta["name"] or "–"), ("Note", meta["note"] or "–"),
            ("Status", f"{status.get('status')}" + (f": {status['message']}" if status.get("message")
                                                     not in (None, "", status.get("status")) else "")),
            ("Method", run_label(config)), ("Backbone", config.backbone), ("Dataset", config.dataset),
            ("Queued", _when(status.get("queued_at"))), ("Started", _when(started)), ("Finished", _when(finished)),
            ("Duration", _seconds(elapsed)), ("Device", status.get("device") or "–"),
            ("Epochs", f"{status.get('epoch', 0)}/{status.get('epochs') or config.epochs}"),
            ("Steps", f"{status.get('step', 0)}/{status.get('total_steps') or '?'}"),
            ("Training images", str(summary.get("train_images", config.max_train_samples or "all"))),
            ("Trainable parameters", f"{summary['trainable_params']:,}" if summary.get("trainable_params") else "–"),
            ("Best validation accuracy", _share(summary.get("best_val_acc"))),
            ("Test accuracy", _share(summary.get("test_acc"))),
            ("Settings", " · ".join(settings))]
    return rows


def runs_signature(root: str | Path) -> tuple:
    """Cheap fingerprint of a runs directory (ids and status mtimes), to skip no-op refreshes."""
    sig = []
    try:
        for entry in os.scandir(root):
            if entry.is_dir():
                st = Path(entry.path, "status.json")
                sig.append((entry.name, st.stat().st_mtime_ns if st.exists() else 0))
    except FileNotFoundError:
        pass
    return tuple(sorted(sig))


def run_signature(root: str | Path, run_id: str | None) -> tuple:
    """Fingerprint of one run's status and metrics files."""
    if not run_id:
        return ()
    folder = Path(root) / run_id
    out: list[Any] = [run_id]
    for name in ("status.json", "metrics.jsonl"):
        try:
            s = (folder / name).stat()
            out.append((s.st_mtime_ns, s.st_size))
        except OSError:  # missing, or an id too long to be a file name
            out.append(None)
    return tuple(out)
