"""Reading untrusted dataset files: images, and zips that must not fill the disk.

* :func:`check_image` / :func:`load_image`: dataset images through :func:`karst.images.open_image`
  (the one decoder, with the pixel limit checked from the header before any pixel is decoded).
* :func:`check_zip`: validates a zip from its central directory alone, writing nothing: entry
  names (no ``..``, absolute paths, drive letters, links or device files), entry count, declared
  size, overlapping entries and compression ratio, for the whole archive and for each large entry.
  Returns a :class:`ZipReport` (images, class folders, sizes) for the settings check.
* :func:`safe_extract_zip`: extracts a zip that passed :func:`check_zip` into a cache keyed by the
  hash of its bytes, so the same upload is extracted once whatever its name. Extraction goes to a
  temporary folder, counts the bytes really written (declared sizes can lie) against a cap derived
  from free disk space, and is renamed into place only when complete. The cache keeps the most
  recently used extractions under a size limit.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from karst.errors import ConfigError, DataError
from karst.images import MAX_IMAGE_PIXELS, ImageTooLargeError, open_image, to_rgb

try:
    from lzma import LZMAError
except ImportError:  # Python built without lzma: zipfile then refuses LZMA entries itself
    LZMAError = RuntimeError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MAX_ZIP_BYTES",
    "MAX_ZIP_FILES",
    "MAX_ZIP_RATIO",
    "ZIP_CACHE_BYTES",
    "ZIP_DISK_FRACTION",
    "ZIP_RATIO_FLOOR",
    "ZipReport",
    "check_image",
    "check_zip",
    "load_image",
    "safe_extract_zip",
    "to_rgb",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

# Total uncompressed size of one dataset zip: VTAB-1K tasks and few-shot sets are far smaller;
# a larger dataset belongs in a folder on the server, not an upload.
MAX_ZIP_BYTES = 4 * 1024**3
# Entries in one zip: a 200k-image set is bigger than anything this app trains on.
MAX_ZIP_FILES = 200_000
# Uncompressed / compressed size. PNG, JPEG and WebP barely compress (about 1x), raw BMP or TIFF a
# few times; deflate peaks near 1030x, so bombs made of zeros sit far above this.
MAX_ZIP_RATIO = 100
# Entries (and whole archives) smaller than this are too small to matter as a bomb on their own,
# and tiny files (lists, flat icons) can compress very well.
ZIP_RATIO_FLOOR = 64 * 1024
# An extraction may use at most this share of the free disk, so runs and checkpoints keep room.
ZIP_DISK_FRACTION = 0.5
# Default size of the extraction cache (override with KARST_ZIP_CACHE_BYTES): room for a few
# full-size datasets; least recently used extractions go first.
ZIP_CACHE_BYTES = 3 * MAX_ZIP_BYTES
# A ``.partial-*`` folder older than this was left by a process that died mid-extraction.
STALE_PARTIAL_SECONDS = 24 * 3600

_CHUNK = 1 << 20
_CACHE_NAME = re.compile(r"zip-[0-9a-f]{64}")
_EXTRACT_ERRORS = (OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError, zlib.error, LZMAError)


# ----------------------------------------------------------------------------------------------
# Images


def check_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why ``path`` cannot be used as an image (``"bomb"``, ``"unreadable"``), or ``None`` if fine.

    The file is decoded completely (JPEG at reduced scale, which still reads the whole stream) so
    that truncated files are caught here rather than in the middle of training.
    """
    try:
        open_image(path, max_pixels, draft=(64, 64))
    except ImageTooLargeError:
        return "bomb"
    except DataError:
        return "unreadable"
    return None


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an already-checked image as RGB, raising :class:`DataError` if it went bad since."""
    return open_image(path, max_pixels)


# ----------------------------------------------------------------------------------------------
# Checking a zip without extracting it


@dataclass(frozen=True)
class ZipReport:
    """What a zip holds, from its central directory.

    Attributes:
        images: Image files (by suffix), hidden and ``__MACOSX`` entries excluded.
        class_names: Class folders, as :func:`karst.data.load_dataset` will see them: inside a
            single wrapping folder, and inside ``train/`` when the zip has split folders.
        files: File entries (folders excluded).
        total_bytes: Declared uncompressed size.
        compressed_bytes: Compressed size of the entries.
    """

    images: int
    class_names: tuple[str, ...]
    files: int
    total_bytes: int
    compressed_bytes: int

    @property
    def classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        return (
            f"Zip checked: {self.images} images in {self.classes} class folders, "
            f"{self.total_bytes / 1024**2:.1f} MiB uncompressed."
        )


def check_zip(
    path: str | os.PathLike,
    *,
    max_bytes: int = MAX_ZIP_BYTES,
    max_files: int = MAX_ZIP_FILES,
    max_ratio: float = MAX_ZIP_RATIO,
) -> ZipReport:
    """Validate a dataset zip without writing anything.

    Args:
        path: The zip file.
        max_bytes: Limit on the total declared uncompressed size.
        max_files: Limit on the number of entries.
        max_ratio: Limit on the compression ratio of the whole archive and of each entry larger
            than :data:`ZIP_RATIO_FLOOR`.

    Raises:
        DataError: Not a zip, an unsafe entry, or over a limit (the message names the file's base
            name only).
    """
    path = Path(path)
    with _open_zip(path) as zf:
        return _inspect(zf, path, max_bytes, max_files, max_ratio)


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise DataError(
            f"'{path.name}' is not a readable zip file ({type(err).__name__}); re-create it with a zip tool."
        ) from None


def _inspect(zf: zipfile.ZipFile, path: Path, max_bytes: int, max_files: int, max_ratio: float) -> ZipReport:
    """Every check of :func:`check_zip` on an open zip."""
    name = path.name
    infos = zf.infolist()
    if len(infos) > max_files:
        raise DataError(
            f"'{name}' has {len(infos)} entries, over the limit of {max_files}; split the dataset or use a folder."
        )
    for info in infos:
        problem = _entry_problem(info)
        if problem:
            raise DataError(
                f"'{name}' was refused: entry {info.filename!r} {problem}; nothing was extracted, "
                "rebuild the zip with plain relative paths and regular files."
            )
    files = [i for i in infos if not i.is_dir()]
    total = sum(i.file_size for i in files)
    packed = sum(i.compress_size for i in files)
    if total > max_bytes:
        raise DataError(
            f"'{name}' would expand to {total / 1024**2:.0f} MiB, over the limit of {max_bytes / 1024**2:.0f} MiB; "
            "nothing was extracted, use an image folder on the server instead."
        )
    _check_ratio(name, "the archive", total, packed, max_ratio)
    for info in files:
        _check_ratio(name, f"entry {info.filename!r}", info.file_size, info.compress_size, max_ratio)
    overlapping = _overlapping_entry(infos, path)
    if overlapping is not None:
        raise DataError(
            f"'{name}' was refused: entry {overlapping.filename!r} overlaps the next one, a zip bomb technique; "
            "nothing was extracted, re-create the zip with a zip tool."
        )
    images, class_names = _layout([i.filename for i in files])
    return ZipReport(images, class_names, len(files), total, packed)


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one entry may not be extracted, or ``None``."""
    name = info.filename
    mode = info.external_attr >> 16  # Unix mode bits, when the zip was made on Unix
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is a device, pipe or socket, not a regular file"
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute or Windows path"
    if ".." in PurePosixPath(name).parts:
        return "climbs out of its folder with '..'"
    if "\x00" in name:
        return "has a NUL byte in its name"
    if info.flag_bits & 0x1:
        return "is encrypted (a password-protected zip)"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        return f"uses compression method {info.compress_type}, which cannot be read"
    return None


def _check_ratio(name: str, what: str, size: int, packed: int, max_ratio: float) -> None:
    if size > ZIP_RATIO_FLOOR and size > max_ratio * max(packed, 1):
        raise DataError(
            f"'{name}' was refused: {what} expands {size / max(packed, 1):.0f}x "
            f"({size / 1024**2:.1f} MiB from {packed / 1024**2:.2f} MiB), over the {max_ratio:g}x ratio limit, "
            "a likely zip bomb; nothing was extracted, zip PNG or JPEG images instead."
        )


def _overlapping_entry(infos: list[zipfile.ZipInfo], path: Path) -> zipfile.ZipInfo | None:
    """An entry whose data runs into the next one (entries sharing compressed data), or ``None``."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    ends = [i.header_offset for i in ordered[1:]] + [path.stat().st_size]
    for info, next_start in zip(ordered, ends):
        # 30 bytes: the fixed part of a local header, a lower bound on its size.
        if info.header_offset + 30 + info.compress_size > next_start:
            return info
    return None


def _layout(names: list[str]) -> tuple[int, tuple[str, ...]]:
    """Image count and class folders of a zip's file names, as ``load_dataset`` will see them."""
    paths = [PurePosixPath(n).parts for n in names]
    paths = [p for p in paths if p and not any(part.startswith(".") or part == "__MACOSX" for part in p)]
    n_images = sum(1 for p in paths if _is_image(p[-1]))
    if len({p[0] for p in paths}) == 1 and all(len(p) > 1 for p in paths) and any(len(p) > 2 for p in paths):
        paths = [p[1:] for p in paths]  # one wrapping folder: the dataset is inside it
    if any(len(p) > 2 and p[0] == "train" for p in paths):
        paths = [p[1:] for p in paths if p[0] == "train"]
    return n_images, tuple(sorted({p[0] for p in paths if len(p) > 1 and _is_image(p[-1])}))


def _is_image(filename: str) -> bool:
    return PurePosixPath(filename).suffix.lower() in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------------------------
# Extracting into the cache


def safe_extract_zip(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    max_bytes: int = MAX_ZIP_BYTES,
    max_files: int = MAX_ZIP_FILES,
    max_ratio: float = MAX_ZIP_RATIO,
) -> Path:
    """Extract a dataset zip that passes :func:`check_zip` into the cache and return its folder.

    The folder is named by the SHA-256 of the zip's bytes: the same bytes uploaded twice, under
    any name, are extracted once (a reuse marks the folder as recently used). The bytes written
    are capped by ``min(max_bytes, ZIP_DISK_FRACTION × free disk)``; before extracting, least
    recently used extractions are deleted so the cache stays under ``KARST_ZIP_CACHE_BYTES``
    (default :data:`ZIP_CACHE_BYTES`).

    Args:
        path: The zip file.
        cache_dir: The cache folder; default ``<tmp>/karst-datasets``. Only its ``zip-<hash>``
            folders are ever deleted.
        max_bytes, max_files, max_ratio: Limits, as in :func:`check_zip`.

    Returns:
        The extracted folder.

    Raises:
        DataError: Refused by :func:`check_zip`, over the disk cap, or damaged data; nothing is
            left on disk.
    """
    path = Path(path)
    root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "karst-datasets"
    with _open_zip(path) as zf:
        report = _inspect(zf, path, max_bytes, max_files, max_ratio)
        target = root / f"zip-{_sha256(path)}"
        if target.is_dir():
            _touch(target)
            return target
        root.mkdir(parents=True, exist_ok=True)
        _evict(root, _cache_limit() - report.total_bytes)
        cap = _extraction_cap(root, max_bytes)
        if report.total_bytes > cap:
            raise DataError(
                f"'{path.name}' needs {report.total_bytes / 1024**2:.0f} MiB but only {cap / 1024**2:.0f} MiB "
                "may be used on the server's disk now; nothing was extracted, try a smaller dataset or later."
            )
        _extract_to(zf, target, cap, path.name)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _touch(folder: Path) -> None:
    try:
        os.utime(folder)
    except OSError:  # read-only cache: still usable, just not marked as recently used
        pass


def _extraction_cap(root: Path, max_bytes: int) -> int:
    return min(max_bytes, int(ZIP_DISK_FRACTION * shutil.disk_usage(root).free))


def _extract_to(zf: zipfile.ZipFile, target: Path, cap: int, name: str) -> None:
    """Extract into a temporary sibling of ``target``, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        try:
            _write_entries(zf, tmp, cap, name)
            _publish(tmp, target)
        except _EXTRACT_ERRORS as err:
            # An OSError's text names server paths: give its reason only.
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)[:100]
            raise DataError(
                f"'{name}' could not be extracted ({type(err).__name__}: {reason}); "
                "nothing was kept, check or re-create the file."
            ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, target: Path) -> None:
    """Rename the complete extraction into place (atomic: readers never see a partial folder)."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process extracted the same zip meanwhile


def _write_entries(zf: zipfile.ZipFile, tmp: Path, cap: int, name: str) -> None:
    written = 0
    root = tmp.resolve()
    for info in zf.infolist():
        out = tmp.joinpath(*PurePosixPath(info.filename).parts)
        if not out.resolve().is_relative_to(root):  # belt and braces: check_zip makes this impossible
            raise DataError(f"'{name}' was refused: entry {info.filename!r} escapes the folder; nothing was kept.")
        if info.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        written += _copy_entry(zf, info, out, cap - written, name)


def _copy_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, budget: int, name: str) -> int:
    """Copy one entry, counting the bytes really produced; returns that count."""
    count = 0
    with zf.open(info) as src, open(out, "wb") as dst:
        while chunk := src.read(_CHUNK):
            count += len(chunk)
            if count > info.file_size:
                raise DataError(
                    f"'{name}' was refused: entry {info.filename!r} holds more than the {info.file_size} bytes it "
                    "declares, a zip bomb technique; nothing was kept, re-create the zip with a zip tool."
                )
            if count > budget:
                raise DataError(
                    f"'{name}' was refused: extraction passed its cap (the size limit or {ZIP_DISK_FRACTION:.0%} of "
                    f"the free disk) while writing {info.filename!r}; nothing was kept, free disk space or use a "
                    "smaller dataset."
                )
            dst.write(chunk)
    return count


# ----------------------------------------------------------------------------------------------
# Cache size


def _cache_limit() -> int:
    raw = os.environ.get("KARST_ZIP_CACHE_BYTES", "").strip()
    if not raw:
        return ZIP_CACHE_BYTES
    try:
        return int(float(raw))
    except ValueError:
        raise ConfigError(
            f"KARST_ZIP_CACHE_BYTES={raw!r} is not a number of bytes; set e.g. {ZIP_CACHE_BYTES} or unset it."
        ) from None


def _evict(root: Path, budget: int) -> None:
    """Delete least recently used extractions until the cache holds at most ``budget`` bytes."""
    now = time.time()
    folders = []
    for entry in root.iterdir():
        try:
            used = entry.stat().st_mtime
            if entry.name.startswith(".partial-") and now - used > STALE_PARTIAL_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
            elif _CACHE_NAME.fullmatch(entry.name) and entry.is_dir():
                folders.append((used, entry, _tree_bytes(entry)))
        except OSError:  # deleted by another process meanwhile
            continue
    total = sum(size for _, _, size in folders)
    for _, folder, size in sorted(folders, key=lambda f: f[0]):
        if total <= budget:
            break
        shutil.rmtree(folder, ignore_errors=True)
        total -= size


def _tree_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for f in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
