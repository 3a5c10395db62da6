"""Reading runs for display: labels, curves read incrementally, comparison rows, change fingerprints.

Used by the app's panels and usable from the CLI or a notebook; it only reads run folders.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import KarstError
from .runs import ACTIVE_STATES, RunStore

__all__ = ["RunView", "MetricsTail", "run_label", "run_config", "compare_rows", "run_choices", "default_run",
           "runs_signature", "run_signature"]


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

    ``metrics.jsonl`` only grows, so a long run costs the same per poll as a short one. Thread-safe.
    """

    def __init__(self, store: RunStore):
        self.store = store
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, list[dict], list[dict], dict | None]] = {}

    def read(self, run_id: str) -> tuple[list[dict], list[dict], dict | None]:
        """(step records, epoch records, test record) of ``run_id`` so far."""
        with self._lock:
            offset, steps, epochs, test = self._seen.get(run_id, (0, [], [], None))
        records, new_offset = self.store.read_metrics(run_id, offset)
        if new_offset < offset:  # the file was replaced (should not happen): start over
            records, new_offset = self.store.read_metrics(run_id, 0)
            steps, epochs, test = [], [], None
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
            self._seen[run_id] = (new_offset, steps, epochs, test)
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


def run_choices(store: RunStore) -> list[tuple[str, str, float | None]]:
    """(label, run id, accuracy) of every run, newest first; the label reads "id · method · state"."""
    out = []
    for r in store.list_runs():
        state = (r.get("status") or {}).get("status", "?")
        label = f"{r['run_id']} · {run_label(run_config(r.get('config')))} · {state}"
        out.append((label, r["run_id"], _summary_acc(r.get("summary") or {})))
    return out


def default_run(store: RunStore) -> str | None:
    """The run a fresh view should attach to: an active one if any, else the newest."""
    runs = store.list_runs()
    for r in runs:
        if (r.get("status") or {}).get("status") in ACTIVE_STATES:
            return r["run_id"]
    return runs[0]["run_id"] if runs else None


def compare_rows(store: RunStore) -> list[dict[str, Any]]:
    """One row per run for a comparison table (newest first)."""
    rows = []
    for r in store.list_runs():
        config, summary = run_config(r.get("config")), r.get("summary") or {}
        method = config.method.name if config else "?"
        adapter = config.method.adapter if config else None
        kron, ranked = method == "karst", method in ("karst", "lora", "lokr")
        rows.append({
            "run": r["run_id"], "label": run_label(config), "method": method,
            "N": adapter.n_kernels if kron else None, "m": adapter.stack_dim if kron else None,
            "r": adapter.rank if ranked else None, "dataset": config.dataset if config else None,
            "trainable": summary.get("trainable_params"),
            "val_acc": summary.get("best_val_acc", summary.get("val_acc")), "test_acc": summary.get("test_acc"),
            "seconds": summary.get("seconds"), "status": (r.get("status") or {}).get("status"),
        })
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
