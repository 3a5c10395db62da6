"""Before a launch: a settings form's values as a TrainConfig, and whether they fit the backbone.

The app's Setup form is :class:`SetupForm`: where the backbone and the data come from (widgets
that become ``backbone`` / ``dataset`` strings) plus the settings in :data:`FORM_SETTINGS`, whose
fields, defaults, labels and help come from ``karst.config``. :class:`Preflight` builds the
backbone without weights (cached) to check N/m/r against every targeted layer and count parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._cache import LRU
from .backbones import load_backbone
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
           "dataset_spec", "ASSUMED_CLASSES", "BackboneSource", "DatasetSource"]

BackboneSource = Literal["catalogue", "file"]
DatasetSource = Literal["embedded", "folder", "vtab", "zip", "torchvision"]

# The settings the app's form shows (every other one keeps its default there; the CLI and a JSON
# config reach all of them).
FORM_SETTINGS: tuple[str, ...] = (
    "pretrained", "method.name", "method.adapter.n_kernels", "method.adapter.stack_dim", "method.adapter.rank",
    "method.adapter.rescale", "lr", "epochs", "batch_size", "seed", "device", "max_train_samples", "probe_size",
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


def _to_train_config(self: Any) -> TrainConfig:
    """Validate and convert; raises ConfigError/DataError with a one-line message."""
    backbone, arch = backbone_spec(self.backbone_source, self.backbone, self.weights_path, self.weights_arch)
    dataset = dataset_spec(self.dataset_source, self.dataset, self.dataset_path, self.dataset_zip,
                           self.torchvision_name)
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


def backbone_spec(source: BackboneSource, name: str, weights_path: str, arch: str) -> tuple[str, str | None]:
    """The ``(backbone, backbone_arch)`` pair of a TrainConfig from the backbone widgets."""
    if source == "file":
        path = (weights_path or "").strip()
        if not path:
            raise ConfigError("local weights file is empty; enter the path of a .safetensors/.pth file on the server.")
        if not Path(path).is_file():
            raise BackboneError(f"weights file {path!r} does not exist on the server; check the path.")
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
    """Checks settings against their backbone and counts parameters, with the built templates cached."""

    def __init__(self) -> None:
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

    def check(self, form: Any) -> SettingsReport:
        """Validate a :class:`SetupForm` and count parameters; never raises for bad input.

        A zip is checked without extracting it. Unexpected errors propagate (they are bugs).
        """
        notes = []
        try:
            config = form.to_train_config()
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
