"""The single place where the UI touches the ``karst`` library.

The panels call a :class:`Runner`; the runner turns form values into a ``TrainConfig``, hands runs
to the engine's job manager (which trains in a worker outside any UI event), and reads run folders
back for the views. It holds only caches: everything a user can see lives in the run folders, so a
refresh, a second tab or a restart of the app lose nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from karst.config import DEFAULT_BACKBONE, DEFAULT_DATASET, TrainConfig
from karst.errors import ConfigError, DataError, KarstError, RunError

from . import fmt

__all__ = [
    "BackboneSource",
    "DatasetSource",
    "SetupForm",
    "CheckResult",
    "RunView",
    "Prediction",
    "Runner",
    "dataset_spec",
    "backbone_spec",
    "open_image",
]

log = logging.getLogger(__name__)

BackboneSource = Literal["catalogue", "file"]
DatasetSource = Literal["embedded", "folder", "vtab", "zip", "torchvision"]
ModelSource = Literal["run", "upload"]
ACTIVE_STATES = ("queued", "running")
# Head size assumed by the live parameter check while the real number of classes is unknown
# (folders, zips and torchvision sets are only read by the worker).
ASSUMED_CLASSES = 10


@dataclass
class SetupForm:
    """The Setup panel's inputs, in the order the panel lists its components.

    Field order is the contract with ``components/setup.py``: the panel builds its inputs from
    :meth:`field_names`, and Gradio passes their values positionally.
    """

    backbone_source: BackboneSource = "catalogue"
    backbone: str = DEFAULT_BACKBONE
    weights_path: str = ""
    weights_arch: str = ""
    pretrained: bool = TrainConfig.pretrained
    dataset_source: DatasetSource = "embedded"
    dataset: str = DEFAULT_DATASET
    dataset_path: str = ""
    dataset_zip: str | None = None
    torchvision_name: str = ""
    method: str = TrainConfig.method
    # The form starts from the engine's own defaults, so the app and `karst train` agree.
    n_kernels: int = TrainConfig.n_kernels
    stack_dim: int = TrainConfig.stack_dim
    rank: int = TrainConfig.rank
    rescale: str = TrainConfig.rescale
    lr: float | None = TrainConfig.lr  # None: the method's default learning rate
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    seed: int = TrainConfig.seed
    device: str = TrainConfig.device
    max_train_samples: int | None = TrainConfig.max_train_samples
    probe_size: int = TrainConfig.probe_size

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_train_config(self) -> TrainConfig:
        """Validate and convert; raises ConfigError/DataError with a one-line message."""
        backbone, arch = backbone_spec(self.backbone_source, self.backbone, self.weights_path, self.weights_arch)
        dataset = dataset_spec(self.dataset_source, self.dataset, self.dataset_path, self.dataset_zip,
                               self.torchvision_name)
        max_samples = _as_int("max_train_samples", self.max_train_samples, optional=True)
        return TrainConfig(
            backbone=backbone, backbone_arch=arch, pretrained=bool(self.pretrained), dataset=dataset,
            method=self.method,
            n_kernels=_as_int("N (kernels)", self.n_kernels), stack_dim=_as_int("m (stack dim)", self.stack_dim),
            rank=_as_int("r (rank)", self.rank), rescale=self.rescale,
            lr=_as_float("learning rate", self.lr, optional=True),
            epochs=_as_int("epochs", self.epochs), batch_size=_as_int("batch size", self.batch_size),
            seed=_as_int("seed", self.seed), device=self.device,
            warmup_epochs=min(1, max(0, _as_int("epochs", self.epochs) - 1)),
            max_train_samples=max_samples or None, probe_size=_as_int("probe images", self.probe_size),
        )


def _as_int(name: str, value: Any, optional: bool = False) -> int | None:
    # gr.Number hands back floats (or None when the box is emptied); accept 8.0, refuse 8.5.
    if value is None or value == "":
        if optional:
            return None
        raise ConfigError(f"{name} is empty; enter a whole number.")
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name}={value} must be a whole number.")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a whole number.") from None


def _as_float(name: str, value: Any, optional: bool = False) -> float | None:
    if value is None or value == "":
        if optional:
            return None
        raise ConfigError(f"{name} is empty; enter a number such as 1e-3.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a number such as 1e-3.") from None


def backbone_spec(source: BackboneSource, name: str, weights_path: str, arch: str) -> tuple[str, str | None]:
    """The ``(backbone, backbone_arch)`` pair of a TrainConfig from the backbone widgets."""
    if source == "file":
        path = (weights_path or "").strip()
        if not path:
            raise ConfigError("local weights file is empty; enter the path of a .safetensors/.pth file on the server.")
        if not Path(path).is_file():
            raise ConfigError(f"weights file {path!r} does not exist on the server; check the path.")
        return path, (arch or "").strip() or None
    name = (name or "").strip()
    if not name:
        raise ConfigError("backbone is empty; pick one from the list or type a timm model name.")
    return name, None


def dataset_spec(source: DatasetSource, name: str, path: str, zip_path: str | None, tv_name: str) -> str:
    """The ``dataset`` string of a TrainConfig from the dataset widgets."""
    if source == "embedded":
        if not (name or "").strip():
            raise ConfigError("no embedded task picked; choose one such as 'synth-objects'.")
        return name.strip()
    if source in ("folder", "vtab"):
        folder = (path or "").strip()
        if not folder:
            raise ConfigError("dataset folder is empty; enter a folder path on the server.")
        if not Path(folder).is_dir():
            raise DataError(f"dataset folder {folder!r} does not exist on the server; check the path.")
        return folder
    if source == "zip":
        if not zip_path:
            raise ConfigError("no zip uploaded; upload a .zip with one sub-folder per class.")
        return str(zip_path)
    if source == "torchvision":
        tv = (tv_name or "").strip().removeprefix("torchvision:")
        if not tv:
            raise ConfigError("torchvision dataset name is empty; try CIFAR10 or Flowers102.")
        return f"torchvision:{tv}"
    raise ConfigError(f"dataset source {source!r} is unknown; use embedded, folder, vtab, zip or torchvision.")


def open_image(item: Any) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, a numpy array or a Sketchpad value.

    Raises:
        DataError: the input is not an image (e.g. a text file uploaded by mistake).
    """
    if isinstance(item, dict):  # gr.Sketchpad / ImageEditor value
        item = item.get("composite")
    if item is None:
        raise DataError("no image given; upload, paste, draw or pick an example first.")
    if isinstance(item, Image.Image):
        img = item
    elif isinstance(item, np.ndarray):
        img = Image.fromarray(item.astype(np.uint8))
    else:
        path = Path(getattr(item, "name", None) or str(item))
        try:
            with Image.open(path) as raw:
                raw.load()
                img = raw.copy()
        except (UnidentifiedImageError, OSError):
            raise DataError(f"{path.name!r} is not an image this app can read; use PNG, JPEG, WebP or BMP.") from None
    if img.mode == "RGBA":
        # Drawings have a transparent background: composite on white, as the user sees it.
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


@dataclass
class CheckResult:
    """Outcome of the live settings check shown under the Setup form."""

    ok: bool
    markdown: str
    trainable: int | None = None


@dataclass
class RunView:
    """What the Watch panel needs about one run, read from its folder."""

    run_id: str
    status: dict[str, Any]
    config: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None
    queue_position: int | None = None


@dataclass
class Prediction:
    name: str
    labels: list[str]
    probs: list[float]


class _LRU(OrderedDict):
    """A tiny bounded cache: models are big, keep only the last few."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class Runner:
    """UI-side glue to the engine for one runs directory.

    Args:
        runs_dir: the runs directory the engine's worker serves.
        upload_dir: the app's private upload folder (uploaded zips and models are only accepted
            from here).
        start_worker: start the engine's worker now (the app does; pure-UI tests may not).
    """

    def __init__(self, runs_dir: str | Path, upload_dir: str | Path, start_worker: bool = True):
        from karst.jobs import JobManager
        from karst.runs import RunStore

        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.upload_dir = Path(upload_dir).resolve()
        self.store = RunStore(self.runs_dir)
        self.jobs = JobManager(self.runs_dir)
        if start_worker:
            self.jobs.ensure_worker()
        self._lock = threading.Lock()
        self._templates: _LRU = _LRU(3)  # (backbone, arch, classes) -> nn.Module built without weights
        self._counts: _LRU = _LRU(256)  # (template key, method config) -> ParamCount
        self._models: _LRU = _LRU(2)  # predictor key -> loaded predictor
        self._examples: _LRU = _LRU(4)  # dataset spec -> example images
        self._metrics: dict[str, tuple[int, list[dict], list[dict], dict | None]] = {}

    # ------------------------------------------------------------------ catalogues
    @staticmethod
    def backbone_choices() -> list[tuple[str, str]]:
        from karst.backbones import list_backbones

        out = []
        for b in list_backbones():
            offline = "" if b.get("available", True) else " (not in the local cache: needs a network)"
            out.append((f"{b['name']} — {b.get('description', '')}{offline}", b["name"]))
        return out

    @staticmethod
    def dataset_choices() -> list[tuple[str, str]]:
        from karst.data import list_datasets

        return [(f"{d['name']} ({d.get('num_classes', '?')} classes) — {d.get('description', '')}", d["name"])
                for d in list_datasets() if d.get("embedded", True)]

    @staticmethod
    def torchvision_choices() -> list[str]:
        from karst.data import list_datasets

        return [d["name"].removeprefix("torchvision:") for d in list_datasets() if d["name"].startswith("torchvision:")]

    @staticmethod
    def _num_classes(dataset: str) -> int | None:
        from karst.data import list_datasets

        for d in list_datasets():
            if d["name"] == dataset:
                return int(d["num_classes"])
        return None

    # ------------------------------------------------------------------ settings
    def _template(self, backbone: str, arch: str | None, classes: int):
        """The backbone built with ``pretrained=False`` (cached): only its shapes matter here."""
        from karst.backbones import load_backbone

        key = (backbone, arch, classes)
        with self._lock:
            if key in self._templates:
                self._templates.move_to_end(key)
                return self._templates[key]
        model = load_backbone(backbone, classes, pretrained=False, arch=arch).model
        with self._lock:
            return self._templates.put(key, model)

    def check(self, form: SetupForm) -> CheckResult:
        """Validate the form against the chosen backbone and count trainable parameters.

        Builds the backbone without weights (cached per name), checks N/m/r fit every targeted
        layer and builds the method on a copy to count. Never raises: the result carries the message.
        """
        from karst.device import resolve_device
        from karst.methods import build_method, check_settings

        notes = []
        try:
            cfg = form.to_train_config()
            resolve_device(cfg.device)
            if form.dataset_source == "zip":
                notes.append(self.check_zip(cfg.dataset))
            classes = self._num_classes(cfg.dataset)
            assumed = classes is None
            classes = classes or ASSUMED_CLASSES
            template = self._template(cfg.backbone, cfg.backbone_arch, classes)
            mc = cfg.method_config()
            check_settings(template, mc)
            key = (cfg.backbone, cfg.backbone_arch, classes, mc)
            with self._lock:
                pc = self._counts.get(key)
            if pc is None:
                pc = build_method(copy.deepcopy(template), mc).param_count()
                with self._lock:
                    self._counts.put(key, pc)
        except KarstError as err:
            return CheckResult(False, f"❌ {err}")
        except Exception as err:  # an unexpected library error must still read as a message
            log.exception("settings check failed")
            return CheckResult(False, f"❌ could not check these settings: {type(err).__name__}: {err}")
        share = pc.trainable / max(pc.total, 1)
        lines = [
            f"✅ **{pc.trainable:,}** trainable parameters ({fmt.count(pc.adapter)} adapter + "
            f"{fmt.count(pc.head)} head) — {share:.2%} of {fmt.count(pc.total)}.",
        ]
        lines += notes
        if assumed:
            lines.append(f"Head counted for {ASSUMED_CLASSES} classes; the real number is read from the data.")
        return CheckResult(True, "  \n".join(lines), pc.trainable)

    @staticmethod
    def check_zip(zip_path: str) -> str:
        """Validate an uploaded dataset zip (every entry checked before anything is written).

        It is extracted into the same cache the worker uses, so a launch reuses this extraction.

        Raises:
            DataError: not a zip, an entry escaping its folder, a link, or over a size limit.
        """
        from karst.data.safety import IMAGE_SUFFIXES, safe_extract_zip

        try:
            folder = safe_extract_zip(zip_path)
        except DataError as err:  # name the user's file, not the server's private upload path
            raise DataError(str(err).replace(str(zip_path), Path(zip_path).name)) from None
        classes = [p for p in folder.iterdir() if p.is_dir()]
        images = sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return f"Zip checked: {images} images in {len(classes)} top-level folders."

    # ------------------------------------------------------------------ runs
    def launch(self, form: SetupForm) -> str:
        """Queue a run in the engine's worker and return its id (raises KarstError if invalid)."""
        result = self.check(form)
        if not result.ok:
            raise ConfigError(result.markdown.removeprefix("❌ "))
        return self.jobs.submit(form.to_train_config())

    def stop(self, run_id: str | None) -> str:
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

    def run_choices(self) -> list[tuple[str, str]]:
        out = []
        for r in self.list_runs():
            cfg, st = r.get("config") or {}, r.get("status") or {}
            state = st.get("status", "?")
            summary = r.get("summary") or {}
            acc = summary.get("test_acc") if summary.get("test_acc") is not None else summary.get("val_acc")
            tail = f" · {fmt.percent(acc)}" if acc is not None else ""
            label = f"{r['run_id']} · {_method_label(cfg)} · {state}{tail}"
            out.append((label, r["run_id"]))
        return out

    def default_run(self) -> str | None:
        """The run a fresh page should attach to: an active one if any, else the newest."""
        runs = self.list_runs()
        for r in runs:
            if (r.get("status") or {}).get("status") in ACTIVE_STATES:
                return r["run_id"]
        return runs[0]["run_id"] if runs else None

    def runs_signature(self) -> tuple:
        """Cheap fingerprint of the runs directory (ids and status mtimes) to skip no-op refreshes."""
        sig = []
        try:
            for entry in os.scandir(self.runs_dir):
                if entry.is_dir():
                    st = Path(entry.path, "status.json")
                    sig.append((entry.name, st.stat().st_mtime_ns if st.exists() else 0))
        except FileNotFoundError:
            pass
        return tuple(sorted(sig))

    def run_signature(self, run_id: str | None) -> tuple:
        """Fingerprint of one run's status and metrics files."""
        if not run_id:
            return ()
        folder = self.runs_dir / run_id
        out = [run_id]
        for name in ("status.json", "metrics.jsonl"):
            try:
                s = (folder / name).stat()
                out.append((s.st_mtime_ns, s.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def view(self, run_id: str) -> RunView:
        """Status, config and curves of one run (metrics parsed incrementally, cached)."""
        status = self.store.read_status(run_id)
        config = self.store.read_config(run_id).to_dict()
        steps, epochs, test = self._read_metrics(run_id)
        position = None
        if status.get("status") == "queued":
            position = self.store.queue_position(run_id)
        return RunView(run_id, status, config, steps, epochs, test, position)

    def _read_metrics(self, run_id: str) -> tuple[list[dict], list[dict], dict | None]:
        # metrics.jsonl only grows; read just the new lines since the last poll (the store skips a
        # half-written last line) so a long run costs the same per tick as a short one.
        with self._lock:
            offset, steps, epochs, test = self._metrics.get(run_id, (0, [], [], None))
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
            self._metrics[run_id] = (new_offset, steps, epochs, test)
        return steps, epochs, test

    def epoch_curves(self, run_id: str) -> list[dict]:
        return self._read_metrics(run_id)[1]

    def compare_rows(self) -> list[dict[str, Any]]:
        """One row per run for the Compare table (newest first)."""
        rows = []
        for r in self.list_runs():
            cfg, st, sm = r.get("config") or {}, r.get("status") or {}, r.get("summary") or {}
            method = cfg.get("method", "?")
            kron, ranked = method == "karst", method in ("karst", "lora", "lokr")
            rows.append({
                "run": r["run_id"], "label": _method_label(cfg), "method": method,
                "N": cfg.get("n_kernels") if kron else None, "m": cfg.get("stack_dim") if kron else None,
                "r": cfg.get("rank") if ranked else None, "dataset": cfg.get("dataset"),
                "trainable": sm.get("trainable_params"), "val_acc": sm.get("best_val_acc", sm.get("val_acc")),
                "test_acc": sm.get("test_acc"), "seconds": sm.get("seconds"), "status": st.get("status"),
            })
        return rows

    # ------------------------------------------------------------------ inspection
    def inspect_options(self, run_id: str, stats: bool = False) -> tuple[list[str], list[int], int]:
        """KARST layer names, saved epochs and N of a run.

        Args:
            stats: list the epochs with feature statistics (alignment view) instead of the epochs
                with adapter tensors (kernel view).
        """
        from karst import inspect as kinspect

        folder = self.store.path(run_id)
        saved = self.store.snapshot_epochs(run_id) if stats else kinspect.epochs(folder)
        return kinspect.layers(folder), saved, self.store.read_config(run_id).n_kernels

    def kernel_view(self, run_id: str, layer: str, kernel: int, epoch: int) -> dict[str, Any]:
        from karst import inspect as kinspect

        return kinspect.kernel_view(self.store.path(run_id), layer, kernel, epoch)

    def alignment_view(self, run_id: str, layer: str, epoch: int) -> dict[str, Any]:
        from karst import inspect as kinspect

        return kinspect.alignment_view(self.store.path(run_id), layer, epoch)

    # ------------------------------------------------------------------ export and predict
    def downloads(self, run_id: str) -> tuple[Path, Path, Path]:
        """Merged weights, merged config and adapter file of a run that ended (exported on demand).

        Cancelled and interrupted runs export from their newest snapshot, so nothing trained is lost.
        """
        from karst.export import export_run

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

    def predict(self, source: ModelSource, run_id: str | None, model_files: Sequence[str] | None,
                images: Sequence[Any], top_k: int) -> list[Prediction]:
        """Top-k classes for each image with a run's model or an uploaded merged model."""
        from karst.export import Predictor

        pil = [open_image(im) for im in images]  # fail on a non-image before loading any model
        if not pil:
            raise DataError("no image given; upload, paste, draw or pick an example first.")
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
        # Gradio stores each upload in its own folder; the loader wants "<stem>.json" next to
        # "<stem>.safetensors", so link both into one private folder named after their content.
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
        from karst.data import load_dataset

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


def _method_label(cfg: dict[str, Any]) -> str:
    method = cfg.get("method", "?")
    if method == "karst":
        label = f"karst N{cfg.get('n_kernels')} m{cfg.get('stack_dim')} r{cfg.get('rank')}"
    elif method in ("lora", "lokr"):
        label = f"{method} r{cfg.get('rank')}"
    else:
        label = method
    # A random-init run must not pass for a pre-trained one in the run list and comparisons.
    return label if cfg.get("pretrained", True) else f"{label} (random init)"


def _image_name(item: Any, i: int) -> str:
    if isinstance(item, (str, Path)):
        return Path(item).name
    return f"image {i + 1}"
