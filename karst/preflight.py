"""Before a launch: a settings form's values as a TrainConfig, and whether they fit the backbone.

The app's Setup form is :class:`SetupForm`: where the backbone and the data come from (widgets
that become ``backbone`` / ``dataset`` strings) plus the settings in :data:`FORM_SETTINGS`, whose
fields, defaults, labels and help come from ``karst.config``. :class:`Preflight` builds the
backbone without weights (cached) to check N/m/r against every targeted layer and count parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._cache import LRU
from .backbones import EMBEDDED_BACKBONE, WEIGHT_SUFFIXES, load_backbone
from .config import (
    DEFAULT_BACKBONE,
    DEFAULT_DATASET,
    DEFAULT_LR,
    FieldSpec,
    TrainConfig,
    config_from_values,
    field_spec,
)
from .data import list_datasets
from .data.safety import check_zip
from .device import resolve_device
from .errors import BackboneError, ConfigError, DataError, KarstError
from .methods import build_method, check_settings
from .model import ParamCount

__all__ = ["FORM_SETTINGS", "SetupForm", "SettingsReport", "Preflight", "form_key", "form_spec", "backbone_spec",
           "dataset_spec", "ASSUMED_CLASSES", "BackboneSource", "DatasetSource", "Roots", "allowed_path",
           "dataset_allowed"]

BackboneSource = Literal["catalogue", "file"]
DatasetSource = Literal["embedded", "folder", "vtab", "zip", "torchvision"]
# Folders server paths must be under (the app's --data-root); None: no restriction (CLI, notebooks).
Roots = Sequence[str | Path] | None

# The settings the app's form shows (every other one keeps its default there; the CLI and a JSON
# config reach all of them).
FORM_SETTINGS: tuple[str, ...] = (
    "pretrained", "method.name", "method.adapter.n_kernels", "method.adapter.stack_dim", "method.adapter.rank",
    "method.adapter.rescale", "method.lora_alpha", "lr", "epochs", "warmup_epochs", "batch_size", "seed", "device",
    "max_train_samples", "probe_size",
)
# Head size assumed by the parameter count while the real number of classes is unknown
# (folders, zips and torchvision sets are only read by the worker).
ASSUMED_CLASSES = 10


def form_key(path: str) -> str:
    """The form's name of a setting: its last part ("method.adapter.rank" -> "rank"; "method.name" -> "method")."""
    parts = path.split(".")
    return parts[-2] if parts[-1] == "name" else parts[-1]


def form_spec(key: str) -> FieldSpec:
    """The :class:`~karst.config.FieldSpec` behind the form field ``key``."""
    for path in FORM_SETTINGS:
        if form_key(path) == key:
            return field_spec(path)
    raise ConfigError(f"{key!r} is not a setting of the form; known: {', '.join(map(form_key, FORM_SETTINGS))}.")


def _form_default(path: str) -> Any:
    if path == "lr":  # shown as a number: a browser sends an empty number box as 0
        return DEFAULT_LR[field_spec("method.name").default]
    return field_spec(path).default


_SOURCE_FIELDS: list[tuple[str, Any, Any]] = [
    ("backbone_source", str, "catalogue"), ("backbone", str, DEFAULT_BACKBONE), ("weights_path", str, ""),
    ("weights_arch", str, ""), ("dataset_source", str, "embedded"), ("dataset", str, DEFAULT_DATASET),
    ("dataset_path", str, ""), ("dataset_zip", Any, None), ("torchvision_name", str, ""),
]


def _to_train_config(self: Any, roots: Roots = None, uploads: str | Path | None = None) -> TrainConfig:
    """Validate and convert; raises ConfigError/DataError with a one-line message.

    ``roots`` and ``uploads`` restrict server paths as in :func:`dataset_spec` (None: any path).
    """
    backbone, arch = backbone_spec(self.backbone_source, self.backbone, self.weights_path, self.weights_arch,
                                   roots=roots)
    dataset = dataset_spec(self.dataset_source, self.dataset, self.dataset_path, self.dataset_zip,
                           self.torchvision_name, roots=roots, uploads=uploads)
    values = {path: getattr(self, form_key(path)) for path in FORM_SETTINGS}
    return config_from_values({**values, "backbone": backbone, "backbone_arch": arch, "dataset": dataset})


# The form's values, in the order a UI lists its inputs: the sources, then FORM_SETTINGS. Built
# from the declarations, so a setting added to FORM_SETTINGS appears here with its default.
SetupForm = dataclasses.make_dataclass(
    "SetupForm",
    [(name, kind, dataclasses.field(default=default)) for name, kind, default in _SOURCE_FIELDS]
    + [(form_key(p), Any, dataclasses.field(default=_form_default(p))) for p in FORM_SETTINGS],
    namespace={"to_train_config": _to_train_config,
               "field_names": classmethod(lambda cls: [f.name for f in dataclasses.fields(cls)])},
)
SetupForm.__module__ = __name__
SetupForm.__doc__ = "A settings form's raw values (numbers may arrive as floats, empty boxes as None)."


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text, not a {type(value).__name__}; type it in the form.")
    return value.strip()


def allowed_path(path: str, roots: Sequence[str | Path], *, folder: bool, error: type[KarstError] = DataError,
                 what: str = "a data folder") -> str:
    """``path`` resolved (symlinks and ``..``), if it is under one of ``roots`` and exists.

    A path outside the roots and a missing one get the same message, so the answer tells nothing
    about the server's files.

    Args:
        folder: the path must be a folder (else a regular file).
        error: the error type (the table in docs/ARCHITECTURE.md: DataError for data, BackboneError
            for a weight file).
    """
    refused = error(f"{path[:200]!r} is not {what} this server allows; put it under one of the data roots "
                    "(python app.py --data-root DIR) and try again.")
    try:
        real = Path(os.path.realpath(path))
        inside = any(real.is_relative_to(os.path.realpath(root)) for root in roots)
        if inside and (real.is_dir() if folder else real.is_file()):
            return str(real)
    except (OSError, ValueError):  # a name too long, a NUL byte: the same answer
        pass
    raise refused


def _looks_local(name: str) -> bool:
    """Whether :func:`karst.backbones.load_backbone` would read ``name`` as a local weight file."""
    if name.startswith(("hf-hub:", "hf_hub:")) or name == EMBEDDED_BACKBONE:
        return False
    try:
        return Path(name).suffix.lower() in WEIGHT_SUFFIXES or os.sep in name or Path(name).exists()
    except (OSError, ValueError):
        return True


def backbone_spec(source: BackboneSource, name: str, weights_path: str, arch: str,
                  roots: Roots = None) -> tuple[str, str | None]:
    """The ``(backbone, backbone_arch)`` pair of a TrainConfig from the backbone widgets.

    Args:
        roots: folders a weight file on the server may come from; None allows any path (the CLI,
            a notebook). A catalogue name that would be read as a file follows the same rule.
    """
    if source == "file":
        path = _text(weights_path, "the weights file")
        if not path:
            raise ConfigError("local weights file is empty; enter the path of a .safetensors/.pth file on the server.")
        if roots is not None:
            return allowed_path(path, roots, folder=False, error=BackboneError, what="a weights file"), \
                (_text(arch, "the architecture") or None)
        if not Path(path).is_file():
            raise BackboneError(f"weights file {path!r} does not exist on the server; check the path.")
        return path, _text(arch, "the architecture") or None
    name = _text(name, "the backbone")
    if not name:
        raise ConfigError("backbone is empty; pick one from the list or type a timm model name.")
    if roots is not None and _looks_local(name):
        return allowed_path(name, roots, folder=False, error=BackboneError, what="a weights file"), None
    return name, None


def _embedded_task(name: str, roots: Roots) -> str:
    if not name:
        raise ConfigError("no embedded task picked; choose one such as 'synth-objects'.")
    embedded = [d["name"] for d in list_datasets() if d.get("embedded")]
    if roots is not None and name.partition("@")[0] not in embedded:  # a path here would bypass the roots
        raise DataError(f"{name[:200]!r} is not an embedded task; choose one of {', '.join(embedded)}.")
    return name


def dataset_spec(source: DatasetSource, name: str, path: str, zip_path: str | None, tv_name: str,
                 roots: Roots = None, uploads: str | Path | None = None) -> str:
    """The ``dataset`` string of a TrainConfig from the dataset widgets.

    Args:
        roots: folders that dataset folders on the server must be under (symlinks and ``..``
            resolved first); None allows any path (the CLI, a notebook).
        uploads: with ``roots``, the folder of this app's uploads, where a zip may also come from.
    """
    if source == "embedded":
        return _embedded_task(_text(name, "the embedded task"), roots)
    if source in ("folder", "vtab"):
        folder = _text(path, "the dataset folder")
        if not folder:
            raise ConfigError("dataset folder is empty; enter a folder path on the server.")
        if roots is not None:
            return allowed_path(folder, roots, folder=True)
        if not Path(folder).is_dir():
            raise DataError(f"dataset folder {folder!r} does not exist on the server; check the path.")
        return folder
    if source == "zip":
        if not zip_path:
            raise ConfigError("no zip uploaded; upload a .zip with one sub-folder per class.")
        if roots is not None:
            return allowed_path(str(zip_path), [*roots, *([uploads] if uploads else [])], folder=False,
                                what="an uploaded zip")
        return str(zip_path)
    if source == "torchvision":
        tv = _text(tv_name, "the torchvision name").removeprefix("torchvision:")
        if not tv:
            raise ConfigError("torchvision dataset name is empty; try CIFAR10 or Flowers102.")
        return f"torchvision:{tv}"
    raise ConfigError(f"dataset source {str(source)[:40]!r} is unknown; "
                      "use embedded, folder, vtab, zip or torchvision.")


def dataset_allowed(spec: str, roots: Roots, uploads: str | Path | None = None) -> bool:
    """Whether a run's ``dataset`` string reads only data that ``roots`` (and ``uploads``) allow."""
    if roots is None or spec.startswith("torchvision:") or spec.partition("@")[0] in {
            d["name"] for d in list_datasets() if d.get("embedded")}:
        return True
    for folder in (True, False):  # a folder, or a file (a zip, a few-shot list)
        try:
            allowed_path(spec, [*roots, *([uploads] if uploads else [])], folder=folder)
            return True
        except DataError:
            pass
    return False


@dataclass
class SettingsReport:
    """The outcome of :meth:`Preflight.check`.

    Attributes:
        ok: the settings are valid and fit the backbone.
        message: why not (one line), when ``ok`` is False.
        field: the setting at fault, when one is (its path).
        counts: trainable / frozen parameter counts, when ``ok``.
        assumed_classes: the head was counted for this many classes (the data was not read).
        notes: other findings (e.g. what a zip holds).
    """

    ok: bool
    message: str = ""
    field: str | None = None
    counts: ParamCount | None = None
    assumed_classes: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


class Preflight:
    """Checks settings against their backbone and counts parameters, with the built templates cached.

    Args:
        roots: folders server paths (dataset folders, weight files) must be under; None allows any.
        uploads: with ``roots``, the folder of a front end's uploads (zips may come from there).
    """

    def __init__(self, roots: Roots = None, uploads: str | Path | None = None) -> None:
        self.roots = None if roots is None else tuple(Path(os.path.realpath(r)) for r in roots)
        self.uploads = uploads
        self._lock = threading.Lock()
        self._templates = LRU(3)  # (backbone, arch, classes) -> model built without weights
        self._counts = LRU(256)  # (template key, method config) -> ParamCount

    @staticmethod
    def num_classes(dataset: str) -> int | None:
        """Classes of an embedded or listed dataset; None where only reading the data would tell."""
        for d in list_datasets():
            if d["name"] == dataset:
                return int(d["num_classes"])
        return None

    def _template(self, backbone: str, arch: str | None, classes: int) -> Any:
        key = (backbone, arch, classes)
        with self._lock:
            if key in self._templates:
                self._templates.move_to_end(key)
                return self._templates[key]
        model = load_backbone(backbone, classes, pretrained=False, arch=arch).model
        with self._lock:
            return self._templates.put(key, model)

    def count(self, config: TrainConfig, classes: int) -> ParamCount:
        """Check ``config.method`` against the backbone and count its parameters (raises KarstError)."""
        template = self._template(config.backbone, config.backbone_arch, classes)
        check_settings(template, config.method)
        key = (config.backbone, config.backbone_arch, classes, config.method)
        with self._lock:
            counts = self._counts.get(key)
        if counts is None:
            counts = build_method(copy.deepcopy(template), config.method).param_count()
            with self._lock:
                self._counts.put(key, counts)
        return counts

    def config(self, form: Any) -> TrainConfig:
        """``form.to_train_config`` with this checker's data roots (raises KarstError)."""
        return form.to_train_config(self.roots, self.uploads)

    def check(self, form: Any) -> SettingsReport:
        """Validate a :class:`SetupForm` and count parameters; never raises for bad input.

        A zip is checked without extracting it. Unexpected errors propagate (they are bugs).
        """
        notes = []
        try:
            config = self.config(form)
            resolve_device(config.device)
            if form.dataset_source == "zip":
                report = check_zip(config.dataset)
                notes.append(f"Zip checked: {report.images} images in {report.classes} top-level folders.")
            classes = self.num_classes(config.dataset)
            counts = self.count(config, classes or ASSUMED_CLASSES)
        except KarstError as err:
            message = str(err)
            if form.dataset_source == "zip" and form.dataset_zip:  # name the user's file, not the server's path
                message = message.replace(str(form.dataset_zip), Path(form.dataset_zip).name)
            return SettingsReport(False, message, field=getattr(err, "field", None))
        return SettingsReport(True, counts=counts, assumed_classes=None if classes else ASSUMED_CLASSES, notes=notes)
