"""One runs directory as an interactive front end uses it: launch, stop, watch, inspect, download, predict.

:class:`Workspace` turns settings into queued runs (trained by the engine's worker, outside any
request), and reads run folders back. It holds only caches: everything a user can see lives in the
run folders, so a refresh, a second client or a restart lose nothing. The app is a thin layer of
Gradio values over it; a notebook can use it as is.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from . import inspect as kinspect
from ._cache import LRU
from .backbones import list_backbones
from .data import list_datasets, load_dataset
from .errors import ConfigError, DataError, RunError
from .export import Predictor, export_run
from .images import open_image
from .jobs import JobManager
from .preflight import Preflight, SettingsReport
from .runs import ACTIVE_STATES, RunStore
from .runview import MetricsTail, RunView, compare_rows, default_run, run_choices, run_signature, runs_signature

__all__ = ["Workspace", "Prediction", "ModelSource"]

ModelSource = Literal["run", "upload"]


@dataclass
class Prediction:
    """Top-k classes for one image."""

    name: str
    labels: list[str]
    probs: list[float]


def _image_name(item: Any, i: int) -> str:
    if isinstance(item, (str, Path)):
        return Path(item).name
    return f"image {i + 1}"


class Workspace:
    """A runs directory with its job queue, for interactive use.

    Args:
        runs_dir: the runs directory the engine's worker serves.
        upload_dir: the private folder of uploads (uploaded models are only accepted from here).
        start_worker: start the engine's worker now (the app does; pure-UI tests may not).
    """

    def __init__(self, runs_dir: str | Path, upload_dir: str | Path, start_worker: bool = True):
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.upload_dir = Path(upload_dir).resolve()
        self.store = RunStore(self.runs_dir)
        self.jobs = JobManager(self.runs_dir)
        if start_worker:
            self.jobs.ensure_worker()
        self.preflight = Preflight()
        self.tail = MetricsTail(self.store)
        self._lock = threading.Lock()
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

    def launch(self, form: Any) -> str:
        """Queue a run in the engine's worker and return its id (raises KarstError if invalid)."""
        report = self.check(form)
        if not report.ok:
            raise ConfigError(report.message, field=report.field)
        return self.jobs.submit(form.to_train_config())

    def stop(self, run_id: str | None) -> str:
        """Ask a run to stop; says what happened in one line."""
        if not run_id:
            raise RunError("no run selected; pick a run in the list first.")
        before = self.store.read_status(run_id).get("status")
        if before not in ACTIVE_STATES:
            return f"Run {run_id} is {before}: nothing to stop."
        after = self.jobs.cancel(run_id).get("status")
        if after == "cancelled":
            return f"Stop requested for {run_id}: cancelled before it started."
        return f"Stop requested for {run_id}; it ends within one training step."

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
        """KARST layer names, saved epochs and N of a run.

        Args:
            stats: list the epochs with feature statistics (alignment view) instead of the epochs
                with adapter tensors (kernel view).
        """
        folder = self.store.path(run_id)
        saved = self.store.snapshot_epochs(run_id) if stats else kinspect.epochs(folder)
        return kinspect.layers(folder), saved, self.store.read_config(run_id).method.adapter.n_kernels

    def kernel_view(self, run_id: str, layer: str, kernel: int, epoch: int) -> dict[str, Any]:
        return kinspect.kernel_view(self.store.path(run_id), layer, kernel, epoch)

    def alignment_view(self, run_id: str, layer: str, epoch: int) -> dict[str, Any]:
        return kinspect.alignment_view(self.store.path(run_id), layer, epoch)

    # -- export and predict ----------------------------------------------------------------------
    def downloads(self, run_id: str) -> tuple[Path, Path, Path]:
        """Merged weights, merged config and adapter file of a run that ended (exported on demand).

        Cancelled and interrupted runs export from their newest snapshot, so nothing trained is lost.
        """
        folder = self.store.path(run_id)
        state = self.store.read_status(run_id).get("status")
        if state in ACTIVE_STATES:
            raise RunError(f"run {run_id} is still {state}; its files can be downloaded once it ends.")
        merged, card = folder / "merged.safetensors", folder / "merged.json"
        if not (merged.is_file() and card.is_file()):
            export_run(folder)
        adapter = self.store.last_checkpoint(run_id)
        if adapter is None:
            raise RunError(f"run {run_id} saved no weights; it stopped before its first snapshot.")
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

    def predict(self, source: ModelSource, run_id: str | None, model_files: Sequence[str] | None,
                images: Sequence[Any], top_k: int) -> list[Prediction]:
        """Top-k classes for each image with a run's model or an uploaded merged model."""
        pil = [open_image(im) for im in images]  # fail on a non-image before loading any model
        if not pil:
            raise DataError("no image given; upload, paste, draw or pick an example first.")
        predictor = self._predictor(source, run_id, model_files)
        names = [_image_name(im, i) for i, im in enumerate(images)]
        results = predictor.predict(pil, top_k=int(top_k))
        return [Prediction(n, [c for c, _ in r], [float(p) for _, p in r]) for n, r in zip(names, results)]

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
        spec = self.store.read_config(run_id).dataset if run_id else dataset
        if not spec:
            return []
        with self._lock:
            cached = self._examples.get(spec)
        if cached is None:
            cached = load_dataset(spec, transform=None).example_images(n)
            with self._lock:
                self._examples.put(spec, cached)
        return cached
