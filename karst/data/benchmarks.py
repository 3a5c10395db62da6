"""Benchmark protocols on disk: VTAB-1K task folders and few-shot FGVC split lists, checked up front.

**VTAB-1K** (Zhai et al. 2019) as the PETL code bases lay it out (VPT's ``VTAB_SETUP.md``, SSF,
NOAH): one folder per task under a root, named as in :data:`VTAB1K_TASKS`, each with
``train800.txt``, ``val200.txt``, ``train800val200.txt`` and ``test.txt`` whose lines read
``relative/path label`` (paths relative to the task folder). The final protocol needs
``train800val200.txt`` and ``test.txt``; the other two are checked when present.

**Few-shot FGVC** as NOAH lays it out and the KARST README describes it::

    FGFS/few-shot_split/<dataset>/annotations/train_meta.list.num_shot_<k>.seed_<s>
    FGFS/few-shot_split/<dataset>/annotations/val_meta.list, test_meta.list
    FGFS/<dataset>/...                  the images, at the paths the lists give

A root may name its own tasks in ``protocol.json`` (the demo suite of :func:`make_demo` does);
otherwise the published task list applies. :func:`check_vtab_root` / :func:`check_fewshot_root`
read a whole root before any training and raise ONE :class:`~karst.errors.DataError` listing every
problem (missing folders and list files, unreadable images, class counts that do not match).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from karst.data import synthetic
from karst.data.safety import check_image
from karst.data.vtab import parse_list
from karst.errors import ConfigError, DataError
from karst.images import MAX_IMAGE_PIXELS

__all__ = [
    "Kind", "ImageCheck", "BenchTask", "Protocol", "VTAB_GROUPS", "VTAB1K_TASKS", "FEWSHOT_TASKS",
    "FEWSHOT_SHOTS", "FEWSHOT_SEEDS", "SPLIT_DIR", "read_protocol", "fewshot_train_list", "check_vtab_root",
    "check_fewshot_root", "make_demo", "DEMO_SIZES",
]  # fmt: skip

Kind = Literal["vtab1k", "fewshot"]
ImageCheck = Literal["header", "full", "none"]

MAX_SHOWN = 20  # problems spelled out in the one error line; the rest are counted


@dataclass(frozen=True)
class BenchTask:
    """One task of a protocol: its canonical folder name, group, class count and accepted aliases."""

    name: str
    group: str
    classes: int
    aliases: tuple[str, ...] = ()

    @property
    def folder_names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


VTAB_GROUPS = ("natural", "specialized", "structured")
# Folder names as the PETL code bases use them; class counts of VTAB-1K. The authors' data/vtab.py
# (Lucenova/KARST) lists the same counts, and names the pets folder oxford_pet: accepted too.
_VTAB = {
    "natural": (("cifar", 100), ("caltech101", 102), ("dtd", 47), ("oxford_flowers102", 102),
                ("oxford_iiit_pet", 37), ("svhn", 10), ("sun397", 397)),
    "specialized": (("patch_camelyon", 2), ("eurosat", 10), ("resisc45", 45), ("diabetic_retinopathy", 5)),
    "structured": (("clevr_count", 8), ("clevr_dist", 6), ("dmlab", 6), ("kitti", 4), ("dsprites_loc", 16),
                   ("dsprites_ori", 16), ("smallnorb_azi", 18), ("smallnorb_ele", 9)),
}
_ALIASES = {"oxford_iiit_pet": ("oxford_pet",)}
VTAB1K_TASKS = tuple(BenchTask(n, g, k, _ALIASES.get(n, ())) for g, rows in _VTAB.items() for n, k in rows)
VTAB_REQUIRED = ("train800val200.txt", "test.txt")
VTAB_OPTIONAL = ("train800.txt", "val200.txt")

# NOAH's data/few-shot folders (ZhangYuanhan-AI/NOAH); "standford-cars" is NOAH's spelling.
FEWSHOT_TASKS = (
    BenchTask("fgvc-aircraft", "fgvc", 100),
    BenchTask("food101", "fgvc", 101),
    BenchTask("oxford-flowers102", "fgvc", 102),
    BenchTask("oxford-pets", "fgvc", 37),
    BenchTask("standford-cars", "fgvc", 196, ("stanford-cars",)),
)
FEWSHOT_SHOTS = (1, 2, 4, 8, 16)
FEWSHOT_SEEDS = (0, 1, 2)
SPLIT_DIR = "few-shot_split"
_TITLES = {"vtab1k": "VTAB-1K", "fewshot": "few-shot FGVC"}


@dataclass(frozen=True)
class Protocol:
    """The tasks a root holds: the published list, or the ones its ``protocol.json`` names."""

    kind: Kind
    title: str
    tasks: tuple[BenchTask, ...]
    official: bool  # the published task list, to which the paper's figures apply

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.group for t in self.tasks))

    def select(self, names: Sequence[str] | None) -> tuple[BenchTask, ...]:
        """The tasks called ``names`` (canonical names or aliases), in protocol order; all if None."""
        if not names:
            return self.tasks
        known = {alias: t for t in self.tasks for alias in t.folder_names}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"--tasks {' '.join(unknown)}: not a task of {self.title}; its tasks are "
                              f"{', '.join(t.name for t in self.tasks)}.")
        wanted = {known[n].name for n in names}
        return tuple(t for t in self.tasks if t.name in wanted)


def read_protocol(kind: Kind, root: str | os.PathLike) -> Protocol:
    """The protocol of ``root``: its ``protocol.json`` if it has one, else the published one.

    ``protocol.json`` reads ``{"protocol": "vtab1k", "title": "...", "tasks": [{"name": "synth-objects",
    "group": "natural", "classes": 10}, ...]}``.
    """
    file = Path(root) / "protocol.json"
    if not file.is_file():
        tasks = VTAB1K_TASKS if kind == "vtab1k" else FEWSHOT_TASKS
        return Protocol(kind, _TITLES[kind], tasks, official=True)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("protocol") != kind:
            raise DataError(f"{file} describes a {data.get('protocol')!r} suite, not {kind!r}; use "
                            f"`karst suite {data.get('protocol')}` or another root.")
        tasks = tuple(BenchTask(str(t["name"]), str(t["group"]), int(t["classes"])) for t in data["tasks"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{file} is not a readable protocol file ({type(err).__name__}); it must hold "
                        '{"protocol": ..., "tasks": [{"name", "group", "classes"}, ...]}.') from None
    if not tasks or any(t.classes < 2 or not t.name or "/" in t.name for t in tasks):
        raise DataError(f"{file} must name at least one task, each a plain folder name with 2 or more classes.")
    return Protocol(kind, str(data.get("title") or _TITLES[kind]), tasks, official=False)


def fewshot_train_list(root: Path, folder: str, shot: int, seed: int) -> Path:
    """The NOAH training list of ``shot`` images per class, split seed ``seed``."""
    return root / SPLIT_DIR / folder / "annotations" / f"train_meta.list.num_shot_{shot}.seed_{seed}"


# ------------------------------------------------------------------------------------------ checks
class _Problems:
    """Problems found while reading a root; raised together as one DataError line."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        self.items.append(text.rstrip(". "))

    def raise_if_any(self, what: str, hint: str) -> None:
        if not self.items:
            return
        shown = "; ".join(self.items[:MAX_SHOWN])
        more = f"; and {len(self.items) - MAX_SHOWN} more" if len(self.items) > MAX_SHOWN else ""
        raise DataError(f"{what} has {len(self.items)} problem(s), nothing was trained: {shown}{more}. {hint}")


def _image_problem(path: Path, mode: ImageCheck) -> str | None:
    """Why ``path`` is not a usable image, or None. "header" reads only the header (fast)."""
    if mode == "none":
        return None
    if mode == "full":
        return check_image(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return "unreadable"
    return "bomb" if width * height > MAX_IMAGE_PIXELS else None


def _check_lists(task: BenchTask, images_root: Path, lists: Iterable[Path], mode: ImageCheck,
                 problems: _Problems) -> None:
    """Parse ``lists`` (paths relative to ``images_root``), check their images and class count."""
    paths: set[Path] = set()
    top, complete = -1, True
    for list_path in lists:
        try:
            items = parse_list(images_root, os.path.relpath(list_path, images_root))
        except DataError as err:
            problems.add(f"{task.name}: {str(err).replace(f' of {images_root}', '')}")
            complete = False
            continue
        paths.update(p for p, _ in items)
        top = max(top, max(y for _, y in items))
    bad = [p for p in sorted(paths) if _image_problem(p, mode)]
    if bad:
        problems.add(f"{task.name}: {len(bad)} unreadable image(s), e.g. {bad[0].relative_to(images_root.resolve())}")
    if complete and top >= 0 and top + 1 != task.classes:
        problems.add(f"{task.name}: the lists use {top + 1} classes (labels 0..{top}) but {task.name} has "
                     f"{task.classes}; is this the right folder")


def _find(root: Path, task: BenchTask) -> str | None:
    return next((n for n in task.folder_names if (root / n).is_dir()), None)


def _require_folder(root: Path, what: str) -> None:
    if not root.is_dir():
        raise DataError(f"--data-root {root} is not a folder; give the folder that holds the {what}.")


def check_vtab_root(root: str | os.PathLike, tasks: Sequence[BenchTask], images: ImageCheck = "header") -> dict:
    """Check every task folder of a VTAB-1K root; returns ``{task name: folder}``.

    Raises:
        DataError: One line listing every problem (the first ``MAX_SHOWN``, then a count).
    """
    root = Path(root)
    _require_folder(root, "VTAB-1K task folders (cifar, caltech101, ...)")
    problems, folders = _Problems(), {}
    for task in tasks:
        name = _find(root, task)
        if name is None:
            problems.add(f"{task.name}: no folder {' or '.join(task.folder_names)}")
            continue
        folder = folders[task.name] = root / name
        missing = [f for f in VTAB_REQUIRED if not (folder / f).is_file()]
        if missing:
            problems.add(f"{task.name}: missing {', '.join(missing)}")
        present = [folder / f for f in (*VTAB_REQUIRED, *VTAB_OPTIONAL) if (folder / f).is_file()]
        _check_lists(task, folder, present, images, problems)
    problems.raise_if_any(f"VTAB-1K root {root}", "Fix them (README: 'Benchmark suites') and run again.")
    return folders


def check_fewshot_root(root: str | os.PathLike, tasks: Sequence[BenchTask], shots: Sequence[int],
                       seeds: Sequence[int], images: ImageCheck = "header") -> dict:
    """Check a few-shot FGVC root (NOAH layout) for these shots and seeds; returns ``{task: folder name}``.

    Raises:
        DataError: One line listing every problem.
    """
    root = Path(root)
    _require_folder(root, f"{SPLIT_DIR}/ and the image folders")
    problems, folders = _Problems(), {}
    for task in tasks:
        name = next((n for n in task.folder_names if (root / SPLIT_DIR / n).is_dir()), None)
        if name is None:
            problems.add(f"{task.name}: no folder {SPLIT_DIR}/{task.name}")
            continue
        folders[task.name] = name
        if not (root / name).is_dir():
            problems.add(f"{task.name}: no image folder {name}")
            continue
        annotations = root / SPLIT_DIR / name / "annotations"
        wanted = [annotations / "val_meta.list", annotations / "test_meta.list",
                  *(fewshot_train_list(root, name, k, s) for k in shots for s in seeds)]
        missing = [p.name for p in wanted if not p.is_file()]
        if missing:
            extra = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            problems.add(f"{task.name}: missing {', '.join(missing[:3])}{extra} in {SPLIT_DIR}/{name}/annotations")
        _check_lists(task, root / name, [p for p in wanted if p.is_file()], images, problems)
    problems.raise_if_any(f"few-shot root {root}", "Fix them (README: 'Benchmark suites') and run again.")
    return folders


# -------------------------------------------------------------------------------------------- demo
DEMO_SIZES = (80, 20, 100)  # train, val, test images per task: the whole protocol in minutes on 2 cores
_DEMO_TASKS = ("synth-objects", "synth-textures", "synth-count", "synth-orientation")


def _round_robin(labels: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` indices taking one image of each class in turn (every class early on)."""
    rank = np.zeros(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        rank[i] = seen.get(y, 0)
        seen[y] = rank[i] + 1
    return np.lexsort((labels, rank))[:n]


def _write_images(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, idx: Sequence[int]) -> list[str]:
    """PNG files ``images/<split>/NNNNNN.png`` numbered in list order, as NOAH's get_vtab1k.py names them."""
    (folder / "images" / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for k, i in enumerate(idx):
        rel = f"images/{split}/{k:06d}.png"
        Image.fromarray(images[i]).save(folder / rel)
        lines.append(f"{rel} {int(labels[i])}")
    return lines


def _write_list(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _demo_vtab_task(root: Path, made: synthetic.EmbeddedTask, sizes: Sequence[int]) -> None:
    """One task folder as the PETL code bases make it: images/<list>/ and <list>.txt for each of the four lists."""
    folder = root / made.spec.name
    picked = {split: (*made.splits[split], _round_robin(made.splits[split][1], n))
              for split, n in zip(("train", "val", "test"), sizes)}
    union = [np.concatenate([picked[s][i][picked[s][2]] for s in ("train", "val")]) for i in (0, 1)]
    for name, (images, labels, idx) in {"train800": picked["train"], "val200": picked["val"],
                                        "train800val200": (*union, np.arange(len(union[1]))),
                                        "test": picked["test"]}.items():
        _write_list(folder / f"{name}.txt", _write_images(folder, name, images, labels, idx))
    _write_list(folder / "classnames.txt", made.spec.class_names)


def _demo_fewshot_task(root: Path, made: synthetic.EmbeddedTask, sizes: Sequence[int]) -> None:
    name, k = made.spec.name, len(made.spec.class_names)
    annotations = root / SPLIT_DIR / name / "annotations"
    images, labels = made.splits["train"]
    pool = _round_robin(labels, max(FEWSHOT_SHOTS) * k)  # 16 training images per class
    lines = dict(zip(pool.tolist(), _write_images(root / name, "train", images, labels, pool)))
    for seed in FEWSHOT_SEEDS:
        order = np.random.default_rng(seed).permutation(pool)
        for shot in FEWSHOT_SHOTS:
            picked = [i for c in range(k) for i in [j for j in order if labels[j] == c][:shot]]
            _write_list(fewshot_train_list(root, name, shot, seed), [lines[i] for i in picked])
    for split, n in (("val", sizes[1]), ("test", sizes[2])):
        images, labels = made.splits[split]
        _write_list(annotations / f"{split}_meta.list",
                    _write_images(root / name, split, images, labels, _round_robin(labels, n)))


def make_demo(root: str | os.PathLike, kind: Kind = "vtab1k", sizes: Sequence[int] = DEMO_SIZES,
              seed: int = 0) -> Protocol:
    """Write a small suite from the embedded generators in exactly the ``kind`` layout, plus its ``protocol.json``.

    Args:
        root: an empty or new folder.
        kind: "vtab1k" (task folders with the four lists) or "fewshot" (NOAH's layout, 1–16 shots × 3 seeds).
        sizes: train, val and test images per task (few-shot: val and test; training lists take
            1–16 images per class from a pool of 16 per class).
        seed: generator seed of the embedded tasks.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"make-demo: {root} exists and is not an empty folder; give a new folder.")
    limits = synthetic.SPLIT_SIZES.values()
    if len(sizes) != 3 or any(not 10 <= n <= top for n, top in zip(sizes, limits)):
        raise ConfigError(f"--images {' '.join(map(str, sizes))}: give three counts (train, val, test), each "
                          f"from 10 (every class appears) up to {'/'.join(map(str, limits))}.")
    tasks = []
    for name in _DEMO_TASKS:
        made = synthetic.make_task(name, seed)
        (_demo_vtab_task if kind == "vtab1k" else _demo_fewshot_task)(root, made, sizes)
        tasks.append({"name": name, "group": made.spec.group if kind == "vtab1k" else "fgvc",
                      "classes": len(made.spec.class_names), "source": f"embedded generator {name}@{seed}"})
    title = f"KARST Studio demo in the {_TITLES[kind]} layout (embedded generators)"
    meta: dict[str, Any] = {"protocol": kind, "title": title, "tasks": tasks, "sizes": list(sizes)}
    (root / "protocol.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return read_protocol(kind, root)
