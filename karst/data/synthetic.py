"""Procedural images: the pre-training corpus and the embedded VTAB-1K-style downstream tasks.

Everything is generated from a seed with vectorised numpy (no files, no network), so a fresh
machine can run a real adaptation at once. Images are 32×32 RGB uint8, ``(N, 32, 32, 3)``.

* The **pre-training corpus** (:func:`pretrain_batch`) shows one primitive shape on a textured
  background with clutter strokes, and labels five factors at once (shape, colour, background
  texture, position, scale): generic features the downstream tasks can reuse.
* The **downstream tasks** (:data:`TASKS`) follow VTAB's three groups by analogy and differ from
  the corpus: ``synth-objects`` (natural-like: fruit-like objects under a fixed shift of colour,
  contrast and noise statistics), ``synth-textures`` (specialized-like), ``synth-count`` and
  ``synth-orientation`` (structured). Each has 800 train, 200 val and 1,000 test images.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from karst.data import _render as R
from karst.errors import DataError

__all__ = [
    "IMAGE_SIZE",
    "PRETRAIN_HEADS",
    "SPLIT_SIZES",
    "TASKS",
    "EmbeddedTask",
    "TaskSpec",
    "make_task",
    "pretrain_batch",
]

IMAGE_SIZE = R.SIZE
SPLIT_SIZES = {"train": 800, "val": 200, "test": 1000}

Generator = Callable[[np.random.Generator, np.ndarray], np.ndarray]
"""Draws images for given labels: ``(rng, labels (N,)) -> uint8 (N, S, S, 3)``."""

# ----------------------------------------------------------------------------------------------
# Backgrounds


BACKGROUNDS = ("plain", "stripes", "checker", "dots", "clouds")


def _backgrounds(rng: np.random.Generator, kinds: np.ndarray, contrast: float = 0.35) -> np.ndarray:
    """One background per image; ``kinds`` (N,) indexes :data:`BACKGROUNDS`. (N, S, S, 3)."""
    n = kinds.shape[0]
    c0 = R.random_colours(rng, n, 0.05, 0.75)
    # The second colour stays close to the first so the foreground shape remains the salient thing.
    c1 = np.clip(c0 + rng.uniform(-contrast, contrast, (n, 3)).astype(np.float32), 0, 1)
    angle = rng.uniform(0, np.pi, n)
    freq = rng.uniform(2.5, 7.0, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    t = np.zeros((n, R.SIZE, R.SIZE), np.float32)
    # Waves only for the images that need them: this is the costly part of a batch.
    i = np.flatnonzero((kinds >= 1) & (kinds <= 3))
    w = R.wave(angle[i], freq[i], phase[i])
    w2 = R.wave(angle[i] + np.pi / 2, freq[i], phase[i][::-1])
    k = kinds[i]
    t[i] = np.where(
        k[:, None, None] == 1, w > 0, np.where(k[:, None, None] == 2, (w > 0) ^ (w2 > 0), (w > 0.55) & (w2 > 0.55))
    )
    i = np.flatnonzero(kinds == 4)
    if i.size:
        t[i] = R.smooth_noise(rng, i.size, 5)
    return R.mix(c0, c1, t)


def _clutter(rng: np.random.Generator, canvas: np.ndarray, p: float, max_r: float = 10.0) -> None:
    """With probability ``p`` per image, draw a thin random stroke (unlabelled distractor)."""
    n = canvas.shape[0]
    idx = np.flatnonzero(rng.random(n) < p)
    if idx.size == 0:
        return
    m = idx.size
    sub = canvas[idx]
    u, v = R.local_coords(rng.uniform(0, R.SIZE, m), rng.uniform(0, R.SIZE, m), rng.uniform(0, np.pi, m))
    r = rng.uniform(4.0, max_r, m).astype(np.float32)
    R.paint(sub, R.coverage(R.shape_sdf("bar", u, v, r)), R.random_colours(rng, m))
    canvas[idx] = sub


def _finish(rng: np.random.Generator, canvas: np.ndarray, noise: float) -> np.ndarray:
    """Add pixel noise and quantise to uint8."""
    if noise > 0:
        canvas = canvas + rng.normal(0.0, noise, canvas.shape).astype(np.float32)
    return R.to_uint8(canvas)


# ----------------------------------------------------------------------------------------------
# Pre-training corpus

PRETRAIN_HEADS: dict[str, tuple[str, ...]] = {
    "shape": R.SHAPES,
    "colour": tuple(R.PALETTE),
    "texture": BACKGROUNDS,
    "position": tuple(f"{row}-{col}" for row in ("top", "middle", "bottom") for col in ("left", "centre", "right")),
    "scale": ("small", "medium", "large"),
}
"""Label heads of the corpus, in the column order of :func:`pretrain_batch` labels."""

_SCALE_EDGES = (3.5, 6.0, 9.0, 12.5)  # radius bins in pixels for small / medium / large


def pretrain_batch(
    rng: np.random.Generator, n: int, with_mask: bool = False
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` corpus images and their labels.

    Args:
        rng: Source of randomness; the batch is a pure function of its state.
        n: Number of images.
        with_mask: Also return the labelled shape's coverage, for dense (per-patch) supervision.

    Returns:
        ``(images, labels)``: uint8 ``(n, 32, 32, 3)`` and int64 ``(n, 5)`` with one column per
        entry of :data:`PRETRAIN_HEADS` (shape, colour, texture, position, scale); with
        ``with_mask``, also float32 ``(n, 32, 32)`` coverage in [0, 1].
    """
    shape = rng.integers(0, len(R.SHAPES), n)
    colour = rng.integers(0, len(R.PALETTE), n)
    texture = rng.integers(0, len(BACKGROUNDS), n)
    scale = rng.integers(0, 3, n)
    lo = np.take(_SCALE_EDGES, scale)
    hi = np.take(_SCALE_EDGES, scale + 1)
    r = rng.uniform(lo, hi).astype(np.float32)
    cx = rng.uniform(r * 0.8, R.SIZE - r * 0.8)
    cy = rng.uniform(r * 0.8, R.SIZE - r * 0.8)
    position = np.minimum((cy * 3 // R.SIZE), 2).astype(np.int64) * 3 + np.minimum(cx * 3 // R.SIZE, 2).astype(np.int64)
    angle = rng.uniform(0, 2 * np.pi, n)
    rgb = np.clip(R.PALETTE_RGB[colour] + rng.normal(0, 0.04, (n, 3)), 0, 1).astype(np.float32)

    canvas = _backgrounds(rng, texture, contrast=0.55)
    _clutter(rng, canvas, 0.3)
    R.draw_shapes(canvas, shape, cx, cy, r, angle, rgb)
    labels = np.stack([shape, colour, texture, position, scale], axis=1).astype(np.int64)
    images = _finish(rng, canvas, 0.02)
    if not with_mask:
        return images, labels
    mask = np.zeros((n, R.SIZE, R.SIZE, 3), np.float32)
    R.draw_shapes(mask, shape, cx, cy, r, angle, np.ones((n, 3), np.float32))
    return images, labels, mask[..., 0]


# ----------------------------------------------------------------------------------------------
# Downstream task 1: synth-objects (natural-like, under a shift of colour/texture/noise statistics)

# Ten fruit-like objects in five colour pairs: colour narrows an image down to two classes, and
# the pair differs in shape, surface pattern or arrangement, which a frozen class token trained on
# single primitives encodes only weakly (so a linear probe stays below adapted features).
# name: (body shape, body colour, surface pattern, arrangement)
_OBJECTS: dict[str, tuple[str, tuple[float, float, float], str | None, str]] = {
    "apple": ("circle", (0.85, 0.10, 0.10), None, "single"),
    "strawberry": ("triangle", (0.85, 0.10, 0.10), "dots", "single"),
    "lemon": ("ellipse", (0.95, 0.88, 0.15), None, "single"),
    "banana": ("bar", (0.95, 0.88, 0.15), None, "single"),
    "lime": ("circle", (0.25, 0.75, 0.15), None, "single"),
    "watermelon": ("circle", (0.25, 0.75, 0.15), "stripes", "single"),
    "plum": ("circle", (0.55, 0.20, 0.70), None, "single"),
    "grapes": ("circle", (0.55, 0.20, 0.70), None, "cluster"),
    "orange": ("circle", (0.98, 0.55, 0.08), "dots", "single"),
    "carrot": ("bar", (0.98, 0.55, 0.08), None, "single"),
}

# The task's fixed statistics shift (what channel-wise re-scaling can absorb): a colour cast,
# lowered contrast around a shifted mean, and sensor-like grain. It is strong so that adapting
# clearly beats a linear probe (design runs in benchmarks/RESULTS.md).
_OBJECT_GAIN = np.array([0.45, 0.90, 1.35], np.float32)
_OBJECT_BIAS = np.array([0.28, 0.03, -0.12], np.float32)
_OBJECT_CONTRAST = (0.35, 0.60)


def _object_coverage(shape: str, arrangement: str, cx, cy, s, ang) -> np.ndarray:
    """Coverage (M, S, S) of one object kind: a single body, or a cluster of five small berries."""
    if arrangement == "cluster":
        cov = np.zeros((cx.shape[0], R.SIZE, R.SIZE), np.float32)
        for j in range(5):  # one berry in the middle, four around it
            a = ang + j * 2 * np.pi / 5
            rr = 0.55 * s * (j > 0)
            u, v = R.local_coords(cx + rr * np.cos(a), cy + rr * np.sin(a), a)
            cov = np.maximum(cov, R.coverage(R.shape_sdf("circle", u, v, 0.33 * s)))
        return cov
    u, v = R.local_coords(cx, cy, ang)
    return R.coverage(R.shape_sdf(shape, u, v, s * (0.8 if shape == "circle" else 1.0)))


def _draw_objects(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    n = labels.shape[0]
    canvas = _backgrounds(rng, np.full(n, 4), contrast=0.4)  # cloudy backgrounds only
    _clutter(rng, canvas, 0.5, max_r=7.0)
    s = rng.uniform(7.0, 11.0, n).astype(np.float32)
    cx = rng.uniform(s * 0.9, R.SIZE - s * 0.9)
    cy = rng.uniform(s * 0.9, R.SIZE - s * 0.9)
    ang = rng.uniform(-np.pi, np.pi, n)
    for k, (shape, rgb, pattern, arrangement) in enumerate(_OBJECTS.values()):
        idx = np.flatnonzero(labels == k)
        if idx.size == 0:
            continue
        m = idx.size
        sub = canvas[idx]
        colour = np.clip(np.array(rgb, np.float32) + rng.normal(0, 0.06, (m, 3)), 0, 1).astype(np.float32)
        cov = _object_coverage(shape, arrangement, cx[idx], cy[idx], s[idx], ang[idx])
        R.paint(sub, cov, colour)
        if pattern == "stripes":  # dark rind stripes
            t = (R.wave(ang[idx], np.full(m, 6.0), rng.uniform(0, 2 * np.pi, m)) > 0.3).astype(np.float32)
            R.paint(sub, cov * t, colour * 0.35)
        elif pattern == "dots":  # light seeds or pores
            w1 = R.wave(ang[idx], np.full(m, 7.0), rng.uniform(0, 2 * np.pi, m))
            w2 = R.wave(ang[idx] + np.pi / 2, np.full(m, 7.0), rng.uniform(0, 2 * np.pi, m))
            t = ((w1 > 0.6) & (w2 > 0.6)).astype(np.float32)
            R.paint(sub, cov * t, np.clip(colour * 0.4 + 0.5, 0, 1))
        canvas[idx] = sub
    contrast = rng.uniform(*_OBJECT_CONTRAST, (n, 1, 1, 1)).astype(np.float32)
    canvas = (canvas - 0.5) * contrast + 0.5
    canvas = canvas * _OBJECT_GAIN + _OBJECT_BIAS
    return _finish(rng, canvas, 0.06)


# ----------------------------------------------------------------------------------------------
# Downstream task 2: synth-textures (specialized-like)

_TEXTURES = (
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "polka dots",
    "crosshatch",
    "concentric rings",
    "wavy lines",
    "marble",
    "grain",
)


def _draw_textures(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    n = labels.shape[0]
    yy, xx = R.grid_coords()
    freq = rng.uniform(3.0, 6.5, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    jitter = rng.uniform(-0.25, 0.25, n)
    diag = np.where(rng.random(n) < 0.5, np.pi / 4, 3 * np.pi / 4)
    t = np.zeros((n, R.SIZE, R.SIZE), np.float32)

    def sel(k: int) -> np.ndarray:
        return np.flatnonzero(labels == k)

    # Stripes: the wave's angle is that of its normal, so horizontal stripes have a vertical normal.
    for k, base in ((0, np.pi / 2), (1, 0.0)):
        i = sel(k)
        t[i] = R.wave(base + jitter[i], freq[i], phase[i])
    i = sel(2)
    t[i] = R.wave(diag[i] + jitter[i] * 0.5, freq[i], phase[i])
    i = sel(3)
    t[i] = np.sign(R.wave(jitter[i], freq[i], phase[i]) * R.wave(jitter[i] + np.pi / 2, freq[i], phase[i]))
    i = sel(4)
    a, b = R.wave(jitter[i], freq[i], phase[i]), R.wave(jitter[i] + np.pi / 2, freq[i], phase[i])
    t[i] = np.where((a > 0.5) & (b > 0.5), 1.0, -1.0)
    i = sel(5)
    a, b = R.wave(diag[i], freq[i], phase[i]), R.wave(diag[i] + np.pi / 2, freq[i], phase[i])
    t[i] = np.where((a > 0.6) | (b > 0.6), 1.0, -1.0)
    i = sel(6)
    ox = rng.uniform(0, R.SIZE, i.size)[:, None, None]
    oy = rng.uniform(0, R.SIZE, i.size)[:, None, None]
    rad = np.sqrt((xx[None] - ox) ** 2 + (yy[None] - oy) ** 2)
    t[i] = np.sin(2 * np.pi * freq[i, None, None] * rad / R.SIZE + phase[i, None, None])
    i = sel(7)
    ang = jitter[i] + np.pi / 2
    bend = R.wave(ang - np.pi / 2, rng.uniform(1.0, 2.5, i.size), phase[i]) * 1.6
    t[i] = np.sin(
        2
        * np.pi
        * freq[i, None, None]
        * (xx[None] * np.cos(ang)[:, None, None] + yy[None] * np.sin(ang)[:, None, None])
        / R.SIZE
        + bend
        + phase[i, None, None]
    )
    i = sel(8)
    t[i] = np.sin(R.smooth_noise(rng, i.size, 4) * rng.uniform(9.0, 16.0, (i.size, 1, 1)))
    i = sel(9)
    t[i] = rng.uniform(-1, 1, (i.size, R.SIZE, R.SIZE))

    c0 = R.random_colours(rng, n, 0.1, 0.9)
    c1 = np.clip(c0 + rng.choice([-1.0, 1.0], (n, 1)) * rng.uniform(0.2, 0.45, (n, 3)), 0, 1).astype(np.float32)
    canvas = R.mix(c0, c1, 0.5 + 0.5 * t)
    # Illumination gradient and a stray stroke so the probe cannot rely on global colour stats.
    canvas *= (0.75 + 0.5 * R.smooth_noise(rng, n, 2))[..., None]
    _clutter(rng, canvas, 0.4, max_r=7.0)
    return _finish(rng, canvas, 0.06)


# ----------------------------------------------------------------------------------------------
# Downstream task 3: synth-count (structured)

_COUNT_MAX = 8
_COUNT_SHAPES = ("circle", "square", "triangle", "diamond", "cross")


def _draw_count(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    n = labels.shape[0]
    count = labels + 1
    canvas = _backgrounds(rng, rng.integers(0, len(BACKGROUNDS), n), contrast=0.2) * 0.6
    # Objects sit in distinct cells of a jittered 4×4 grid so they never merge into one blob.
    cells = np.argsort(rng.random((n, 16)), axis=1)
    kinds = rng.integers(0, len(_COUNT_SHAPES), n)  # one shape kind per image, mixed counts across
    colour = np.clip(R.PALETTE_RGB[rng.integers(0, 8, n)] + 0.1, 0, 1).astype(np.float32)
    for j in range(_COUNT_MAX):
        idx = np.flatnonzero(count > j)
        cell = cells[idx, j]
        r = rng.uniform(1.8, 3.0, idx.size).astype(np.float32)
        cx = (cell % 4) * 8 + 4 + rng.uniform(-1.5, 1.5, idx.size)
        cy = (cell // 4) * 8 + 4 + rng.uniform(-1.5, 1.5, idx.size)
        sub = canvas[idx]
        R.draw_shapes(sub, kinds[idx], cx, cy, r, rng.uniform(0, np.pi, idx.size), colour[idx], _COUNT_SHAPES)
        canvas[idx] = sub
    _clutter(rng, canvas, 0.3, max_r=6.0)
    return _finish(rng, canvas, 0.04)


# ----------------------------------------------------------------------------------------------
# Downstream task 4: synth-orientation (structured)

_ORIENT_BINS = 8  # 180° / 8 = 22.5° per class; elongated shapes are symmetric under 180°


def _draw_orientation(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    n = labels.shape[0]
    # Cloudy backgrounds only: striped ones would carry an orientation of their own and drown the
    # label in a 32-pixel image (design runs in benchmarks/RESULTS.md).
    canvas = _backgrounds(rng, np.full(n, 4), contrast=0.25)
    # A round distractor carries no orientation information.
    r = rng.uniform(2.0, 3.5, n).astype(np.float32)
    R.draw_shapes(
        canvas, np.zeros(n, int), rng.uniform(3, 29, n), rng.uniform(3, 29, n), r, np.zeros(n), R.random_colours(rng, n)
    )
    r = rng.uniform(9.0, 13.0, n).astype(np.float32)
    # Counter-clockwise degrees on screen (image y grows downwards, hence the minus sign).
    theta = (labels + rng.uniform(-0.25, 0.25, n)) * np.pi / _ORIENT_BINS
    cx = rng.uniform(11, 21, n)
    cy = rng.uniform(11, 21, n)
    kinds = rng.integers(0, 2, n)  # bar or ellipse
    R.draw_shapes(canvas, kinds, cx, cy, r, -theta, R.random_colours(rng, n, 0.2, 1.0), ("bar", "ellipse"))
    return _finish(rng, canvas, 0.03)


# ----------------------------------------------------------------------------------------------
# Task registry


@dataclass(frozen=True)
class TaskSpec:
    """One embedded downstream task: its name, VTAB group, class names and image generator."""

    name: str
    group: str
    description: str
    class_names: tuple[str, ...]
    generate: Generator


@dataclass(frozen=True)
class EmbeddedTask:
    """The generated splits of a task; arrays are uint8 images (N, S, S, 3) and int64 labels."""

    spec: TaskSpec
    seed: int
    splits: dict[str, tuple[np.ndarray, np.ndarray]]


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "synth-objects",
            "natural",
            "10 fruit-like objects in five colour pairs (apple or strawberry, ...) under a colour cast and grain",
            tuple(_OBJECTS),
            _draw_objects,
        ),
        TaskSpec(
            "synth-textures",
            "specialized",
            "10 texture families (stripes by direction, checkerboard, dots, rings, marble, ...)",
            _TEXTURES,
            _draw_textures,
        ),
        TaskSpec(
            "synth-count",
            "structured",
            "count the objects in the image, 1 to 8",
            tuple(f"{k} object{'s' if k > 1 else ''}" for k in range(1, _COUNT_MAX + 1)),
            _draw_count,
        ),
        TaskSpec(
            "synth-orientation",
            "structured",
            "orientation of the elongated object, 8 bins of 22.5 degrees",
            tuple(f"{22.5 * k:g} deg" for k in range(_ORIENT_BINS)),
            _draw_orientation,
        ),
    )
}


def _split_rng(name: str, seed: int, split: str) -> np.random.Generator:
    # crc32 (not hash()) so the stream is stable across processes and Python versions.
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(split.encode())])


@functools.lru_cache(maxsize=16)
def make_task(name: str, seed: int = 0) -> EmbeddedTask:
    """Generate (and cache in-process) all splits of an embedded task.

    Args:
        name: One of :data:`TASKS`.
        seed: Seed of the generator; the same seed gives identical arrays.

    Returns:
        The task with ``train`` (800), ``val`` (200) and ``test`` (1,000) splits; labels are
        balanced across classes and shuffled.

    Raises:
        DataError: If the name is not an embedded task.
    """
    if name not in TASKS:
        raise DataError(f"Embedded task {name!r} does not exist; choose one of {', '.join(TASKS)}.")
    spec = TASKS[name]
    k = len(spec.class_names)
    splits = {}
    for split, size in SPLIT_SIZES.items():
        rng = _split_rng(name, seed, split)
        labels = rng.permutation(np.arange(size) % k).astype(np.int64)
        images = spec.generate(rng, labels)
        images.setflags(write=False)  # cached and shared: nobody may modify it in place
        labels.setflags(write=False)
        splits[split] = (images, labels)
    return EmbeddedTask(spec, seed, splits)
