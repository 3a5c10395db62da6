"""Embedded procedural tasks and the pre-training corpus: sizes, balance, determinism, speed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from karst.data import list_datasets, load_dataset
from karst.data.synthetic import PRETRAIN_HEADS, SPLIT_SIZES, TASKS, make_task, pretrain_batch
from karst.errors import DataError

REQUIRED = ("synth-objects", "synth-textures", "synth-count", "synth-orientation")


def test_required_tasks_exist_with_groups():
    assert set(REQUIRED) <= set(TASKS)
    groups = {TASKS[n].group for n in REQUIRED}
    assert groups == {"natural", "specialized", "structured"}
    assert TASKS["synth-objects"].group == "natural"


@pytest.mark.parametrize("name", REQUIRED)
def test_task_splits_are_vtab_sized_balanced_and_readable(name):
    task = make_task(name, 0)
    k = len(task.spec.class_names)
    assert k >= 4 and len(set(task.spec.class_names)) == k
    assert all(isinstance(c, str) and c for c in task.spec.class_names)
    for split, size in SPLIT_SIZES.items():
        x, y = task.splits[split]
        assert x.shape == (size, 32, 32, 3) and x.dtype == np.uint8
        assert y.shape == (size,) and y.min() == 0 and y.max() == k - 1
        counts = np.bincount(y, minlength=k)
        assert counts.max() - counts.min() <= 1  # balanced like VTAB-1K's fixed splits
        assert x.std() > 10  # not blank
    assert SPLIT_SIZES == {"train": 800, "val": 200, "test": 1000}


@pytest.mark.parametrize("name", REQUIRED)
def test_same_seed_same_arrays_different_seed_differs(name):
    a = make_task(name, 0)
    make_task.cache_clear()  # regenerate rather than hit the in-process cache
    b = make_task(name, 0)
    c = make_task(name, 1)
    for split in SPLIT_SIZES:
        assert np.array_equal(a.splits[split][0], b.splits[split][0])
        assert np.array_equal(a.splits[split][1], b.splits[split][1])
        assert not np.array_equal(a.splits[split][0], c.splits[split][0])
    # Splits are drawn independently: the test set is not a copy of the training set.
    assert not np.array_equal(a.splits["train"][0][:200], a.splits["val"][0])


def test_task_is_cached_and_arrays_are_read_only():
    a = make_task("synth-count", 0)
    assert make_task("synth-count", 0) is a
    with pytest.raises(ValueError):
        a.splits["train"][0][0, 0, 0, 0] = 1


def test_unknown_task_is_a_one_line_error():
    with pytest.raises(DataError, match="synth-objects") as err:
        make_task("synth-nope", 0)
    assert "\n" not in str(err.value)


def test_pretrain_batch_labels_cover_heads_and_are_deterministic():
    x1, y1 = pretrain_batch(np.random.default_rng(3), 256)
    x2, y2 = pretrain_batch(np.random.default_rng(3), 256)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (256, 32, 32, 3) and y1.shape == (256, len(PRETRAIN_HEADS))
    for j, classes in enumerate(PRETRAIN_HEADS.values()):
        assert set(np.unique(y1[:, j])) <= set(range(len(classes)))
        assert len(np.unique(y1[:, j])) == len(classes)  # every class occurs in a batch this size


def test_load_dataset_embedded_bundle():
    def transform(img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255.0

    b = load_dataset("synth-orientation", transform=transform, seed=5)
    assert b.source == "embedded" and b.skipped == 0
    assert (len(b.train), len(b.val), len(b.test)) == (800, 200, 1000)
    x, y = b.train[3]
    assert x.shape == (3, 32, 32) and isinstance(y, int)
    # The split seed does not change an embedded task's fixed data (like VTAB-1K's fixed lists).
    again = load_dataset("synth-orientation", transform=transform, seed=0)
    assert torch.equal(again.train[3][0], x)
    other = load_dataset("synth-orientation@2", transform=transform)
    assert not torch.equal(other.train[3][0], x)
    examples = b.example_images(10)
    assert len(examples) == 10 and all(im.mode == "RGB" for im in examples)
    assert len({b.train.labels[i] for i in range(8)}) > 1


def test_bad_embedded_seed_suffix():
    with pytest.raises(DataError, match="not an integer"):
        load_dataset("synth-count@x", transform=None)


def test_list_datasets_embedded_first_with_fields():
    items = list_datasets()
    flags = [d["embedded"] for d in items]
    assert flags == sorted(flags, reverse=True) and flags[0]
    for d in items:
        assert {"name", "embedded", "description", "num_classes"} <= set(d)
        if d["embedded"]:
            assert d["group"] in {"natural", "specialized", "structured"}
    assert "torchvision:CIFAR100" in [d["name"] for d in items]
