"""Seeded, stratified splits of one labelled list, shared by the folder and VTAB-1K loaders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SPLIT_FRACTIONS", "seeded_split"]

SPLIT_FRACTIONS = {"val": 0.1, "test": 0.2}  # held-out shares when a folder has no split sub-folders


def seeded_split(
    items: Sequence[Any],
    labels: Sequence[int],
    seed: int,
    names: tuple[str, ...],
    fractions: Mapping[str, float] = SPLIT_FRACTIONS,
) -> dict[str, tuple[list, list[int]]]:
    """Stratified split of ``items`` into ``names`` (train first).

    Args:
        items: what to split (paths, indices...), parallel to ``labels``.
        labels: integer class of each item.
        seed: the same seed gives the same split.
        names: split names; the first takes what the others leave.
        fractions: share of each class for every split but the first.

    Returns:
        ``{name: (items, labels)}``. A class of at least ``len(names)`` items puts at least one
        item in every held-out split.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[list, list[int]]] = {n: ([], []) for n in names}
    labels_arr = np.asarray(labels)
    for c in np.unique(labels_arr):
        idx = rng.permutation(np.flatnonzero(labels_arr == c))
        start = 0
        for n in names[1:]:
            k = max(1 if len(idx) >= len(names) else 0, int(round(fractions[n] * len(idx))))
            for i in idx[start : start + k]:
                out[n][0].append(items[i])
                out[n][1].append(int(c))
            start += k
        for i in idx[start:]:
            out[names[0]][0].append(items[i])
            out[names[0]][1].append(int(c))
    return out
