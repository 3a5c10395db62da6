"""Reading untrusted images and zip files without crashing or writing where we should not.

* :func:`to_rgb`: grayscale, palette, 16-bit and transparent images become 8-bit RGB.
* :func:`check_image`: opens an image fully (so truncated files are caught) after refusing ones
  whose declared size would make a decompression bomb; returns why a file is unusable, or ``None``.
* :func:`safe_extract_zip`: validates every entry of a zip (no ``..``, no absolute paths, no
  links, declared sizes and file count within limits) *before* writing anything, then extracts to
  a temporary folder, counting the bytes actually written, and moves it into place atomically.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from PIL import Image, ImageFile

from karst.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MAX_ZIP_BYTES",
    "MAX_ZIP_FILES",
    "check_image",
    "load_image",
    "safe_extract_zip",
    "to_rgb",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
MAX_IMAGE_PIXELS = 40_000_000  # larger images are skipped as possible decompression bombs
MAX_ZIP_BYTES = 4 * 1024**3  # total uncompressed size of a dataset zip
MAX_ZIP_FILES = 200_000
MAX_ZIP_RATIO = 200  # uncompressed / compressed size of one entry; images barely compress


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


def check_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why ``path`` cannot be used as an image (``"bomb"``, ``"unreadable"``), or ``None`` if fine.

    The declared size is checked from the header before any pixel is decoded; the file is then
    decoded completely (at reduced scale for JPEG, which still reads the whole stream) so that
    truncated files are caught here rather than in the middle of training.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels or w < 1 or h < 1:
                    return "bomb" if w * h > max_pixels else "unreadable"
                img.draft("RGB", (64, 64))
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "bomb"
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.UnidentifiedImageError):
        return "unreadable"
    return None


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an already-checked image as RGB, raising :class:`DataError` if it went bad since."""
    try:
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > max_pixels:
                raise DataError(
                    f"Image {path} is {img.size[0]}x{img.size[1]} pixels, over the {max_pixels} limit; remove it."
                )
            img.load()
            return to_rgb(img)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(
            f"Image {path} could not be read ({type(err).__name__}); it changed after loading, remove or replace it."
        ) from err


# Refuse truncated files instead of silently padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# ----------------------------------------------------------------------------------------------
# Zip files


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one entry may not be extracted, or ``None``."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute or Windows path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "climbs out of its folder with '..'"
    if "\x00" in name:
        return "has a NUL byte in its name"
    return None


def _zip_cache_name(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return f"{path.stem}-{hashlib.sha256(key).hexdigest()[:12]}"


def safe_extract_zip(
    path: str | os.PathLike,
    dest_root: str | os.PathLike | None = None,
    *,
    max_bytes: int = MAX_ZIP_BYTES,
    max_files: int = MAX_ZIP_FILES,
    max_ratio: float = MAX_ZIP_RATIO,
) -> Path:
    """Extract a dataset zip safely into a cache folder and return that folder.

    Every entry is checked before anything is written: no links, no absolute paths, no ``..``;
    at most ``max_files`` files and ``max_bytes`` declared bytes; no entry compressed more than
    ``max_ratio`` times. Extraction goes to a temporary sibling folder, counting the bytes really
    written (a zip can lie about sizes), and is moved into place only once complete. A zip that
    was already extracted (same path, size and modification time) is reused.

    Args:
        path: The zip file.
        dest_root: Folder under which the cache folder is made; default: ``<tmp>/karst-datasets``.
        max_bytes: Limit on the total uncompressed size.
        max_files: Limit on the number of entries.
        max_ratio: Limit on one entry's compression ratio.

    Returns:
        The extracted folder.

    Raises:
        DataError: Not a zip, unsafe entries, or over a limit; nothing is left on disk.
    """
    path = Path(path)
    root = Path(dest_root) if dest_root is not None else Path(tempfile.gettempdir()) / "karst-datasets"
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(
            f"{path} is not a readable zip file ({type(err).__name__}); re-create it with a zip tool."
        ) from err
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise DataError(
                f"Zip {path} has {len(infos)} entries, over the limit of {max_files}; "
                "split the dataset or use a folder."
            )
        total = 0
        for info in infos:
            problem = _entry_problem(info)
            if problem:
                raise DataError(
                    f"Zip {path} was refused: entry {info.filename!r} {problem}; nothing was extracted, "
                    "rebuild the zip with plain relative paths."
                )
            total += info.file_size
            if info.compress_size and info.file_size > max_ratio * info.compress_size and info.file_size > 1024**2:
                raise DataError(
                    f"Zip {path} was refused: entry {info.filename!r} expands "
                    f"{info.file_size / info.compress_size:.0f}x "
                    f"(limit {max_ratio:g}x), a likely zip bomb; nothing was extracted."
                )
        if total > max_bytes:
            raise DataError(
                f"Zip {path} would expand to {total / 1024**2:.0f} MiB, "
                f"over the limit of {max_bytes / 1024**2:.0f} MiB; "
                "nothing was extracted, use an image folder instead."
            )

        target = root / _zip_cache_name(path)
        if target.is_dir():
            return target
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        try:
            written = 0
            for info in infos:
                out = tmp.joinpath(*PurePosixPath(info.filename).parts)
                # Belt and braces: the checks above should make this impossible.
                if not out.resolve().is_relative_to(tmp.resolve()):
                    raise DataError(
                        f"Zip {path} was refused: entry {info.filename!r} escapes the folder; nothing was extracted."
                    )
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    entry = 0
                    while chunk := src.read(1 << 20):
                        entry += len(chunk)
                        written += len(chunk)
                        if entry > info.file_size or written > max_bytes:
                            raise DataError(
                                f"Zip {path} was refused: entry {info.filename!r} holds more bytes than it declares "
                                "or the total passed the limit; nothing was kept."
                            )
                        dst.write(chunk)
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process extracted the same zip meanwhile: use theirs.
                shutil.rmtree(tmp, ignore_errors=True)
        except DataError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, zlib.error) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(
                f"Zip {path} could not be extracted ({type(err).__name__}: {str(err)[:100]}); check the file."
            ) from err
    return target
