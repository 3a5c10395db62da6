"""Dataset sources: embedded tasks, image folders, zips, VTAB-1K folders and torchvision sets.

:func:`load_dataset` turns a spec string into a :class:`DatasetBundle` of three torch datasets
yielding ``(tensor, int)``:

=============================  ==============================================================
spec                           source
=============================  ==============================================================
``synth-objects`` (``@seed``)  embedded procedural task (``karst.data.synthetic``)
``path/to/folder``             one sub-folder per class, ``train/ val/ test/`` when present
``path/to/data.zip``           such a folder zipped; extracted safely to a cache folder
``path/to/vtab-task``          PETL VTAB-1K lists: ``train800.txt``, ``val200.txt``, ``test.txt``
``.../train_meta.list.num_…``  a NOAH few-shot training list (``karst.data.fewshot``)
``torchvision:CIFAR100``       a torchvision dataset, downloaded into a cache folder when online
=============================  ==============================================================

Unreadable, truncated or oversized images are skipped and counted (``bundle.skipped``); other
files are ignored and counted (``bundle.ignored``). Anything that leaves too little to train on
raises one :class:`~karst.errors.DataError` line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from karst.data import fewshot, synthetic
from karst.data.safety import IMAGE_SUFFIXES, check_image, load_image, safe_extract_zip, to_rgb
from karst.data.splits import seeded_split
from karst.data.vtab import load_vtab_folder
from karst.errors import DataError

__all__ = ["DatasetBundle", "list_datasets", "load_dataset"]

Transform = Callable[[Image.Image], torch.Tensor]
Source = Literal["embedded", "folder", "zip", "vtab", "fewshot", "torchvision"]

MAX_SKIPPED_FRACTION = 0.5  # more unreadable images than this means the wrong folder, not bad luck
VTAB_LISTS = ("train800val200.txt", "train800.txt", "val200.txt", "test.txt")
TORCHVISION_SETS = {
    "CIFAR10": ("10 classes of 32 px natural images (about 170 MB download)", 10),
    "CIFAR100": ("100 classes of 32 px natural images (about 170 MB download)", 100),
    "MNIST": ("handwritten digits, grayscale 28 px", 10),
    "FashionMNIST": ("clothing items, grayscale 28 px", 10),
    "SVHN": ("street-view house numbers, 32 px", 10),
}


# ----------------------------------------------------------------------------------------------
# Datasets


class ArrayImageDataset(Dataset):
    """uint8 images ``(N, H, W, 3)`` and labels in memory; transformed lazily and memoised.

    Memoising is valid because the backbone transform is deterministic (no augmentation, as in
    the PETL literature); it makes every epoch after the first nearly free.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform):
        self.images, self.labels, self.transform = images, labels, transform
        self._cache: list[torch.Tensor | None] = [None] * len(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._cache[i]
        if x is None:
            x = self._cache[i] = self.transform(self.image(i))
        return x, int(self.labels[i])


class FileImageDataset(Dataset):
    """Image files (already checked by :func:`check_image`) and their labels."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Transform):
        self.paths, self.labels, self.transform = list(paths), [int(v) for v in labels], transform

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        return load_image(self.paths[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.image(i)), self.labels[i]


class IndexedDataset(Dataset):
    """A subset of an indexable source of ``(PIL image, label)`` pairs (torchvision sets)."""

    def __init__(self, base: Any, indices: Sequence[int], transform: Transform):
        self.base, self.indices, self.transform = base, list(indices), transform
        targets = getattr(base, "targets", None)
        if targets is None:
            targets = getattr(base, "labels", None)
        self.labels = [int(targets[i]) for i in self.indices] if targets is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> Image.Image:
        img = self.base[self.indices[i]][0]
        return to_rgb(img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[self.indices[i]]
        img = to_rgb(img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img)))
        return self.transform(img), int(label)


@dataclass
class DatasetBundle:
    """Three splits of one dataset and what the UI needs to show it.

    Attributes:
        name: The spec it was loaded from (embedded name, path or ``torchvision:NAME``).
        class_names: Human-readable class names; the label ``i`` means ``class_names[i]``.
        train, val, test: Datasets yielding ``(tensor, int)``.
        skipped: Images skipped because unreadable, truncated or too large.
        source: Where it came from.
        ignored: Non-image files ignored.
        description: One line for listings.
    """

    name: str
    class_names: list[str]
    train: Dataset
    val: Dataset
    test: Dataset
    skipped: int = 0
    source: Source = "embedded"
    ignored: int = 0
    description: str = ""
    root: Path | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def example_images(self, n: int = 8) -> list[Image.Image]:
        """Up to ``n`` RGB training images, cycling over classes so each one appears."""
        return [image for image, _ in self.labelled_examples(n)]

    def labelled_examples(self, n: int = 8) -> list[tuple[Image.Image, str | None]]:
        """Up to ``n`` (RGB training image, its class name) pairs, cycling over classes so each one
        appears; the name is None for a source that does not list its labels."""
        ds = self.train
        labels = getattr(ds, "labels", None)
        if labels is None:
            order = list(range(min(n, len(ds))))
        else:
            by_class: dict[int, list[int]] = {}
            for i, y in enumerate(labels):
                by_class.setdefault(int(y), []).append(i)
            queues = [v for _, v in sorted(by_class.items())]
            order = []
            depth = 0
            while len(order) < min(n, len(ds)):
                order += [q[depth] for q in queues if depth < len(q)][: n - len(order)]
                depth += 1
        return [(ds.image(i), None if labels is None else self.class_names[int(labels[i])]) for i in order]


# ----------------------------------------------------------------------------------------------
# Entry points


def _existing_path(name: str) -> Path:
    """``name`` as an existing file or folder, or a DataError saying what it could have been."""
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError:  # a name the file system refuses (too long...): no such file either
        exists = False
    if not exists:
        hint = (
            f"embedded tasks are {', '.join(synthetic.TASKS)}"
            if os.sep not in name and "." not in name
            else "check the path"
        )
        raise DataError(f"Dataset {name[:200]!r} is neither an embedded task nor an existing file or folder; {hint}.")
    return path


def load_dataset(
    spec: str | os.PathLike,
    *,
    transform: Transform,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> DatasetBundle:
    """Load a dataset from a spec (see the module docstring).

    Args:
        spec: Embedded task name (``synth-objects``, optionally ``synth-objects@3`` for another
            generator seed), a folder, a ``.zip``, a VTAB-1K folder or ``torchvision:NAME``.
        transform: PIL image -> tensor, usually ``backbone.transform()``.
        seed: Seed of the train/val/test split for sources that have no fixed split. Embedded
            tasks keep their fixed data (like VTAB-1K's fixed splits) whatever this seed is.
        cache_dir: Where zips are extracted and torchvision sets downloaded (default: a
            ``karst-datasets`` folder under the system temp dir, ``~/.cache/karst`` for torchvision).

    Returns:
        The :class:`DatasetBundle`.

    Raises:
        DataError: One line saying what was given, why it cannot be used and what to try.
    """
    name = str(spec).strip()
    if not name:
        raise DataError(
            f"An empty dataset was given; choose an embedded task ({', '.join(synthetic.TASKS)}) or a folder."
        )
    task, _, data_seed = name.partition("@")
    if task in synthetic.TASKS:
        return _load_embedded(task, data_seed, transform)
    if name.lower().startswith("torchvision:"):
        return _load_torchvision(name.split(":", 1)[1], transform, seed, cache_dir)
    path = _existing_path(name)
    if path.is_file() and fewshot.is_fewshot_list(path):
        bundle = fewshot.load_fewshot_list(path, transform, make_bundle=_finish_bundle)
        bundle.name = name
        return bundle
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise DataError(
                f"Dataset {name!r} is a file but not a .zip; "
                "give a folder with one sub-folder per class, or a zip of it."
            )
        root = _single_top_folder(safe_extract_zip(path, cache_dir))
        bundle = _load_folder_like(root, transform, seed)
        bundle.name, bundle.source = name, "zip"
        return bundle
    bundle = _load_folder_like(path, transform, seed)
    bundle.name = name
    return bundle


def list_datasets() -> list[dict[str, Any]]:
    """Embedded tasks first, then the named torchvision sets.

    Returns:
        One dict per dataset with ``name``, ``embedded``, ``description``, ``num_classes`` and,
        for embedded tasks, ``group`` (VTAB group by analogy) and ``sizes``.
    """
    items: list[dict[str, Any]] = [
        {
            "name": t.name,
            "embedded": True,
            "description": t.description,
            "num_classes": len(t.class_names),
            "group": t.group,
            "sizes": dict(synthetic.SPLIT_SIZES),
        }
        for t in synthetic.TASKS.values()
    ]
    for tv, (desc, k) in TORCHVISION_SETS.items():
        items.append({"name": f"torchvision:{tv}", "embedded": False, "description": desc, "num_classes": k})
    return items


# ----------------------------------------------------------------------------------------------
# Embedded


def _load_embedded(task: str, data_seed: str, transform: Transform) -> DatasetBundle:
    try:
        seed = int(data_seed) if data_seed else 0
    except ValueError:
        raise DataError(f"Dataset '{task}@{data_seed}' has a seed that is not an integer; use e.g. {task}@1.") from None
    made = synthetic.make_task(task, seed)
    splits = {k: ArrayImageDataset(x, y, transform) for k, (x, y) in made.splits.items()}
    return DatasetBundle(
        name=task if not data_seed else f"{task}@{seed}",
        class_names=list(made.spec.class_names),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        source="embedded",
        description=made.spec.description,
    )


# ----------------------------------------------------------------------------------------------
# Folders and VTAB lists


def _visible(p: Path) -> bool:
    return not p.name.startswith((".", "__MACOSX"))


def _single_top_folder(root: Path) -> Path:
    """A zip often holds one top folder around the dataset: step into it."""
    entries = [p for p in root.iterdir() if _visible(p)]
    if len(entries) == 1 and entries[0].is_dir() and not (root / "test.txt").exists():
        inner = entries[0]
        # Step in unless the single folder is itself a class or split folder of a bigger layout.
        if any(c.is_dir() for c in inner.iterdir() if _visible(c)) or any((inner / f).exists() for f in VTAB_LISTS):
            return inner
    return root


def _load_folder_like(root: Path, transform: Transform, seed: int) -> DatasetBundle:
    if not root.is_dir():
        raise DataError(f"Dataset path {root} is not a folder; give a folder with one sub-folder per class.")
    if any((root / f).is_file() for f in VTAB_LISTS):
        return load_vtab_folder(root, transform, seed, make_bundle=_finish_bundle)
    return _load_image_folder(root, transform, seed)


def _scan_class_folders(split_dir: Path) -> tuple[dict[str, list[Path]], int]:
    """Image files per class sub-folder (recursively) and the count of non-image files."""
    classes: dict[str, list[Path]] = {}
    ignored = 0
    for cdir in sorted(p for p in split_dir.iterdir() if p.is_dir() and _visible(p)):
        files = []
        for f in sorted(cdir.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(cdir).parts):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
            else:
                ignored += 1
        classes[cdir.name] = files
    ignored += sum(1 for p in split_dir.iterdir() if p.is_file() and _visible(p))
    return classes, ignored


def _check_files(files: list[Path]) -> tuple[list[Path], int]:
    good = [f for f in files if check_image(f) is None]
    return good, len(files) - len(good)


def _load_image_folder(root: Path, transform: Transform, seed: int) -> DatasetBundle:
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" in split_dirs:
        scanned = {s: _scan_class_folders(d) for s, d in split_dirs.items()}
    else:
        scanned = {"all": _scan_class_folders(root)}
    base = scanned.get("train", scanned.get("all"))
    class_names = sorted(c for c, files in base[0].items() if files)
    if not base[0]:
        raise DataError(
            f"Folder {root} has no class sub-folders; put the images of each class in their own sub-folder."
        )
    if not class_names:
        raise DataError(
            f"Folder {root} has class sub-folders but no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); add images."
        )
    if len(class_names) < 2:
        raise DataError(
            f"Folder {root} has a single class ({class_names[0]!r}); a classifier needs at least two class sub-folders."
        )
    index = {c: i for i, c in enumerate(class_names)}
    ignored = sum(ign for _, ign in scanned.values())
    skipped = 0
    total = 0
    splits: dict[str, tuple[list[Path], list[int]]] = {}
    for split, (classes, _) in scanned.items():
        paths, labels = [], []
        for cname, files in classes.items():
            if cname not in index:
                if files:
                    raise DataError(
                        f"Folder {root / split} has class {cname!r} that the train split lacks; "
                        "use the same class sub-folders in every split."
                    )
                continue
            good, bad = _check_files(files)
            skipped += bad
            total += len(files)
            paths += good
            labels += [index[cname]] * len(good)
        splits[split] = (paths, labels)
    if "all" in splits:
        splits = seeded_split(*splits.pop("all"), seed, ("train", "val", "test"))
    elif "val" not in splits or "test" not in splits:
        missing = tuple(s for s in ("val", "test") if s not in splits)
        extra = seeded_split(*splits.pop("train"), seed, ("train", *missing))
        splits.update(extra)
    return _finish_bundle(root, class_names, splits, transform, skipped, total, ignored, source="folder")


def _finish_bundle(
    root: Path,
    class_names: list[str],
    splits: dict[str, tuple[list[Path], list[int]]],
    transform: Transform,
    skipped: int,
    total: int,
    ignored: int,
    *,
    source: Source,
) -> DatasetBundle:
    """Check that enough readable images remain, then wrap each split in a dataset."""
    if total and skipped > MAX_SKIPPED_FRACTION * total:
        raise DataError(
            f"Dataset {root}: {skipped} of {total} images are unreadable, truncated or too large; "
            "too few remain, check that the files are really images."
        )
    for split in ("train", "val", "test"):
        if not splits.get(split, ([], []))[0]:
            raise DataError(
                f"Dataset {root}: the {split} split has no readable images ({skipped} skipped); "
                "add images (at least 3 per class without split folders)."
            )
    present = set(splits["train"][1])
    if len(present) < 2:
        raise DataError(
            f"Dataset {root}: fewer than two classes have readable training images; add images to the other classes."
        )
    return DatasetBundle(
        name=str(root),
        class_names=class_names,
        train=FileImageDataset(*splits["train"], transform),
        val=FileImageDataset(*splits["val"], transform),
        test=FileImageDataset(*splits["test"], transform),
        skipped=skipped,
        source=source,
        ignored=ignored,
        description=f"{len(class_names)} classes from {root}",
        root=root,
    )


# ----------------------------------------------------------------------------------------------
# torchvision


def _load_torchvision(name: str, transform: Transform, seed: int, cache_dir: str | os.PathLike | None) -> DatasetBundle:
    import torchvision.datasets as tvd  # local: ~1.5 s to import, and only torchvision:NAME specs need it

    cls = getattr(tvd, name, None)
    if not isinstance(cls, type) or not issubclass(cls, torch.utils.data.Dataset):
        known = ", ".join(f"torchvision:{k}" for k in TORCHVISION_SETS)
        raise DataError(f"torchvision:{name} is not a torchvision dataset class; try one of {known}.")
    root = (
        Path(cache_dir)
        if cache_dir
        else Path(os.environ.get("KARST_DATA_DIR", Path.home() / ".cache" / "karst" / "datasets"))
    )
    offline = os.environ.get("KARST_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"

    def build(split: str, download: bool) -> Any:
        kwargs: dict[str, Any] = {"root": str(root / name), "download": download}
        try:
            return cls(train=(split == "train"), **kwargs)
        except TypeError:
            return cls(split=split, **kwargs)

    parts = {}
    for split in ("train", "test"):
        try:
            try:
                parts[split] = build(split, download=False)
            except (RuntimeError, OSError):
                if offline:
                    raise
                parts[split] = build(split, download=True)
        except (RuntimeError, OSError, ValueError, TypeError) as err:
            reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            raise DataError(
                f"torchvision:{name} ({split}) is not in {root / name} and could not be downloaded ({reason}); "
                "connect to the internet once, or use an embedded task or an image folder."
            ) from err
    train_base, test_base = parts["train"], parts["test"]
    targets = getattr(train_base, "targets", None)
    if targets is None:
        targets = getattr(train_base, "labels", None)
    labels = (
        [int(v) for v in targets] if targets is not None else [int(train_base[i][1]) for i in range(len(train_base))]
    )
    split = seeded_split(list(range(len(labels))), labels, seed, ("train", "val"))
    classes = [str(c) for c in getattr(train_base, "classes", [])] or [str(i) for i in range(max(labels) + 1)]
    return DatasetBundle(
        name=f"torchvision:{name}",
        class_names=classes,
        train=IndexedDataset(train_base, split["train"][0], transform),
        val=IndexedDataset(train_base, split["val"][0], transform),
        test=IndexedDataset(test_base, range(len(test_base)), transform),
        source="torchvision",
        description=TORCHVISION_SETS.get(name, (f"torchvision {name}", 0))[0],
        root=root / name,
    )
