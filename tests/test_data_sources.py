"""Real dataset sources built in tmp_path: image folders, zips, VTAB-1K lists, torchvision, and
every kind of bad input (which must give one clear DataError line, and write nothing unsafe)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from karst.data import load_dataset
from karst.data.safety import check_image, safe_extract_zip, to_rgb
from karst.errors import DataError


def to_tensor(img: Image.Image) -> torch.Tensor:
    assert img.mode == "RGB"  # the source converts every image before the transform sees it
    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


def write_image(path: Path, value: int = 0, mode: str = "RGB", size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    img = {"RGB": rgb, "L": rgb.convert("L"), "P": rgb.convert("P"), "RGBA": rgb.convert("RGBA")}[mode]
    img.save(path)
    return path


def make_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 6, split: str | None = None) -> Path:
    base = root / split if split else root
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(base / name / f"{i}.png", value=c * 100 + i)
    return root


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


# ----------------------------------------------------------------------------------------------
# Image folders


def test_flat_folder_gets_a_seeded_stratified_split(tmp_path):
    make_folder(tmp_path / "ds", per_class=10)
    a = load_dataset(tmp_path / "ds", transform=to_tensor, seed=0)
    assert a.source == "folder" and a.class_names == ["cat", "dog", "fox"]
    assert (len(a.train), len(a.val), len(a.test)) == (21, 3, 6)
    assert sorted(set(a.test.labels)) == [0, 1, 2]
    x, y = a.train[0]
    assert x.shape == (3, 8, 8) and y in (0, 1, 2)
    same = load_dataset(tmp_path / "ds", transform=to_tensor, seed=0)
    other = load_dataset(tmp_path / "ds", transform=to_tensor, seed=1)
    assert same.test.paths == a.test.paths and other.test.paths != a.test.paths
    assert not set(a.train.paths) & set(a.test.paths)


def test_split_folders_are_used_as_given(tmp_path):
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        make_folder(tmp_path, classes=("a", "b"), per_class=n, split=split)
    b = load_dataset(tmp_path, transform=to_tensor)
    assert (len(b.train), len(b.val), len(b.test)) == (8, 4, 6)
    assert all("/test/" in str(p) for p in b.test.paths)


def test_train_and_test_only_takes_val_from_train(tmp_path):
    make_folder(tmp_path, classes=("a", "b"), per_class=10, split="train")
    make_folder(tmp_path, classes=("a", "b"), per_class=3, split="test")
    b = load_dataset(tmp_path, transform=to_tensor)
    assert (len(b.train), len(b.val), len(b.test)) == (18, 2, 6)


def test_modes_become_rgb_and_examples_are_pil(tmp_path):
    for i, mode in enumerate(("L", "P", "RGBA", "RGB")):
        write_image(tmp_path / "a" / f"{i}.png", i, mode)
        write_image(tmp_path / "b" / f"{i}.png", 10 + i, mode)
    b = load_dataset(tmp_path, transform=to_tensor)
    for ds in (b.train, b.val, b.test):
        for i in range(len(ds)):
            ds[i]  # the transform asserts RGB
    ex = b.example_images(4)
    assert len(ex) == 4 and {im.mode for im in ex} == {"RGB"}


def test_to_rgb_composites_transparency_over_white():
    img = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("I;16", (2, 2), 300)).mode == "RGB"


def test_bad_files_are_skipped_and_counted(tmp_path):
    make_folder(tmp_path, classes=("a", "b"), per_class=8)
    good = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "b" / "garbage.jpg").write_bytes(b"not an image at all")
    (tmp_path / "b" / "notes.txt").write_text("hello")
    (tmp_path / "README.md").write_text("top-level file")
    # A decompression bomb: a tiny file that declares 10000 x 5000 = 50M pixels.
    Image.new("1", (10000, 5000)).save(tmp_path / "a" / "bomb.png")
    assert check_image(tmp_path / "a" / "bomb.png") == "bomb"
    b = load_dataset(tmp_path, transform=to_tensor)
    assert b.skipped == 3 and b.ignored == 2
    assert len(b.train) + len(b.val) + len(b.test) == 16


def test_too_many_unreadable_images_fail_clearly(tmp_path):
    make_folder(tmp_path, classes=("a", "b"), per_class=2)
    for c in ("a", "b"):
        for i in range(5):
            (tmp_path / c / f"bad{i}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path, transform=to_tensor)
    assert "10 of 14" in one_line(err)


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        ("missing", "neither an embedded task nor an existing"),
        ("empty", "no class sub-folders"),
        ("single", "single class"),
        ("no_images", "no image files"),
        ("other_file", "not a .zip"),
        ("split_mismatch", "the train split lacks"),
        ("too_small", "has no readable images"),
    ],
)
def test_bad_folders_give_one_clear_line(tmp_path, layout, needle):
    path = tmp_path / "ds"
    if layout == "empty":
        path.mkdir()
    elif layout == "single":
        make_folder(path, classes=("only",))
    elif layout == "no_images":
        for c in ("a", "b"):
            (path / c).mkdir(parents=True)
            (path / c / "x.txt").write_text("x")
    elif layout == "other_file":
        path = tmp_path / "data.csv"
        path.write_text("a,b")
    elif layout == "split_mismatch":
        make_folder(path, classes=("a", "b"), split="train")
        make_folder(path, classes=("a", "c"), split="test")
    elif layout == "too_small":
        make_folder(path, classes=("a", "b"), per_class=1)
    with pytest.raises(DataError) as err:
        load_dataset(path, transform=to_tensor)
    assert needle in one_line(err)


# ----------------------------------------------------------------------------------------------
# Zips


def zip_folder(folder: Path, zpath: Path, prefix: str = "mydata/") -> Path:
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(folder).as_posix())
    return zpath


def test_zip_of_a_folder_loads_and_is_reused(tmp_path):
    make_folder(tmp_path / "src", per_class=5)
    z = zip_folder(tmp_path / "src", tmp_path / "data.zip")
    cache = tmp_path / "cache"
    b = load_dataset(z, transform=to_tensor, cache_dir=cache)
    assert b.source == "zip" and b.class_names == ["cat", "dog", "fox"]
    assert len(b.train) + len(b.val) + len(b.test) == 15
    extracted = list(cache.iterdir())
    assert len(extracted) == 1 and not extracted[0].name.startswith(".partial")
    load_dataset(z, transform=to_tensor, cache_dir=cache)
    assert list(cache.iterdir()) == extracted


def _evil_zip(path: Path, kind: str) -> Path:
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/a/ok.png", png.getvalue())  # a harmless entry first: must not be written either
        if kind == "dotdot":
            zf.writestr("data/../../escaped.png", png.getvalue())
        elif kind == "absolute":
            zf.writestr("/tmp/absolute.png", png.getvalue())
        elif kind == "symlink":
            info = zipfile.ZipInfo("data/a/link.png")
            info.external_attr = 0o120777 << 16  # S_IFLNK: a symbolic link entry
            zf.writestr(info, "/etc/passwd")
        elif kind == "backslash":
            zf.writestr("..\\..\\escaped.png", png.getvalue())
        elif kind == "bomb":
            zf.writestr(zipfile.ZipInfo("data/a/zeros.png"), b"\0" * (4 * 1024**2), compress_type=zipfile.ZIP_DEFLATED)
    return path


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("dotdot", "'..'"),
        ("absolute", "absolute"),
        ("symlink", "symbolic link"),
        ("backslash", "Windows"),
        ("bomb", "zip bomb"),
    ],
)
def test_malicious_zips_are_refused_with_nothing_extracted(tmp_path, kind, needle):
    z = _evil_zip(tmp_path / "evil.zip", kind)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(DataError) as err:
        load_dataset(z, transform=to_tensor, cache_dir=cache)
    assert needle in one_line(err)
    assert not cache.exists()  # refused before creating anything
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.zip"]


def test_zip_limits_on_count_and_declared_size(tmp_path):
    make_folder(tmp_path / "src", classes=("a", "b"), per_class=3)
    z = zip_folder(tmp_path / "src", tmp_path / "d.zip")
    with pytest.raises(DataError, match="over the limit of 4"):
        safe_extract_zip(z, tmp_path / "c1", max_files=4)
    with pytest.raises(DataError, match="would expand"):
        safe_extract_zip(z, tmp_path / "c2", max_bytes=100)
    assert not (tmp_path / "c1").exists() and not (tmp_path / "c2").exists()


def test_not_a_zip(tmp_path):
    z = tmp_path / "fake.zip"
    z.write_bytes(b"PK but not really")
    with pytest.raises(DataError) as err:
        load_dataset(z, transform=to_tensor, cache_dir=tmp_path / "c")
    assert "not a readable zip" in one_line(err)


# ----------------------------------------------------------------------------------------------
# VTAB-1K lists


def make_vtab(root: Path, n_train: int = 8, n_val: int = 4, n_test: int = 6, k: int = 2, union: bool = False) -> Path:
    lines = {}
    i = 0
    for name, n in (("train800.txt", n_train), ("val200.txt", n_val), ("test.txt", n_test)):
        rows = []
        for j in range(n):
            rel = f"images/{name[:4]}/{i:03d} x.jpg"  # a space in the path: labels are split from the right
            write_image(root / rel, i)
            rows.append(f"{rel} {j % k}")
            i += 1
        lines[name] = rows
    if union:
        (root / "train800val200.txt").write_text("\n".join(lines["train800.txt"] + lines["val200.txt"]) + "\n")
    else:
        (root / "train800.txt").write_text("\n".join(lines["train800.txt"]) + "\n")
        (root / "val200.txt").write_text("\n".join(lines["val200.txt"]) + "\n")
    (root / "test.txt").write_text("\n".join(lines["test.txt"]) + "\n")
    return root


def test_vtab_folder_uses_the_lists(tmp_path):
    b = load_dataset(make_vtab(tmp_path / "task"), transform=to_tensor)
    assert b.source == "vtab" and b.class_names == ["0", "1"]
    assert (len(b.train), len(b.val), len(b.test)) == (8, 4, 6)
    (tmp_path / "task" / "classnames.txt").write_text("left\nright\n")
    assert load_dataset(tmp_path / "task", transform=to_tensor).class_names == ["left", "right"]


def test_vtab_union_list_is_split_80_20(tmp_path):
    b = load_dataset(make_vtab(tmp_path / "task", n_train=8, n_val=2, union=True), transform=to_tensor, seed=3)
    assert (len(b.train), len(b.val)) == (8, 2)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("images/nowhere.jpg 1", "does not exist"),
        ("images/trai/000 x.jpg one", "not an integer"),
        ("images/trai/000 x.jpg -1", "negative label"),
        ("../outside.jpg 0", "outside the task folder"),
        ("lonely", "must be 'relative/path label'"),
    ],
)
def test_bad_vtab_lines_name_file_and_line(tmp_path, line, needle):
    root = make_vtab(tmp_path / "task")
    write_image(tmp_path / "outside.jpg")
    lst = root / "train800.txt"
    rows = lst.read_text().splitlines()
    rows.insert(2, line)
    lst.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(root, transform=to_tensor)
    msg = one_line(err)
    assert "train800.txt line 3" in msg and needle in msg


def test_vtab_unreadable_image_is_skipped(tmp_path):
    root = make_vtab(tmp_path / "task")
    first = root / (root / "train800.txt").read_text().splitlines()[0].rsplit(maxsplit=1)[0]
    first.write_bytes(b"broken")
    b = load_dataset(root, transform=to_tensor)
    assert b.skipped == 1 and len(b.train) == 7


def test_vtab_without_test_list(tmp_path):
    root = make_vtab(tmp_path / "task")
    (root / "test.txt").unlink()
    with pytest.raises(DataError, match="no test.txt"):
        load_dataset(root, transform=to_tensor)


# ----------------------------------------------------------------------------------------------
# torchvision


def test_torchvision_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KARST_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_dataset("torchvision:CIFAR10", transform=to_tensor, cache_dir=tmp_path)
    assert "could not be downloaded" in one_line(err)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_torchvision_unknown_name(tmp_path):
    with pytest.raises(DataError, match="not a torchvision dataset"):
        load_dataset("torchvision:NoSuchSet", transform=to_tensor, cache_dir=tmp_path)
