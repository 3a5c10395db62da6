"""One way to turn untrusted image input into an 8-bit RGB PIL image, with a pixel limit.

:func:`open_image` accepts a file (path, or an upload object with ``.name``), a PIL image, a numpy
array or a Gradio Sketchpad/ImageEditor value. The size is checked from the file header before any
pixel is decoded, so a small file that declares a huge image (a decompression bomb) costs nothing;
in-memory images and arrays get the same limit. Every failure is one
:class:`~karst.errors.DataError` line that names the file's base name only, never a server path.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from karst.errors import DataError

__all__ = ["MAX_IMAGE_PIXELS", "ImageTooLargeError", "open_image", "to_rgb"]

# 40 MP is above any camera photo or dataset image this app trains on (a 24 MP camera gives
# 6000×4000), yet its RGB decode is 120 MB, not the gigabytes a 20000² bomb would take.
MAX_IMAGE_PIXELS = 40_000_000
FORMATS_HINT = "use PNG, JPEG, WebP or BMP"

# Refuse truncated files instead of silently padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError)


class ImageTooLargeError(DataError):
    """An image over the pixel limit (a possible decompression bomb)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Return an 8-bit RGB version of ``img`` (transparent areas composited over white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grayscale: rescale to 8 bits rather than clip everything to white.
        lo, hi = img.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        img = img.point(lambda v: (v - lo) * scale).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(
    item: Any, max_pixels: int = MAX_IMAGE_PIXELS, *, draft: tuple[int, int] | None = None
) -> Image.Image:
    """An 8-bit RGB image from a path, a PIL image, a numpy array or a Sketchpad value.

    Args:
        item: A path (``str``/``Path``, or an object with ``.name`` such as an upload), a PIL
            image, an array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (uint8, or
            float in ``[0, 1]`` or ``[0, 255]``), or a dict with a ``"composite"`` image.
        max_pixels: Largest width × height accepted.
        draft: Decode JPEGs at roughly this size instead of full size (still reading the whole
            stream); for checking that a file decodes without paying for a full decode.

    Returns:
        The image in mode ``RGB``; transparency is composited over white.

    Raises:
        ImageTooLargeError: The image is over ``max_pixels``.
        DataError: Nothing given, not an image, empty, truncated or an unusable array.
    """
    if isinstance(item, dict):  # gr.Sketchpad / gr.ImageEditor value
        item = item.get("composite")
    if item is None:
        raise DataError("no image given; upload, paste, draw or pick an example first.")
    if isinstance(item, Image.Image):
        _check_size(item.size, "The image", max_pixels)
        return _decoded(item, "The image")
    if isinstance(item, np.ndarray):
        return _from_array(item, max_pixels)
    # An upload wrapper or open file names its path in ``.name`` (a Path's ``.name`` is not a path).
    name = item if isinstance(item, str | os.PathLike) else getattr(item, "name", None)
    if not isinstance(name, str | os.PathLike):
        raise DataError(f"A {type(item).__name__} is not an image; give an image file, a PIL image or an array.")
    return _open_file(Path(name), max_pixels, draft)


def _describe(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} MP" if pixels >= 1e6 else f"{pixels} pixels"


def _too_large(what: str, size_text: str, max_pixels: int) -> ImageTooLargeError:
    side = int(max_pixels**0.5)
    return ImageTooLargeError(
        f"{what} is {size_text}, over the {_describe(max_pixels)} limit; "
        f"resize it below {_describe(max_pixels)} (e.g. {side}×{side}) and try again."
    )


def _check_size(size: tuple[int, int], what: str, max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise DataError(f"{what} is empty ({w}×{h} pixels); give an image with content.")
    if w * h > max_pixels:
        raise _too_large(what, f"{w}×{h} pixels ({_describe(w * h)})", max_pixels)


def _decoded(img: Image.Image, what: str) -> Image.Image:
    """``img`` decoded and in RGB; a lazily opened file is read here, so errors are caught here."""
    try:
        img.load()
        return to_rgb(img)
    except _DECODE_ERRORS as err:
        # The type only: an error's text can name a server path.
        raise DataError(
            f"{what} could not be decoded ({type(err).__name__}); it may be truncated or damaged, {FORMATS_HINT}."
        ) from None


def _is_empty_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size == 0
    except (OSError, ValueError):  # unreadable or a NUL in the name: Image.open says why below
        return False


def _open_file(path: Path, max_pixels: int, draft: tuple[int, int] | None) -> Image.Image:
    what = repr(path.name)
    if _is_empty_file(path):
        raise DataError(f"{what} is an empty file (0 bytes); upload it again or pick another image.")
    try:
        with warnings.catch_warnings():
            # Our own limit is checked from the header just below, with the real dimensions.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as err:
        # Over twice Pillow's own limit: Pillow refuses before giving the size; its message has the count.
        found = re.search(r"\((\d+) pixels\)", str(err))
        size_text = _describe(int(found.group(1))) if found else "far over any usable size"
        raise _too_large(what, size_text, max_pixels) from None
    except FileNotFoundError:
        raise DataError(f"{what} was not found; upload it again or check the path.") from None
    except (UnidentifiedImageError, IsADirectoryError):
        raise DataError(
            f"{what} is not an image this app can read (not a readable image file); {FORMATS_HINT}."
        ) from None
    except _DECODE_ERRORS as err:
        raise DataError(f"{what} could not be opened ({type(err).__name__}); {FORMATS_HINT}.") from None
    with img:
        _check_size(img.size, what, max_pixels)
        if draft is not None:
            img.draft("RGB", draft)
        return _decoded(img, what)


def _from_array(arr: np.ndarray, max_pixels: int) -> Image.Image:
    """Validate an image array's shape, size and values, and wrap it as RGB."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise DataError(
            f"An array of shape {arr.shape} is not an image; give (H, W), (H, W, 3) or (H, W, 4) values."
        )
    _check_size((arr.shape[1], arr.shape[0]), "The image array", max_pixels)
    return to_rgb(Image.fromarray(_as_uint8(arr)))


def _as_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"An image array of dtype {arr.dtype} cannot be read; give uint8 or float values.")
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
        raise DataError(
            f"An image array has values from {lo:g} to {hi:g}; give uint8, or floats in [0, 1] or [0, 255]."
        )
    if np.issubdtype(arr.dtype, np.floating) and hi <= 1.0:
        arr = arr * 255.0  # floats in [0, 1], as from matplotlib or torchvision
    return np.rint(arr).astype(np.uint8)
