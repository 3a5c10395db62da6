"""Hyper-parameter sweeps with Ray Tune: choose on validation accuracy, retrain on train+val, test.

``karst sweep --space FILE`` explores a search space over any settings (grid and random choices), as
PETL papers choose them: every trial trains on the training split and is judged by its final
validation accuracy (VTAB-1K: train800 / val200; the embedded tasks: their val split); the best
setting is then trained again on train+val (``train_on_val``) and tested once. Ray Tune runs the
trials (``--asha`` adds its asynchronous successive-halving scheduler, which stops poor trials at
the end of an epoch); ``karst.ray_backend`` records each trial as an ordinary run folder.

The space file (JSON, or YAML with PyYAML) maps settings to values::

    {"lr": [1e-3, 3e-3],                       # a list: every value (grid)
     "N": {"choice": [1, 2, 4]},               # one at random per sample (--samples)
     "method.adapter.rank": {"grid": [4, 8]},
     "lr": {"loguniform": [1e-4, 1e-2]},       # a number at random, on a log scale (or "uniform")
     "seed": 0}                                # a fixed value

Keys are setting paths (``karst train --help``, ``--set``) or the short names of ``ALIASES``.
The result is ``<runs-dir>/sweeps/<sweep-id>/sweep.json`` and ``sweep.md``: every trial's accuracy
against its trainable parameters, the chosen setting and its test accuracy.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cluster import RayOptions
from .config import TrainConfig, config_from_values, field_spec
from .errors import ConfigError, RunError
from .runs import atomic_write_json, default_runs_dir, read_json

__all__ = ["ALIASES", "Dimension", "SweepSpec", "load_space", "run_sweep", "list_sweeps", "read_sweep",
           "sweep_markdown", "sweep_points", "render_markdown", "default_sweeps_dir"]

# Short names for the settings sweeps usually vary (paper notation: N, m, r).
ALIASES = {"lr": "lr", "N": "method.adapter.n_kernels", "m": "method.adapter.stack_dim", "r": "method.adapter.rank",
           "rank": "method.adapter.rank", "rescale": "method.adapter.rescale", "method": "method.name",
           "task": "dataset", "seed": "seed"}
_KINDS = ("grid", "choice", "uniform", "loguniform")
_METRIC = "val_acc"
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class Dimension:
    """One swept setting: ``kind`` is grid, choice, uniform, loguniform, or fixed (one value)."""

    path: str
    kind: str
    values: tuple

    def describe(self) -> str:
        shown = ", ".join(map(str, self.values))
        return {"fixed": shown, "grid": f"grid [{shown}]", "choice": f"choice [{shown}]"}.get(
            self.kind, f"{self.kind} [{shown}]")


@dataclass(frozen=True)
class SweepSpec:
    """What ``karst sweep`` was asked: the space, trials per grid point, and the scheduler."""

    space: tuple[Dimension, ...]
    samples: int = 1
    asha: bool = False
    grace_epochs: int = 1
    reduction: float = 3.0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"--samples {self.samples}: give trials per grid point >= 1 (1 without random choices).")
        if self.grace_epochs < 1 or self.reduction <= 1:
            raise ConfigError(f"ASHA needs a grace of >= 1 epoch and a reduction factor > 1; got "
                              f"{self.grace_epochs} and {self.reduction:g}.")

    def trials(self) -> int:
        grid = math.prod(len(d.values) for d in self.space if d.kind == "grid")
        return grid * self.samples


# ------------------------------------------------------------------------------------------ the space
def _read_space_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--space {path} does not exist; give a JSON or YAML file of settings to sweep.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--space {path} cannot be read ({e}); give a readable JSON or YAML file.") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # local: PyYAML comes with Ray (requirements-ray.txt), needed only for YAML spaces

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--space {path} is not valid YAML ({str(e).splitlines()[0]}).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--space {path} is not valid JSON ({e}); use .yaml for a YAML file.") from None


def _dimension(key: str, raw: Any, base: Mapping[str, Any]) -> Dimension:
    path = ALIASES.get(key, key)
    spec = field_spec(path)  # an unknown setting fails here, listing the known ones
    if isinstance(raw, list):
        kind, values = "grid", raw
    elif isinstance(raw, Mapping):
        if len(raw) != 1 or next(iter(raw)) not in _KINDS:
            raise ConfigError(f"--space: {key} must be a value, a list, or one of {{{', '.join(_KINDS)}: [...]}}; "
                              f"got {json.dumps(raw)[:80]}.", field=path)
        kind, values = next(iter(raw.items()))
    else:
        kind, values = "fixed", [raw]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"--space: {key} needs a non-empty list of values.", field=path)
    if kind in ("uniform", "loguniform"):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if spec.kind != "float" or len(values) != 2 or not numeric or not values[0] < values[1]:
            raise ConfigError(f"--space: {kind} takes [low, high] with low < high, for a number setting such as "
                              f"lr; got {key}: {json.dumps(values)[:80]}.", field=path)
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"--space: loguniform needs low > 0; got {key}: {values}.", field=path)
    for value in values:  # every value must make a valid run on its own: fail before any trial starts
        config_from_values({path: value}, base)
    return Dimension(path, kind, tuple(values))


def load_space(path: str | Path, base: TrainConfig) -> tuple[Dimension, ...]:
    """The dimensions of a space file, each value checked against ``base`` (no trial starts on a bad value).

    Raises:
        ConfigError: the file is missing or malformed, names an unknown setting, or a value is invalid.
    """
    data = _read_space_file(Path(path))
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"--space {path} must map settings to values, e.g. {{\"lr\": [0.001, 0.003]}}.")
    dims = [_dimension(str(k), v, base.to_dict()) for k, v in data.items()]
    paths = [d.path for d in dims]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"--space {path} names one setting twice (an alias and its path?): {', '.join(paths)}.")
    if not any(d.kind != "fixed" for d in dims):
        raise ConfigError(f"--space {path} varies nothing; give a list or a choice for at least one setting.")
    return tuple(dims)


# ----------------------------------------------------------------------------------------- the result
def default_sweeps_dir(runs_dir: str | os.PathLike | None = None) -> Path:
    """``<runs-dir>/sweeps``: where the sweeps of a runs directory are kept (the app looks there)."""
    return Path(runs_dir if runs_dir is not None else default_runs_dir()) / "sweeps"


def _setting(config: Mapping[str, Any], path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _row(store: Any, run_id: str, space: tuple[Dimension, ...]) -> dict[str, Any]:
    summary = store.read_summary(run_id) or {}
    config = read_json(store.root / run_id / "config.json") or {}
    return {"run_id": run_id, "settings": {d.path: _setting(config, d.path) for d in space},
            "status": store.read_status(run_id)["status"], "val_acc": summary.get("val_acc"),
            "best_val_acc": summary.get("best_val_acc"), "test_acc": summary.get("test_acc"),
            "trainable_params": summary.get("trainable_params"), "epochs_done": summary.get("epochs_done"),
            "seconds": summary.get("seconds")}


def _choose(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The completed trial with the best final validation accuracy (fewer parameters break a tie)."""
    done = [t for t in trials if t["status"] == "completed" and t["val_acc"] is not None]
    if not done:
        states = ", ".join(sorted({t["status"] for t in trials})) or "none ran"
        raise RunError(f"no trial completed with a validation accuracy (trials: {states}); see their runs with "
                       "`karst runs`, fix the settings, and sweep again.")
    return max(done, key=lambda t: (t["val_acc"], -(t["trainable_params"] or 0)))


def run_sweep(base: TrainConfig, spec: SweepSpec, address: str, runs_dir: str | Path | None = None,
              options: RayOptions | None = None, sweep_id: str | None = None) -> dict[str, Any]:
    """Sweep ``spec.space`` around ``base`` on Ray, choose, retrain on train+val, test; the sweep document.

    Raises:
        ConfigError: a bad sweep id or cluster address (before anything is created).
        RunError: no trial completed, so nothing could be chosen.
    """
    # local: Ray and Ray Tune are an optional extra, imported only when a sweep runs
    from ._tune import tune_trials
    from .ray_backend import RayBackend, connected

    sweep_id = sweep_id or f"{time.strftime('%Y%m%d-%H%M%S')}-sweep-{secrets.token_hex(2)}"
    if not set(sweep_id) <= _SAFE or sweep_id.startswith("."):
        raise ConfigError(f"--sweep-id {sweep_id!r} may use only letters, digits, '.', '_' and '-'.")
    with connected(address):
        backend = RayBackend(runs_dir, options)
        folder = default_sweeps_dir(backend.store.root) / sweep_id
        folder.mkdir(parents=True, exist_ok=True)
        doc = _new_doc(sweep_id, spec, base, address)
        try:
            with tempfile.TemporaryDirectory(prefix="karst-tune-") as storage:  # Tune's own bookkeeping
                tune_trials(spec, base, backend, sweep_id, storage, _METRIC)
            _settle(backend)
            doc["trials"] = [_row(backend.store, ids[-1], spec.space) | {"attempts": ids[:-1]}
                             for ids in backend.trial_runs.values()]
            chosen = _choose(doc["trials"])
            doc["chosen"] = {k: chosen[k] for k in ("run_id", "settings", "val_acc", "trainable_params")}
            _save(folder, doc)
            final = config_from_values({**chosen["settings"], "train_on_val": True}, base.to_dict())
            doc["final"] = _row(backend.store, backend.wait(backend.submit(final))["run_id"], spec.space)
            doc["status"] = "completed" if doc["final"]["status"] == "completed" else "incomplete"
        except BaseException:
            doc["status"] = "incomplete"
            raise
        finally:
            backend.close()
            _save(folder, doc)
    return doc


def _settle(backend: Any, timeout_s: float = 60.0) -> None:
    # Tune reports a trial's end to the backend; its run folder is closed at the backend's next poll.
    deadline = time.monotonic() + timeout_s
    while backend.active() and time.monotonic() < deadline:
        time.sleep(0.05)


def _new_doc(sweep_id: str, spec: SweepSpec, base: TrainConfig, address: str) -> dict[str, Any]:
    space = [{"path": d.path, "kind": d.kind, "values": list(d.values)} for d in spec.space]
    return {"sweep_id": sweep_id, "status": "running", "created_at": time.time(), "ray": address,
            "metric": _METRIC, "space": space,
            "samples": spec.samples, "scheduler": ({"name": "asha", "grace_epochs": spec.grace_epochs,
                                                    "reduction": spec.reduction} if spec.asha else None),
            "base": base.to_dict(), "trials": [], "chosen": None, "final": None}


def _save(folder: Path, doc: dict[str, Any]) -> None:
    atomic_write_json(folder / "sweep.json", doc)
    tmp = folder / ".sweep.md.tmp"
    tmp.write_text(render_markdown(doc), encoding="utf-8")
    os.replace(tmp, folder / "sweep.md")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def render_markdown(doc: dict[str, Any]) -> str:
    """The sweep as a Markdown table: each trial's settings, trainable parameters and accuracy."""
    paths = [d["path"] for d in doc["space"] if d["kind"] != "fixed"]
    chosen = (doc.get("chosen") or {}).get("run_id")
    space = "; ".join(f"{d['path']}: {Dimension(d['path'], d['kind'], tuple(d['values'])).describe()}"
                      for d in doc["space"])
    asha = doc.get("scheduler")
    if asha:
        space += f"; ASHA (grace {asha['grace_epochs']} epoch(s), reduction {asha['reduction']:g})"
    lines = [f"# Sweep {doc['sweep_id']} ({doc['status']})", "",
             "Chosen on final validation accuracy; the chosen setting retrained on train+val and tested once. "
             f"Space: {space}.", "",
             "| run | " + " | ".join(paths) + " | trainable params | val acc | test acc | status |",
             "|---" * (len(paths) + 5) + "|"]
    rows = [(t, "**chosen** " if t["run_id"] == chosen else "") for t in doc.get("trials", [])]
    if doc.get("final"):
        rows.append((doc["final"], "**final (train+val)** "))
    for row, tag in rows:
        params = f"{row['trainable_params']:,}" if row.get("trainable_params") is not None else "–"
        test = _pct(row.get("test_acc")) if tag.startswith("**final") else "–"
        val = "–" if tag.startswith("**final") else _pct(row.get("val_acc"))
        lines.append(f"| {tag}{row['run_id']} | " + " | ".join(str(row["settings"].get(p)) for p in paths)
                     + f" | {params} | {val} | {test} | {row['status']} |")
    return "\n".join(lines) + "\n"


def sweep_points(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Accuracy against trainable parameters, one point per trial (validation) and the final run (test).

    Each point: ``label``, ``params``, ``acc`` and ``method`` (for a plot's colours).
    """
    paths = [d["path"] for d in doc["space"] if d["kind"] != "fixed"]
    method = doc["base"].get("method", {}).get("name", "karst")

    def label(row: dict[str, Any]) -> str:
        return " ".join(f"{p.rsplit('.', 1)[-1]}={row['settings'].get(p)}" for p in paths)

    points = [{"label": f"{label(t)} (val)", "params": t.get("trainable_params"), "acc": t.get("val_acc"),
               "method": t["settings"].get("method.name", method)} for t in doc.get("trials", [])]
    final = doc.get("final")
    if final:
        points.append({"label": f"{label(final)} retrained (test)", "params": final.get("trainable_params"),
                       "acc": final.get("test_acc"), "method": final["settings"].get("method.name", method)})
    return points


def list_sweeps(runs_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every sweep of a runs directory, newest first (the sweep documents)."""
    folder = default_sweeps_dir(runs_dir)
    docs = []
    if folder.is_dir():
        for path in folder.glob("*/sweep.json"):
            try:
                doc = read_json(path)
            except RunError:
                continue  # damaged by hand: skip it in listings
            if isinstance(doc, dict) and "sweep_id" in doc:
                docs.append(doc)
    return sorted(docs, key=lambda d: d.get("created_at") or 0, reverse=True)


def read_sweep(sweep_id: str, runs_dir: str | Path | None = None) -> dict[str, Any]:
    """One sweep's document; RunError if there is none by that id."""
    if not sweep_id or not set(sweep_id) <= _SAFE or sweep_id.startswith("."):
        raise RunError(f"sweep id {sweep_id!r:.80} is not valid; list sweeps with `karst sweep --list`.")
    doc = read_json(default_sweeps_dir(runs_dir) / sweep_id / "sweep.json")
    if not doc:
        raise RunError(f"no sweep {sweep_id!r} in {default_sweeps_dir(runs_dir)}.")
    return doc


def sweep_markdown(sweep_id: str, runs_dir: str | Path | None = None) -> str:
    """The Markdown table of one sweep (as ``sweep.md``)."""
    return render_markdown(read_sweep(sweep_id, runs_dir))
