"""Few-shot FGVC splits in NOAH's layout, loaded from the path of one training list.

The dataset spec of a few-shot run is its training list::

    FGFS/few-shot_split/<dataset>/annotations/train_meta.list.num_shot_<k>.seed_<s>

Validation and test come from ``val_meta.list`` and ``test_meta.list`` next to it; every list reads
``relative/path label`` with paths relative to the image folder ``FGFS/<dataset>/`` (the lists of
NOAH's ``data/few-shot``, as the KARST README lays them out). Lines are parsed and checked like the
VTAB-1K lists (:func:`karst.data.vtab.parse_list`); unreadable images are skipped and counted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from karst.data.vtab import checked_splits, parse_list
from karst.errors import DataError

__all__ = ["is_fewshot_list", "load_fewshot_list"]

_TRAIN_LIST = re.compile(r"^train_meta\.list\.num_shot_\d+\.seed_\d+$")


def is_fewshot_list(path: Path) -> bool:
    """Whether ``path`` names a NOAH few-shot training list (``annotations/train_meta.list.num_shot_K.seed_S``)."""
    return bool(_TRAIN_LIST.match(path.name)) and path.parent.name == "annotations"


def load_fewshot_list(train_list: Path, transform: Callable, *, make_bundle: Callable) -> object:
    """Build a :class:`~karst.data.sources.DatasetBundle` from a few-shot training list.

    Args:
        train_list: ``.../few-shot_split/<dataset>/annotations/train_meta.list.num_shot_K.seed_S``.
        transform: PIL image -> tensor.
        make_bundle: ``sources._finish_bundle`` (passed in to keep the import graph one-way).

    Raises:
        DataError: a missing image folder or list, or a malformed list line.
    """
    annotations = train_list.parent
    dataset = annotations.parent.name
    images_root = annotations.parent.parent.parent / dataset
    if not images_root.is_dir():
        raise DataError(f"few-shot list {train_list.name} expects its images in {images_root}, which is not a "
                        "folder; put FGFS/<dataset>/ next to FGFS/few-shot_split/.")
    files = {"train": train_list, "val": annotations / "val_meta.list", "test": annotations / "test_meta.list"}
    for path in files.values():
        if not path.is_file():
            raise DataError(f"few-shot {dataset} has no {path.name} in {annotations}; copy NOAH's lists there.")
    lists = {split: parse_list(images_root, os.path.relpath(path, images_root)) for split, path in files.items()}
    num_classes = 1 + max(y for items in lists.values() for _, y in items)
    splits, skipped, total = checked_splits(lists)
    class_names = [str(i) for i in range(num_classes)]
    return make_bundle(images_root, class_names, splits, transform, skipped, total, 0, source="fewshot")
