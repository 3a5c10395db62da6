"""VTAB-1K task folders in the format used by the PETL literature.

A task folder holds image files and list files whose lines read ``relative/path label``:
``train800.txt`` and ``val200.txt`` (the VTAB-1K train/val split), ``train800val200.txt`` (their
union) and ``test.txt``. Train and val come from the first two lists when present, otherwise from
a seeded 80/20 split of the union. An optional ``classnames.txt`` (one name per line, in label
order) gives readable class names.

A line that cannot be parsed, carries a bad label or points outside the folder or to nothing is
an error naming the list file and line number; an existing file that is not a readable image is
skipped and counted like in an image folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from karst.data.safety import check_image
from karst.data.splits import seeded_split
from karst.errors import DataError

__all__ = ["load_vtab_folder", "parse_list", "checked_splits"]


def parse_list(root: Path, list_name: str) -> list[tuple[Path, int]]:
    """Parse one list file of ``root``; every path must exist inside ``root``.

    Raises:
        DataError: Naming the file and the line that is wrong.
    """
    list_path = root / list_name
    try:
        text = list_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{list_path} could not be read ({type(err).__name__}); it must be a UTF-8 text file.") from err
    base = root.resolve()
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)  # paths may contain spaces, labels may not
        where = f"{list_name} line {lineno}"
        if len(parts) != 2:
            raise DataError(f"{where} of {root} reads {line[:60]!r}; each line must be 'relative/path label'.")
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise DataError(
                f"{where} of {root} has label {label_text[:20]!r}, not an integer; labels are 0, 1, 2, ..."
            ) from None
        if label < 0:
            raise DataError(f"{where} of {root} has negative label {label}; labels are 0, 1, 2, ...")
        if Path(rel).is_absolute():
            raise DataError(
                f"{where} of {root} has absolute path {rel[:60]!r}; paths must be relative to the task folder."
            )
        full = (root / rel).resolve()
        if not full.is_relative_to(base):
            raise DataError(
                f"{where} of {root} points outside the task folder ({rel[:60]!r}); paths must stay inside it."
            )
        if not full.is_file():
            raise DataError(
                f"{where} of {root} points to {rel[:60]!r}, which does not exist; fix the list or add the file."
            )
        out.append((full, label))
    if not out:
        raise DataError(f"{list_path} lists no images; each line must be 'relative/path label'.")
    return out


def load_vtab_folder(root: Path, transform: Callable, seed: int, *, make_bundle: Callable) -> object:
    """Build a :class:`~karst.data.sources.DatasetBundle` from a VTAB-1K folder.

    Args:
        root: The task folder.
        transform: PIL image -> tensor.
        seed: Seed of the 80/20 train/val split when only ``train800val200.txt`` is given.
        make_bundle: ``sources._finish_bundle`` (passed in to keep the import graph one-way).
    """
    if not (root / "test.txt").is_file():
        raise DataError(
            f"VTAB folder {root} has no test.txt; a VTAB-1K task needs test.txt and train800.txt/val200.txt."
        )
    lists: dict[str, list[tuple[Path, int]]] = {}
    if (root / "train800.txt").is_file() and (root / "val200.txt").is_file():
        lists["train"] = parse_list(root, "train800.txt")
        lists["val"] = parse_list(root, "val200.txt")
    elif (root / "train800val200.txt").is_file():
        union = parse_list(root, "train800val200.txt")
        split = seeded_split([p for p, _ in union], [y for _, y in union], seed, ("train", "val"), {"val": 0.2})
        lists["train"] = list(zip(*split["train"]))
        lists["val"] = list(zip(*split["val"]))
    else:
        raise DataError(
            f"VTAB folder {root} has test.txt but no train800.txt + val200.txt nor train800val200.txt; add them."
        )
    lists["test"] = parse_list(root, "test.txt")

    num_classes = 1 + max(y for items in lists.values() for _, y in items)
    class_names = [str(i) for i in range(num_classes)]
    names_file = root / "classnames.txt"
    if names_file.is_file():
        names = [n.strip() for n in names_file.read_text(encoding="utf-8", errors="replace").splitlines() if n.strip()]
        if len(names) < num_classes:
            raise DataError(
                f"{names_file} has {len(names)} names but the lists use {num_classes} labels; give one name per label."
            )
        class_names = names[:num_classes]

    splits, skipped, total = checked_splits(lists)
    return make_bundle(root, class_names, splits, transform, skipped, total, 0, source="vtab")


def checked_splits(lists: dict[str, list[tuple[Path, int]]]) -> tuple[dict[str, tuple[list, list]], int, int]:
    """Per split, the (paths, labels) of the listed images that read as images; and skipped, total counts."""
    splits, skipped, total = {}, 0, 0
    for split, items in lists.items():
        good = [(p, y) for p, y in items if check_image(p) is None]
        skipped += len(items) - len(good)
        total += len(items)
        splits[split] = ([p for p, _ in good], [y for _, y in good])
    return splits, skipped, total
