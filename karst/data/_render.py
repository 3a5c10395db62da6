"""Vectorised numpy drawing primitives for the procedural images (private machinery).

Every function works on a whole batch at once: parameters are arrays of shape ``(N,)`` and the
canvas is ``(N, S, S, 3)`` float32 in [0, 1]. Shapes are drawn from signed distances (positive
inside, in pixels) turned into an anti-aliased coverage ``alpha = clip(d + 0.5, 0, 1)``, so edges
look the same at every position and scale, and no Python loop runs over images.
"""

from __future__ import annotations

import numpy as np

SIZE = 32  # side of every embedded image, in pixels

# Pixel-centre coordinates, (S, S); shared by every call.
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5

SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "bar", "ellipse")

PALETTE = {
    "red": (0.90, 0.12, 0.12),
    "orange": (0.98, 0.55, 0.08),
    "yellow": (0.95, 0.90, 0.15),
    "green": (0.15, 0.75, 0.20),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.15, 0.25, 0.90),
    "purple": (0.55, 0.20, 0.80),
    "white": (0.96, 0.96, 0.96),
}
PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.float32)  # (8, 3)


def local_coords(cx: np.ndarray, cy: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of every pixel in each shape's own rotated frame, each (N, S, S)."""
    dx = _XX[None] - cx.astype(np.float32)[:, None, None]
    dy = _YY[None] - cy.astype(np.float32)[:, None, None]
    c = np.cos(angle)[:, None, None].astype(np.float32)
    s = np.sin(angle)[:, None, None].astype(np.float32)
    return c * dx + s * dy, -s * dx + c * dy


def shape_sdf(kind: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, positive inside) of one shape kind of radius ``r`` (N,)."""
    r = r[:, None, None].astype(np.float32)
    au, av = np.abs(u), np.abs(v)
    if kind == "circle":
        return r - np.sqrt(u * u + v * v)
    if kind == "square":
        return 0.8 * r - np.maximum(au, av)
    if kind == "diamond":
        return (r - (au + av)) * 0.7071
    if kind == "triangle":
        # Equilateral, apex up (image y grows downwards); inradius r/2, three half-planes.
        d = 0.5 * r - v
        for ang in (np.pi / 6, 5 * np.pi / 6):
            d = np.minimum(d, 0.5 * r - (u * np.cos(ang) - v * np.sin(ang)))
        return d
    if kind == "ring":
        rad = np.sqrt(u * u + v * v)
        return np.minimum(r - rad, rad - 0.55 * r)
    if kind == "cross":
        w = 0.3 * r
        return np.maximum(np.minimum(r - au, w - av), np.minimum(r - av, w - au))
    if kind == "bar":
        return np.minimum(r - au, np.maximum(0.9, 0.2 * r) - av)
    if kind == "ellipse":
        q = np.sqrt((u / r) ** 2 + (v / (0.45 * r)) ** 2)
        return (1.0 - q) * 0.45 * r
    raise ValueError(f"unknown shape kind {kind!r}")


def coverage(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance."""
    return np.clip(sdf + 0.5, 0.0, 1.0)


def paint(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-composite per-image ``colour`` (N, 3) onto ``canvas`` (N, S, S, 3), in place."""
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += a * colour[:, None, None, :]


def draw_shapes(
    canvas: np.ndarray,
    kinds: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    r: np.ndarray,
    angle: np.ndarray,
    colour: np.ndarray,
    names: tuple[str, ...] = SHAPES,
) -> None:
    """Draw one shape per image; ``kinds`` (N,) indexes ``names``. Grouped by kind, not looped."""
    for k, name in enumerate(names):
        idx = np.flatnonzero(kinds == k)
        if idx.size == 0:
            continue
        u, v = local_coords(cx[idx], cy[idx], angle[idx])
        sub = canvas[idx]
        paint(sub, coverage(shape_sdf(name, u, v, r[idx])), colour[idx])
        canvas[idx] = sub


def smooth_noise(rng: np.random.Generator, n: int, grid: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], (N, S, S): a random ``grid``×``grid`` field, bilinearly upsampled."""
    pos = np.linspace(0, grid - 1, SIZE, dtype=np.float32)
    lo = np.floor(pos).astype(int).clip(0, grid - 2)
    frac = pos - lo
    m = np.zeros((SIZE, grid), dtype=np.float32)  # (S, g) interpolation matrix
    m[np.arange(SIZE), lo] = 1.0 - frac
    m[np.arange(SIZE), lo + 1] = frac
    g = rng.random((n, grid, grid), dtype=np.float32)
    return m @ g @ m.T  # (S, g) @ (N, g, g) @ (g, S) -> (N, S, S)


def wave(angle: np.ndarray, freq: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """A plane sinusoid in [-1, 1], (N, S, S); ``freq`` in cycles per image."""
    c = np.cos(angle).astype(np.float32)[:, None, None]
    s = np.sin(angle).astype(np.float32)[:, None, None]
    k = (2 * np.pi * freq / SIZE).astype(np.float32)[:, None, None]
    return np.sin(k * (_XX[None] * c + _YY[None] * s) + phase.astype(np.float32)[:, None, None])


def random_colours(rng: np.random.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Uniform random RGB colours, (N, 3)."""
    return rng.uniform(lo, hi, (n, 3)).astype(np.float32)


def mix(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two per-image colours by ``t`` in [0, 1]: (N, S, S, 3)."""
    t = t[..., None]
    return c0[:, None, None, :] * (1.0 - t) + c1[:, None, None, :] * t


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    """Clip a float canvas to [0, 1] and quantise to uint8 (N, S, S, 3)."""
    return (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grid_coords() -> tuple[np.ndarray, np.ndarray]:
    """The shared pixel-centre coordinate grids (y, x), each (S, S)."""
    return _YY, _XX
