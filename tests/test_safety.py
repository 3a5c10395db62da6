"""Untrusted zips and images, made for real in tmp_path: refused with one line, before anything is
written or decoded, with bounded memory; accepted ones give the right content."""

from __future__ import annotations

import io
import shutil
import stat
import struct
import time
import zipfile
import zlib
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from karst.data.safety import ZipReport, check_image, check_zip, load_image, safe_extract_zip
from karst.errors import ConfigError, DataError
from karst.images import ImageTooLargeError, open_image

MiB = 1024**2


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def refused(fn, *args, **kwargs) -> tuple[DataError, int]:
    """Call ``fn`` expecting a DataError; return it and the growth of peak RSS (bytes) meanwhile."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pytest.skip("peak memory is measured through Linux /proc")
    before = _status_kib("VmHWM")
    with pytest.raises(DataError) as err:
        fn(*args, **kwargs)
    one_line(err)
    return err.value, (_status_kib("VmHWM") - before) * 1024


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def png(size: tuple[int, int] = (4, 4), color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, entries: dict[str | zipfile.ZipInfo, bytes], deflate: bool = True) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def patch_central(path: Path, name: str, offset: int, value: int, fmt: str = "<I") -> None:
    """Overwrite one field of ``name``'s central directory record (what zipfile reads sizes from)."""
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x01\x02")
    while data[start + 46 : start + 46 + len(name)] != name.encode():
        start = data.find(b"PK\x01\x02", start + 1)
        assert start >= 0, name
    struct.pack_into(fmt, data, start + offset, value)
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------------
# Zip bombs: refused from the central directory, nothing written


def test_zip_bomb_is_refused_without_writing_or_memory(tmp_path):
    z = make_zip(tmp_path / "bomb.zip", {f"data/a/{i}.png": bytes(256 * 1024) for i in range(256)})
    assert z.stat().st_size < 300 * 1024  # 64 MiB of zeros in well under a MiB
    cache = tmp_path / "cache"
    err, grew = refused(check_zip, z)
    assert "ratio" in str(err) and "zip bomb" in str(err) and "'bomb.zip'" in str(err)
    assert str(tmp_path) not in str(err)  # the base name only, never a server path
    assert grew < 50 * MiB
    _, grew = refused(safe_extract_zip, z, cache)
    assert grew < 50 * MiB
    assert tree_bytes(cache) == 0 and not cache.exists()


def test_whole_archive_ratio_catches_many_small_entries(tmp_path):
    # Each entry is below the per-entry floor (64 KiB); together they expand 64 MiB.
    z = make_zip(tmp_path / "many.zip", {f"d/a/{i}.png": bytes(32 * 1024) for i in range(2048)})
    with pytest.raises(DataError) as err:
        check_zip(z)
    assert "the archive expands" in one_line(err) and "ratio limit" in one_line(err)


def _bad_entry_zip(path: Path, kind: str) -> Path:
    entries: dict = {"data/a/ok.png": png()}  # a harmless entry first: must not be written either
    info = zipfile.ZipInfo("data/a/bad.png")
    if kind == "dotdot":
        entries["data/../../escaped.png"] = png()
    elif kind == "absolute":
        entries["/tmp/absolute.png"] = png()
    elif kind == "drive":
        entries["C:/Windows/x.png"] = png()
    elif kind == "symlink":
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        entries[info] = b"/etc/passwd"
    elif kind == "device":
        info.external_attr = (stat.S_IFCHR | 0o666) << 16
        entries[info] = b""
    elif kind in ("encrypted", "overlap"):
        entries["data/a/bad.png"] = png()
    make_zip(path, entries)
    if kind == "encrypted":
        patch_central(path, "data/a/bad.png", 8, 0x1, "<H")
    elif kind == "overlap":  # the second entry points at the first entry's data
        patch_central(path, "data/a/bad.png", 42, 0)
    return path


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("dotdot", "'..'"),
        ("absolute", "absolute"),
        ("drive", "Windows path"),
        ("symlink", "symbolic link"),
        ("device", "not a regular file"),
        ("encrypted", "encrypted"),
        ("overlap", "overlaps"),
    ],
)
def test_unsafe_entries_are_refused_before_writing(tmp_path, kind, needle):
    z = _bad_entry_zip(tmp_path / "evil.zip", kind)
    with pytest.raises(DataError) as err:
        check_zip(z)
    assert needle in one_line(err)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=needle):
        safe_extract_zip(z, cache)
    assert not cache.exists()


def test_not_a_zip_names_the_file_only(tmp_path):
    z = tmp_path / "fake.zip"
    z.write_bytes(b"PK but not really")
    with pytest.raises(DataError) as err:
        check_zip(z)
    assert "'fake.zip' is not a readable zip" in one_line(err) and str(tmp_path) not in one_line(err)


# ----------------------------------------------------------------------------------------------
# Good zips: report, content-addressed cache, eviction


@pytest.mark.parametrize(
    ("names", "classes"),
    [
        (["ds/cat/0.png", "ds/cat/1.png", "ds/dog/0.jpg", "ds/notes.txt"], ("cat", "dog")),
        (["cat/0.png", "cat/1.png", "dog/0.jpg", "notes.txt"], ("cat", "dog")),
        (["ds/train/cat/0.png", "ds/train/dog/1.png", "ds/test/cat/0.png", "ds/test/dog/x.txt"], ("cat", "dog")),
    ],
)
def test_good_zip_report(tmp_path, names, classes):
    entries = {n: png(color=(i, 0, 0)) if not n.endswith(".txt") else b"hello" for i, n in enumerate(names)}
    entries["__MACOSX/ds/._0.png"] = b"resource fork"
    z = make_zip(tmp_path / "good.zip", entries)
    report = check_zip(z)
    assert isinstance(report, ZipReport)
    assert report.images == sum(not n.endswith(".txt") for n in names)
    assert report.class_names == classes and report.classes == 2
    assert report.files == len(entries)
    assert report.total_bytes == sum(len(v) for v in entries.values())
    assert f"{report.images} images in 2 class folders" in report.summary()
    assert not any(tmp_path.glob("*/"))  # checking wrote nothing


def test_same_bytes_under_two_names_are_extracted_once(tmp_path):
    entries = {f"ds/{c}/{i}.png": png(color=(i, 50 * k, 0)) for k, c in enumerate("ab") for i in range(3)}
    first = make_zip(tmp_path / "upload-1.zip", entries)
    second = tmp_path / "renamed.zip"
    shutil.copy(first, second)
    cache = tmp_path / "cache"
    a = safe_extract_zip(first, cache)
    b = safe_extract_zip(second, cache)
    assert a == b and a.parent == cache
    assert sorted(p.name for p in cache.iterdir()) == [a.name]  # one folder, no .partial leftovers
    assert tree_bytes(cache) == sum(len(v) for v in entries.values())  # one copy on disk
    assert (a / "ds" / "b" / "2.png").read_bytes() == entries["ds/b/2.png"]


def _distinct_zip(path: Path, seed: int, size: int = 100_000) -> Path:
    noise = np.random.default_rng(seed).bytes(size)  # incompressible: the ratio check stays quiet
    return make_zip(path, {f"ds/a/{seed}.png": noise})


def test_cache_evicts_least_recently_used_but_never_the_newest(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "torchvision").mkdir(parents=True)  # not ours: never touched
    (cache / "torchvision" / "data.bin").write_bytes(bytes(1000))
    monkeypatch.setenv("KARST_ZIP_CACHE_BYTES", "250000")  # room for two 100 kB extractions
    one = safe_extract_zip(_distinct_zip(tmp_path / "1.zip", 1), cache)
    time.sleep(0.02)
    two = safe_extract_zip(_distinct_zip(tmp_path / "2.zip", 2), cache)
    time.sleep(0.02)
    assert safe_extract_zip(tmp_path / "1.zip", cache) == one  # reused: now the most recently used
    time.sleep(0.02)
    three = safe_extract_zip(_distinct_zip(tmp_path / "3.zip", 3), cache)
    assert one.is_dir() and three.is_dir() and not two.exists()
    monkeypatch.setenv("KARST_ZIP_CACHE_BYTES", "1")  # smaller than any extraction
    four = safe_extract_zip(_distinct_zip(tmp_path / "4.zip", 4), cache)
    assert four.is_dir() and not one.exists() and not three.exists()
    assert (cache / "torchvision" / "data.bin").is_file()


# ----------------------------------------------------------------------------------------------
# Lies and caps during extraction


def test_entry_larger_than_declared_aborts_and_leaves_nothing(tmp_path):
    data = np.random.default_rng(0).bytes(200_000)
    z = make_zip(tmp_path / "liar.zip", {"ds/a/ok.png": png(), "ds/a/big.png": data})
    patch_central(z, "ds/a/big.png", 24, 1000)  # declares 1000 bytes, holds 200000
    assert check_zip(z).total_bytes < 2000  # the declared sizes look harmless
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        safe_extract_zip(z, cache)
    assert "could not be extracted" in one_line(err) and "nothing was kept" in one_line(err)
    assert list(cache.iterdir()) == []  # no partial folder, no cache entry


def test_written_bytes_are_counted_even_if_the_reader_trusts_the_zip(tmp_path, monkeypatch):
    # A zip reader that does not stop at the declared size (CPython's does): our own count must.
    z = make_zip(tmp_path / "liar.zip", {"ds/a/x.png": png(), "ds/b/y.png": png()})
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(bytes(info.file_size + 10)))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="holds more than"):
        safe_extract_zip(z, cache)
    assert list(cache.iterdir()) == []


def test_extraction_cap_follows_free_disk_space(tmp_path, monkeypatch):
    z = make_zip(tmp_path / "ok.zip", {"ds/a/x.png": np.random.default_rng(1).bytes(50_000)})
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 60_000, 60_000))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        safe_extract_zip(z, cache)  # 50 kB > half of 60 kB free
    assert "may be used on the server's disk" in one_line(err)
    assert list(cache.iterdir()) == []


def test_bad_cache_size_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("KARST_ZIP_CACHE_BYTES", "lots")
    with pytest.raises(ConfigError, match="KARST_ZIP_CACHE_BYTES"):
        safe_extract_zip(make_zip(tmp_path / "a.zip", {"a/x.png": png()}), tmp_path / "c")


# ----------------------------------------------------------------------------------------------
# Images: pixel limit before decoding, one decoder for every input kind


@pytest.fixture(scope="module")
def pixel_bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "big.png"
    Image.new("1", (12000, 12000)).save(path)  # 144 MP in about 17 kB
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width × height`` (1-bit gray) with almost no data after it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_pixel_bomb_is_refused_from_its_header(pixel_bomb):
    assert pixel_bomb.stat().st_size < 100_000
    err, grew = refused(open_image, pixel_bomb)
    assert isinstance(err, ImageTooLargeError)
    assert "'big.png' is 12000×12000 pixels (144 MP), over the 40 MP limit" in str(err)
    assert str(pixel_bomb.parent) not in str(err)
    assert grew < 100 * MiB
    assert check_image(pixel_bomb) == "bomb"
    with pytest.raises(ImageTooLargeError):
        load_image(pixel_bomb)


@pytest.mark.parametrize(("side", "needle"), [(7000, "7000×7000 pixels (49 MP)"), (20000, "is 400 MP")])
def test_declared_size_over_limit_is_refused_whatever_pillow_thinks(tmp_path, side, needle):
    # 49 MP: under Pillow's own warning; 400 MP: over Pillow's hard limit, refused inside Image.open.
    path = png_header_only(tmp_path / "huge.png", side, side)
    with pytest.raises(ImageTooLargeError) as err:
        open_image(path)
    assert needle in one_line(err) and "over the 40 MP limit" in one_line(err)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("notes.txt", b"hello, not an image", "'notes.txt' is not an image this app can read"),
        ("empty.png", b"", "'empty.png' is an empty file"),
        ("cut.png", png((64, 64))[:60], "'cut.png' could not be decoded"),
    ],
)
def test_unusable_files_give_one_line(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        open_image(path)
    assert needle in one_line(err) and str(tmp_path) not in one_line(err)
    assert check_image(path) == "unreadable"


def test_paths_uploads_and_pil_images(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (10, 12), "red").save(path)
    upload = SimpleNamespace(name=str(path))  # what Gradio passes for a file
    for item in (path, str(path), upload, Image.open(path)):
        img = open_image(item)
        assert img.mode == "RGB" and img.size == (10, 12) and img.getpixel((0, 0)) == (255, 0, 0)
    Image.new("I;16", (4, 4), 4000).save(tmp_path / "deep.png")
    assert open_image(tmp_path / "deep.png").mode == "RGB"
    with pytest.raises(DataError, match="no image given"):
        open_image(None)
    with pytest.raises(DataError, match="not an image"):
        open_image(42)


@pytest.mark.parametrize(
    ("array", "pixel"),
    [
        (np.full((5, 7), 9, np.uint8), (9, 9, 9)),
        (np.full((5, 7, 1), 9, np.uint8), (9, 9, 9)),
        (np.full((5, 7, 3), (1, 2, 3), np.uint8), (1, 2, 3)),
        (np.full((5, 7, 4), (1, 2, 3, 255), np.uint8), (1, 2, 3)),
        (np.full((5, 7, 3), 0.5, np.float32), (128, 128, 128)),  # floats in [0, 1]
        (np.full((5, 7, 3), 200.0, np.float64), (200, 200, 200)),  # floats in [0, 255]
        (np.ones((5, 7), bool), (255, 255, 255)),
    ],
)
def test_arrays_of_each_accepted_shape_and_dtype(array, pixel):
    img = open_image(array)
    assert img.mode == "RGB" and img.size == (7, 5) and img.getpixel((3, 2)) == pixel


def test_transparency_is_composited_over_white():
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 128)  # half-transparent red
    img = open_image(rgba)
    assert img.getpixel((5, 5)) == (255, 255, 255)
    r, g, b = img.getpixel((0, 0))
    assert r == 255 and 125 <= g <= 129 and g == b
    sketch = {"background": None, "layers": [], "composite": rgba}  # gr.Sketchpad / ImageEditor value
    assert open_image(sketch).getpixel((5, 5)) == (255, 255, 255)
    assert open_image(Image.fromarray(rgba, "RGBA")).getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        (np.zeros((100, 100, 3), np.uint8), "100×100 pixels"),
        (Image.new("L", (100, 100)), "100×100 pixels"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (Image.new("RGB", (0, 0)), "empty"),
        (np.zeros((4, 4, 5), np.uint8), "shape (4, 4, 5)"),
        (np.full((4, 4), np.nan), "values from"),
        (np.full((4, 4), 300.0), "values from"),
        (np.zeros((4, 4), complex), "dtype complex128"),
    ],
)
def test_in_memory_images_get_the_same_limits(item, needle):
    with pytest.raises(DataError) as err:
        open_image(item, max_pixels=5000)
    assert needle in one_line(err)


def test_predict_refuses_a_pixel_bomb_through_the_same_decoder(pixel_bomb):
    import torch

    from karst.export import Predictor  # imported here: the rest of this module does not need torch

    to_tensor = lambda img: torch.from_numpy(np.asarray(img.resize((4, 4)), np.float32)).flatten()  # noqa: E731
    predictor = Predictor(torch.nn.Linear(48, 2), to_tensor, ["a", "b"])
    (top,) = predictor.predict([np.zeros((8, 8, 4), np.uint8)], top_k=2)  # an array, as from the app
    assert sorted(c for c, _ in top) == ["a", "b"] and abs(sum(p for _, p in top) - 1) < 1e-5
    with pytest.raises(DataError, match="'big.png' is 12000×12000 pixels"):
        predictor.predict([pixel_bomb])
