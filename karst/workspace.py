"""One runs directory as an interactive front end uses it: launch, stop, watch, inspect, download, predict.

:class:`Workspace` turns settings into queued runs (trained by the engine's worker, outside any
request), and reads run folders back. It holds only caches: everything a user can see lives in the
run folders, so a refresh, a second client or a restart lose nothing. The app is a thin layer of
Gradio values over it; a notebook can use it as is.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from . import inspect as kinspect
from ._cache import LRU
from .backbones import list_backbones
from .cluster import check_worker, prepare_ray, ray_address, worker_args
from .data import list_datasets, load_dataset
from .device import resolve_device
from .errors import ConfigError, DataError, KarstError, RunError
from .estimate import RunEstimate, estimate_run
from .export import Confidence, Predictor, confidence, export_run, run_class_names
from .images import open_image
from .jobs import JobManager
from .preflight import Preflight, Roots, SettingsReport, dataset_allowed
from .runs import ACTIVE_STATES, RunStore, owner_key
from .runview import (
    MetricsTail,
    RunView,
    compare_rows,
    default_run,
    related_runs,
    run_choices,
    run_colors,
    run_details,
    run_labels,
    run_signature,
    runs_signature,
)
from .sweep import list_sweeps, read_sweep, render_markdown, sweep_points

__all__ = ["Workspace", "Prediction", "ModelSource"]

ModelSource = Literal["run", "upload"]


@dataclass
class Prediction:
    """Top-k classes for one image, how sure the model is, and the picture it was given."""

    name: str
    labels: list[str]
    probs: list[float]
    confidence: Confidence | None = None
    seen: np.ndarray | None = None  # the model's input back in RGB, (H, W, 3) uint8: after its resize and crop
    true_label: str | None = None  # the dataset's class, for an example image

    @property
    def correct(self) -> bool | None:
        """Whether the top class is the true one; None when the true class is not known."""
        return None if self.true_label is None else self.labels[0] == self.true_label


def _publish_copy(src: Path, dst: Path) -> Path:
    """``dst`` becomes a hard link to (else a copy of) ``src``, replaced atomically."""
    tmp = dst.with_name(f".{dst.name}.{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not supported
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    # rename() between two links of one file does nothing and keeps tmp (POSIX): a repeated download.
    tmp.unlink(missing_ok=True)
    return dst


def _image_name(item: Any, i: int) -> str:
    if isinstance(item, (str, Path)):
        return Path(item).name
    return f"image {i + 1}"


class Workspace:
    """A runs directory with its job queue, for interactive use.

    Args:
        runs_dir: the runs directory the engine's worker serves.
        upload_dir: the private folder of uploads (uploaded models are only accepted from here).
        start_worker: start the engine's worker now and on each launch, and a watchdog thread that
            attaches to the runs directory and restarts the worker when runs are queued and it died
            (the app does; pure-UI tests may not: their launches stay queued). :meth:`close` stops the
            watchdog.
        data_roots: folders that server paths (dataset folders, weight files) must be under, and
            that example images may come from; None allows any path (a notebook), ``()`` none.
        ray: the ``--ray`` flag's value: None trains here; an address (or "" for ``$RAY_ADDRESS``)
            makes the runs directory's worker a ``karst worker --ray`` that sends every launch to
            that Ray cluster (``karst.ray_backend``). An unreachable cluster is a ConfigError here.
        max_active_per_owner: how many runs one client (``owner`` token) may have queued or running
            at once; None: no limit. Clients also take turns in the queue (:func:`karst.runs.fair_order`).

    Clients: methods that change a run take an ``owner``, the secret token of the calling client (a
    browser); a run launched with a token may then be stopped, resumed, renamed or deleted only with
    that token. ``owner=None`` is the operator (a notebook, the CLI), who may act on every run, and
    runs launched without a token may be changed by every client.
    """

    def __init__(self, runs_dir: str | Path, upload_dir: str | Path, start_worker: bool = True,
                 data_roots: Roots = None, ray: str | None = None, max_active_per_owner: int | None = None):
        if max_active_per_owner is not None and max_active_per_owner < 1:
            raise ConfigError(f"max_active_per_owner={max_active_per_owner}: give 1 or more, or None for no limit.")
        self.max_active_per_owner = max_active_per_owner
        self._start_worker = start_worker
        self.ray = ray_address(ray)
        if start_worker and self.ray:
            prepare_ray(self.ray)  # an unreachable cluster: one line, before anything is created
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.upload_dir = Path(upload_dir).resolve()
        self.store = RunStore(self.runs_dir)
        self.jobs = JobManager(self.runs_dir, worker_args=worker_args(self.ray) if self.ray else ())
        if start_worker:
            self.jobs.ensure_worker()
            check_worker(self.runs_dir, self.ray)
            self.jobs.start_watchdog()
        self.preflight = Preflight(data_roots, self.upload_dir)
        self.tail = MetricsTail(self.store)
        self._lock = threading.Lock()
        self._launch_lock = threading.Lock()
        self._models = LRU(2)  # predictor key -> loaded predictor
        self._examples = LRU(4)  # dataset spec -> example images

    # -- catalogues ------------------------------------------------------------------------------
    @staticmethod
    def backbone_choices() -> list[tuple[str, str]]:
        out = []
        for b in list_backbones():
            offline = "" if b.get("available", True) else " (not in the local cache: needs a network)"
            out.append((f"{b['name']} — {b.get('description', '')}{offline}", b["name"]))
        return out

    @staticmethod
    def dataset_choices() -> list[tuple[str, str]]:
        return [(f"{d['name']} ({d.get('num_classes', '?')} classes) — {d.get('description', '')}", d["name"])
                for d in list_datasets() if d.get("embedded", True)]

    @staticmethod
    def torchvision_choices() -> list[str]:
        return [d["name"].removeprefix("torchvision:") for d in list_datasets() if d["name"].startswith("torchvision:")]

    # -- settings and runs -------------------------------------------------------------------------
    def check(self, form: Any) -> SettingsReport:
        """Validate a :class:`~karst.preflight.SetupForm` and count parameters (never raises for bad input)."""
        return self.preflight.check(form)

    def estimate(self, form: Any) -> RunEstimate | None:
        """Steps, estimated time and warnings for valid settings (:func:`karst.estimate.estimate_run`);
        None when the settings are not valid (:meth:`check` says why)."""
        try:
            config = self.preflight.config(form)
            device = resolve_device(config.device).type
        except KarstError:
            return None
        sizes = next((d.get("sizes") for d in list_datasets() if d["name"] == config.dataset), None)
        return estimate_run(config, sizes, self.store.list_runs(), device)

    def launch(self, form: Any, owner: str | None = None) -> str:
        """Queue a run in the engine's worker and return its id (raises KarstError if invalid, or
        if ``owner`` already has :attr:`max_active_per_owner` runs queued or running)."""
        report = self.check(form)
        if not report.ok:
            raise ConfigError(report.message, field=report.field)
        config = self.preflight.config(form)
        key = owner_key(owner) if owner else None
        with self._launch_lock:  # two clicks at once must not both pass the limit
            self._check_share(key)
            return self.jobs.submit(config, start_worker=self._start_worker, owner=key)

    def _check_share(self, key: str | None) -> None:
        """RunError if the client ``key`` already has its share queued or running (no key, no limit: fine)."""
        if not key or not self.max_active_per_owner:
            return
        mine = [run_id for run_id in self.store.run_ids() if self._owner_of(run_id, active=True) == key]
        if len(mine) >= self.max_active_per_owner:
            raise RunError(f"you already have {len(mine)} runs queued or running ({', '.join(mine)}) and each browser "
                           f"may have {self.max_active_per_owner} at once, so everyone gets a turn; wait for one "
                           "to end or stop one, then launch again.")

    def _owner_of(self, run_id: str, active: bool = False) -> str | None:
        """The owner key a run recorded (None: none, or unreadable; ``active``: only for a queued or running run)."""
        try:
            status = self.store.read_status(run_id)
        except RunError:
            return None
        return None if active and status["status"] not in ACTIVE_STATES else status.get("owner")

    def _check_owner(self, run_id: str, owner: str | None, action: str) -> None:
        """RunError unless ``owner`` may ``action`` the run (see the class docstring)."""
        recorded = self._owner_of(run_id) if owner is not None else None
        if recorded and recorded != owner_key(owner):
            raise RunError(f"run {run_id} was launched from another browser; only the person who launched it can "
                           f"{action} it (or the operator, on the server: karst cancel / karst delete RUN_ID).")

    def stop(self, run_id: str | None, owner: str | None = None) -> str:
        """Ask a run to stop; says what happened in one line."""
        if not run_id:
            raise RunError("no run selected; pick a run in the list first.")
        self._check_owner(run_id, owner, "stop")
        before = self.store.read_status(run_id).get("status")
        if before not in ACTIVE_STATES:
            return f"Run {run_id} is {before}: nothing to stop."
        after = self.jobs.cancel(run_id).get("status")
        if after == "cancelled":
            return f"Stop requested for {run_id}: cancelled before it started."
        return f"Stop requested for {run_id}; it ends within one training step."

    def resume(self, run_id: str | None, owner: str | None = None) -> str:
        """Queue a cancelled or interrupted run to continue from its last epoch; says what happened in one line."""
        if not run_id:
            raise RunError("no run selected; pick a cancelled or interrupted run in the list first.")
        self._check_owner(run_id, owner, "resume")
        with self._launch_lock:  # a resume is a launch: it counts against the launcher's share
            self._check_share(self._owner_of(run_id))
            epoch, _ = self.store.prepare_resume(run_id)
        if self._start_worker:
            self.jobs.ensure_worker()
        where = f"from epoch {epoch}" if epoch else "from the start (it saved no training state)"
        return f"Resuming {run_id} {where}: queued."

    def client_secret(self) -> str:
        """A random secret of this runs directory (``.client-secret``, readable by its owner only),
        the same across restarts: a front end encrypts what it keeps in browsers (their client
        token) with it, so restarting the app does not forget who launched which run."""
        path = self.runs_dir / ".client-secret"
        if not path.is_file():
            tmp = path.with_name(f".client-secret.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
            try:
                os.link(tmp, path)  # atomic and never replaces: two apps starting at once agree on one secret
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        secret = path.read_text().strip()
        if len(secret) < 16:
            raise RunError(f"{path} is damaged (too short); delete it and restart (browsers then get new tokens).")
        return secret

    def close(self) -> None:
        """Detach from the runs directory (stop the watchdog); the worker finishes what is queued."""
        self.jobs.stop_watchdog()

    def sweeps(self) -> list[dict[str, Any]]:
        """The sweeps of this runs directory (``karst sweep``), newest first: their ``sweep.json`` documents."""
        return list_sweeps(self.runs_dir)

    def sweep_view(self, sweep_id: str) -> tuple[str, list[dict[str, Any]]]:
        """One sweep's table (Markdown, as ``sweep.md``) and its accuracy-vs-parameters points."""
        doc = read_sweep(sweep_id, self.runs_dir)
        return render_markdown(doc), sweep_points(doc)

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, as dicts with id, status, config and summary."""
        return self.store.list_runs()

    def run_choices(self) -> list[tuple[str, str, float | None]]:
        return run_choices(self.store)

    def default_run(self) -> str | None:
        return default_run(self.store)

    def runs_signature(self) -> tuple:
        return runs_signature(self.runs_dir)

    def run_signature(self, run_id: str | None) -> tuple:
        return run_signature(self.runs_dir, run_id)

    def view(self, run_id: str) -> RunView:
        """Status, config and curves of one run (metrics read incrementally)."""
        return self.tail.view(run_id)

    def epoch_curves(self, run_id: str) -> list[dict]:
        return self.tail.read(run_id)[1]

    def compare_rows(self) -> list[dict[str, Any]]:
        return compare_rows(self.store)

    # -- inspection ------------------------------------------------------------------------------
    def inspect_options(self, run_id: str, stats: bool = False) -> tuple[list[str], list[int], int]:
        """Layer names, saved epochs and N of a run.

        Args:
            stats: the layers and epochs with feature statistics (alignment view: every method's
                adapted layers) instead of the KARST layers and epochs with adapter tensors (kernel view).
        """
        folder = self.store.path(run_id)
        config = self.store.read_config(run_id)
        if stats:
            names, saved = kinspect.alignment_layers(folder), self.store.snapshot_epochs(run_id)
        elif config.method.name == "lora":
            return kinspect.lora_layers(folder), kinspect.epochs(folder), 1
        else:
            names, saved = kinspect.layers(folder), kinspect.epochs(folder)
        return names, saved, config.method.adapter.n_kernels

    def kernel_view(self, run_id: str, layer: str, kernel: int, epoch: int, since: int | None = None,
                    fixed_scale: bool = False) -> dict[str, Any]:
        """The update of one layer at one epoch: a KARST kernel (:func:`karst.inspect.kernel_view`, with
        the newest trained LoRA run of the same backbone and dataset as ``trained_lora``) or a LoRA
        run's own B A (:func:`karst.inspect.lora_view`); ``method`` says which. ``fixed_scale`` adds
        ``bounds``: one colour scale per matrix for every epoch."""
        folder = self.store.path(run_id)
        if self.store.read_config(run_id).method.name == "lora":
            view = {**kinspect.lora_view(folder, layer, epoch, since), "method": "lora"}
            if fixed_scale:
                views = [kinspect.lora_view(folder, layer, e, since) for e in kinspect.epochs(folder)]
                view["bounds"] = {k: max(float(np.abs(v[k]).max()) for v in views) for k in ("A", "B", "delta")}
            return view
        view = {**kinspect.kernel_view(folder, layer, kernel, epoch, since), "method": "karst",
                "trained_lora": self._trained_lora(run_id, layer)}
        if fixed_scale:
            view["bounds"] = kinspect.kernel_bounds(folder, layer, kernel, since)
        return view

    def _trained_lora(self, run_id: str, layer: str) -> dict[str, Any] | None:
        """The newest completed LoRA run of this backbone and dataset that adapted ``layer``: its label,
        singular values and cumulative energy at its last epoch."""
        for other in related_runs(self.store, run_id, limit=50)[1:]:
            if self.store.read_config(other).method.name != "lora":
                continue
            if self.store.read_status(other).get("status") != "completed":
                continue
            folder = self.store.path(other)
            if layer in kinspect.lora_layers(folder):
                view = kinspect.lora_view(folder, layer)
                label = run_labels(self.store, [run_id, other])[other]
                return {"run": other, "label": label, "color": self.run_colors().get(other), "sv": view["sv"],
                        "energy": view["energy"]}
        return None

    def alignment_view(self, run_id: str, layer: str, epoch: int) -> dict[str, Any]:
        return kinspect.alignment_view(self.store.path(run_id), layer, epoch)

    def alignment_table(self, run_id: str, epoch: int | None = None) -> list[dict[str, Any]]:
        return kinspect.alignment_table(self.store.path(run_id), epoch)

    def alignment_runs(self, run_id: str, layer: str, limit: int = 8) -> list[dict[str, Any]]:
        """The gap history of ``layer`` (:func:`karst.inspect.gap_history`) in ``run_id`` and the newest
        other runs of its backbone and dataset that recorded it, each with its ``run``, ``label``
        (telling the runs apart) and ``color``."""
        ids = related_runs(self.store, run_id, limit)
        labels, colors = run_labels(self.store, ids), self.run_colors()
        out = []
        for other in ids:
            try:
                history = kinspect.gap_history(self.store.path(other), layer)
            except RunError:  # no statistics for this layer (another method's targets, no epoch 0)
                continue
            if history["epochs"]:
                out.append({"run": other, "label": labels[other], "color": colors.get(other), **history})
        return out

    # -- labels, colours, names ------------------------------------------------------------------
    def run_colors(self) -> dict[str, str]:
        """Every run's colour (:func:`karst.runview.run_colors` over the whole runs directory)."""
        return run_colors(self.store.run_ids())

    def run_labels(self, run_ids: list[str]) -> dict[str, str]:
        """Labels that tell these runs apart (:func:`karst.runview.distinguishing_labels`)."""
        return run_labels(self.store, run_ids)

    def run_details(self, run_id: str) -> list[tuple[str, str]]:
        """Status, results and settings of a run as readable (field, value) rows."""
        return run_details(self.store, run_id)

    def run_meta(self, run_id: str) -> dict[str, str]:
        return self.store.read_meta(run_id)

    def set_run_meta(self, run_id: str | None, name: str | None, note: str | None,
                     owner: str | None = None) -> dict[str, str]:
        """Name and annotate a run (see :meth:`karst.runs.RunStore.write_meta`)."""
        if not run_id:
            raise RunError("no run selected; pick a run in the list first.")
        self._check_owner(run_id, owner, "rename")
        return self.store.write_meta(run_id, name=name, note=note)

    def delete(self, run_id: str | None, owner: str | None = None) -> str:
        """Delete a run folder that is not queued or running; says what happened in one line."""
        if not run_id:
            raise RunError("no run selected; pick a run in the list first.")
        self._check_owner(run_id, owner, "delete")
        try:
            state = self.store.read_status(run_id).get("status")
        except RunError:
            if not self.store.exists(run_id):
                raise
            state = None  # a damaged status.json: the run can still be deleted (store.delete checks its lock)
        if state in ACTIVE_STATES:
            raise RunError(f"run {run_id} is {state}; stop it first, then delete it.")
        self.store.delete(run_id)
        return f"Deleted run {run_id}."

    # -- export and predict ----------------------------------------------------------------------
    def downloads(self, run_id: str) -> tuple[Path, Path, Path]:
        """Merged weights, merged config and adapter file of a run that ended (exported on demand).

        Cancelled and interrupted runs export from their newest snapshot, so nothing trained is lost.
        The files are copies (hard links where possible) named after the run, in a folder of their
        own under the upload folder: a front end serves them without serving the runs directory.
        """
        folder = self.store.path(run_id)
        state = self.store.read_status(run_id).get("status")
        if state in ACTIVE_STATES:
            raise RunError(f"run {run_id} is still {state}; its files can be downloaded once it ends.")
        adapter = self.store.last_checkpoint(run_id)
        if adapter is None:
            raise RunError(f"run {run_id} saved no weights; it stopped before its first snapshot.")
        merged, card = folder / "merged.safetensors", folder / "merged.json"
        # A merged file older than the newest weights (a run resumed since) would not match them.
        if not (merged.is_file() and card.is_file()) or merged.stat().st_mtime < adapter.stat().st_mtime:
            export_run(folder)
        out = self.upload_dir / "downloads" / run_id
        out.mkdir(parents=True, exist_ok=True)
        files = ((merged, "merged.safetensors"), (card, "merged.json"), (adapter, "adapter.safetensors"))
        merged, card, adapter = (_publish_copy(src, out / f"{run_id}-{name}") for src, name in files)
        return merged, card, adapter

    def _predictor(self, source: ModelSource, run_id: str | None, model_files: Sequence[str] | None) -> Predictor:
        if source == "run":
            if not run_id:
                raise RunError("no run selected; pick a finished run or upload a merged model.")
            target = self.store.path(run_id)
            # A run's weights change while it trains and once when it is exported.
            key = ("run", run_id, self.store.read_status(run_id).get("updated_at"),
                   (target / "merged.safetensors").exists())
        else:
            target = self._uploaded_model(model_files)
            key = ("file", str(target), target.stat().st_mtime_ns)
        with self._lock:
            predictor = self._models.get(key)
        if predictor is None:
            predictor = Predictor.from_source(target)
            with self._lock:
                self._models.put(key, predictor)
        return predictor

    def model_classes(self, source: ModelSource, run_id: str | None, model_files: Sequence[str] | None) -> list[str]:
        """The classes the chosen model answers with (a run's are read without building its model)."""
        if source == "run":
            if not run_id:
                raise RunError("no run selected; pick a finished run or upload a merged model.")
            return run_class_names(self.store.path(run_id))
        return self._predictor(source, run_id, model_files).class_names

    def predict(self, source: ModelSource, run_id: str | None, model_files: Sequence[str] | None,
                images: Sequence[Any], top_k: int, true_labels: Sequence[str | None] | None = None) -> list[Prediction]:
        """Top-k classes for each image with a run's model or an uploaded merged model.

        Each :class:`Prediction` also says how sure the model is and carries the picture the model
        was given, made by the same transform. ``true_labels`` (one per image, None where unknown)
        are the dataset's classes of example images.
        """
        pil = [open_image(im) for im in images]  # fail on a non-image before loading any model
        if not pil:
            raise DataError("no image given; upload, paste, draw or pick an example first.")
        predictor = self._predictor(source, run_id, model_files)
        inputs = predictor.inputs(pil)
        probs = predictor.probabilities(inputs)
        names = [_image_name(im, i) for i, im in enumerate(images)]
        truths = list(true_labels) if true_labels is not None else [None] * len(pil)
        if len(truths) != len(pil):
            raise ConfigError(f"{len(truths)} true labels for {len(pil)} images; give one per image (None if unknown).")
        return [Prediction(name, [c for c, _ in ranked], [p for _, p in ranked], sure, seen, truth)
                for name, ranked, sure, seen, truth in zip(names, predictor.top_k(probs, int(top_k)), confidence(probs),
                                                           predictor.pixels(inputs), truths)]

    def _uploaded_model(self, files: Sequence[str] | None) -> Path:
        """Put an uploaded merged model (and its optional .json) side by side under one stem."""
        files = [Path(f) for f in (files or [])]
        weights = [f for f in files if f.suffix == ".safetensors"]
        cards = [f for f in files if f.suffix == ".json"]
        if len(weights) != 1 or len(cards) > 1 or len(files) != len(weights) + len(cards):
            raise DataError("upload one merged .safetensors file, optionally with its .json config, and nothing else.")
        for f in files:
            if not f.resolve().is_relative_to(self.upload_dir):
                raise DataError(f"{f.name!r} is not an upload of this app; upload the files again.")
        # Uploads land in a folder each; the loader wants "<stem>.json" next to "<stem>.safetensors",
        # so link both into one private folder named after their upload folders.
        folder = self.upload_dir / "models" / f"{weights[0].parent.name}-{cards[0].parent.name if cards else 'x'}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "merged.safetensors"
        for src, dst in ((weights[0], target), *((c, folder / "merged.json") for c in cards)):
            if not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
        return target

    def example_images(self, run_id: str | None, dataset: str | None = None, n: int = 8) -> list[Image.Image]:
        """A few images of the run's dataset (or ``dataset``) to predict on with one click (cached)."""
        return [image for image, _ in self.labelled_examples(run_id, dataset, n)]

    def labelled_examples(self, run_id: str | None, dataset: str | None = None,
                          n: int = 8) -> list[tuple[Image.Image, str | None]]:
        """:meth:`example_images` with each one's true class (None where the dataset does not say)."""
        spec = self.store.read_config(run_id).dataset if run_id else dataset
        if not spec or not dataset_allowed(spec, self.preflight.roots, self.upload_dir):
            return []  # e.g. a CLI run on a folder outside the data roots: its images are not served
        with self._lock:
            cached = self._examples.get((spec, n))
        if cached is None:
            cached = load_dataset(spec, transform=None).labelled_examples(n)
            with self._lock:
                self._examples.put((spec, n), cached)
        return cached
