"""Hostile input against the real app and the real CLI (issue #14, points 3, 4, 7, 8 and 9).

Each test does one attack and asserts the new behaviour: an uploaded "merged model" cannot make
the server build, download or open anything (and the app's memory stays put), every image path
has the pixel limit, server paths are readable only under ``--data-root`` with one answer for
"missing" and "not allowed", bad input gives one readable line (exit 2 in the CLI), only what a
view needs is served, the upload folder survives no SIGTERM, and wrong passwords are slowed down.

Everything is local (127.0.0.1), bounded and tiny: headers that declare huge images instead of
huge images, a 668-byte model file, one shared trained run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from helpers import REPO, TINY_MODELS, AppHandle, env, fast_form, form_values, make_png, make_tiny, start_app
from helpers import trained_run as shared_run
from safetensors.torch import load_file, save_file

from karst.backbones import EMBEDDED_ARCH, HUB_BACKBONES
from karst.cli import main as cli
from karst.errors import RunError
from karst.export import EXPORT_FORMAT, load_merged
from karst.jobs import JobManager
from karst.model_safety import MAX_MODEL_BYTES, check_arch
from karst.runs import RunStore

pytestmark = pytest.mark.usefixtures("one_thread")

NOT_ALLOWED = "this server allows; put it under one of the data roots"


# ---------------------------------------------------------------------------- inputs
def png_header(path: Path, width: int = 20_000, height: int = 20_000) -> Path:
    """A valid PNG that declares ``width``×``height`` pixels in a few dozen bytes (a decompression bomb's
    header: the pixel limit is checked from it, so no pixel needs to exist)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) +
                     chunk(b"IEND", b""))
    return path


def merged_file(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A merged model file whose header carries ``meta`` (as an upload that travelled alone)."""
    save_file(tensors if tensors is not None else {"x": torch.zeros(1)}, str(path),
              metadata={"karst_export": json.dumps(meta)})
    return path


def rss_mb() -> float:
    """Resident memory of this process, which is the app's (it runs in-process)."""
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def value(out: Any) -> Any:
    return out["value"] if isinstance(out, dict) and "__type__" in out else out


# ---------------------------------------------------------------------------- the app
@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data root with a dataset, and a private folder next to it with a secret image."""
    base = tmp_path_factory.mktemp("abuse-data")
    root, private = base / "root", base / "private"
    for folder in (root / "pets" / "cat", root / "pets" / "dog", private / "cat", private / "dog"):
        folder.mkdir(parents=True)
        for i in range(3):
            make_png(folder / f"{i}.png", color="blue" if "cat" in folder.name else "red", size=16)
    make_png(private / "secret.png", color="green", size=16)
    (root / "escape").symlink_to(private)
    return {"root": root, "private": private, "base": base}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, roots: dict[str, Path]) -> Iterator[AppHandle]:
    # No worker: nothing here trains, and on two shared cores its start-up would only slow the tests.
    handle = start_app(tmp_path_factory.mktemp("abuse-runs"), data_roots=(roots["root"],), start_worker=False)
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def client(server: AppHandle) -> Client:
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def run_id(server: AppHandle, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's trained run, copied into the app's runs directory."""
    source = shared_run(tmp_path_factory.getbasetemp())
    shutil.copytree(source, server.runner.runs_dir / source.name)
    return source.name


@pytest.fixture(scope="module")
def merged_meta(run_id: str, server: AppHandle) -> dict[str, Any]:
    return json.loads((server.runner.runs_dir / run_id / "merged.json").read_text())


def test_endpoints_answer_bad_run_ids_with_one_readable_line(client: Client, run_id: str) -> None:
    long_id = "a" * 5000
    for api_name, args in (("/watch", (long_id,)), ("/downloads", (long_id,)), ("/stop", (long_id,)),
                           ("/kernel_view", (long_id, None))):
        try:  # an error message, or (Download's) a note in the panel
            message = json.dumps(client.predict(*args, api_name=api_name), ensure_ascii=False)
        except AppError as err:
            message = str(err)
        assert "not a valid run id" in message and "bug" not in message and len(message) < 300, (api_name, message)
    # A list where a run id belongs: the list is treated as no known run, not as a crash.
    picked = client.predict(["x", "y"], api_name="/list_runs")
    assert value(picked[0] if isinstance(picked, tuple) else picked) == run_id


# -- point 3: an uploaded merged model -----------------------------------------------------------
def hostile_models(folder: Path, meta: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """name → (file, a phrase of the message that refuses it)."""
    arch = meta["arch"]
    cases = {
        "vit_large": ({"arch": {"model_name": "vit_large_patch16_224", "kwargs": {}}}, "do not fit"),
        "hub": ({"arch": {"model_name": "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", "kwargs": {}}},
                "hub references"),
        "path_kwarg": ({"arch": {**arch, "kwargs": {**arch["kwargs"], "checkpoint_path": "/etc/passwd"}}},
                       "'checkpoint_path' is not one"),
        "cfg_kwarg": ({"arch": {**arch, "kwargs": {**arch["kwargs"], "pretrained_cfg_overlay": {"file": "/x"}}}},
                      "'pretrained_cfg_overlay' is not one"),
        "unknown": ({"arch": {"model_name": "no_such_arch", "kwargs": {}}}, "not a timm ViT, DeiT or Swin"),
        "other_family": ({"arch": {"model_name": "resnet50", "kwargs": {}}}, "not a timm ViT, DeiT or Swin"),
        "no_arch": ({"arch": None}, "no architecture"),
        "huge_input": ({"preprocessing": {**meta["preprocessing"], "input_size": [3, 90000, 90000]}},
                       "preprocessing input_size"),
    }
    return {name: (merged_file(folder / f"{name}.safetensors", {**meta, **change}), phrase)
            for name, (change, phrase) in cases.items()}


def test_uploaded_model_cannot_choose_what_the_server_builds(client: Client, merged_meta: dict[str, Any],
                                                             tmp_path: Path) -> None:
    png = make_png(tmp_path / "probe.png")
    models = hostile_models(tmp_path, merged_meta)
    assert models["vit_large"][0].stat().st_size < 1000  # the 668-byte file
    before = rss_mb()  # the app runs in this process
    for name, (path, phrase) in models.items():
        start = time.monotonic()
        with pytest.raises(AppError) as err:
            client.predict("upload", None, [handle_file(str(path))], 3, handle_file(str(png)),
                           api_name="/predict_image")
        message = str(err.value)
        assert "was refused" in message and phrase in message and "\n" not in message, (name, message)
        assert time.monotonic() - start < 10, name  # no download attempt, no big build
    grown = rss_mb() - before
    print(f"\n[abuse] app RSS after {len(models)} hostile model uploads: {before:.0f} -> {before + grown:.0f} MB")
    assert grown < 100, f"the app grew by {grown:.0f} MB: a model was built before the check"


def test_cli_predict_refuses_the_same_files_with_exit_2(capsys, merged_meta: dict[str, Any], tmp_path: Path) -> None:
    png = make_png(tmp_path / "probe.png")
    for name, (path, phrase) in hostile_models(tmp_path, merged_meta).items():
        code = cli(["predict", str(path), str(png)])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1 and phrase in err, (name, err)


@pytest.mark.parametrize("kind", sorted(TINY_MODELS))
def test_merged_files_of_known_architectures_still_load(kind: str, tmp_path: Path) -> None:
    name, kwargs = TINY_MODELS[kind]
    model = make_tiny(kind, num_classes=3).eval()
    size = kwargs["img_size"]
    meta = {"format": EXPORT_FORMAT, "arch": {"model_name": name, "kwargs": json.loads(json.dumps(kwargs))},
            "num_classes": 3, "class_names": ["a", "b", "c"],
            "preprocessing": {"input_size": [3, size, size], "mean": [0.5] * 3, "std": [0.25] * 3,
                              "interpolation": "bilinear", "crop_pct": 1.0}}
    path = merged_file(tmp_path / "m.safetensors", meta, {k: v.contiguous() for k, v in model.state_dict().items()})
    loaded, _ = load_merged(path)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    for arch in [EMBEDDED_ARCH, *({"model_name": n.split(".")[0], "kwargs": {}} for n in HUB_BACKBONES)]:
        assert check_arch(arch)["model_name"] == arch["model_name"]


def test_model_file_size_is_checked_before_reading(merged_meta: dict[str, Any], run_id: str, server: AppHandle,
                                                   tmp_path: Path) -> None:
    assert MAX_MODEL_BYTES == 2 * 1024**3
    path = server.runner.runs_dir / run_id / "merged.safetensors"
    with pytest.raises(RunError, match="over the .* GiB limit"):
        load_merged(path, max_bytes=path.stat().st_size - 1)
    # A header that claims to be bigger than the file (or than 16 MiB) is refused before parsing it.
    liar = tmp_path / "liar.safetensors"
    liar.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(RunError, match="bad or oversized header"):
        load_merged(liar)


def test_an_uploaded_json_config_follows_the_same_rules(merged_meta: dict[str, Any], run_id: str,
                                                        server: AppHandle, tmp_path: Path) -> None:
    # The .json uploaded next to a genuine merged file overrides its header: it is checked too.
    weights = tmp_path / "model.safetensors"
    shutil.copy(server.runner.runs_dir / run_id / "merged.safetensors", weights)
    arch = merged_meta["arch"]
    sidecar = {**merged_meta, "arch": {**arch, "kwargs": {**arch["kwargs"], "checkpoint_path": "/etc/passwd"}}}
    weights.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(RunError, match="'checkpoint_path' is not one"):
        load_merged(weights)
    weights.with_suffix(".json").write_text(json.dumps(merged_meta))
    assert load_merged(weights)[1]["class_names"] == merged_meta["class_names"]


# -- point 4: the pixel limit on every image input -----------------------------------------------
def test_pixel_limit_on_every_image_input(client: Client, server: AppHandle, run_id: str, tmp_path: Path) -> None:
    bomb = png_header(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    before = rss_mb()
    calls = {
        "/predict_image": lambda f: client.predict("run", run_id, [], 3, handle_file(str(f)),
                                                   api_name="/predict_image"),
        "/predict_many": lambda f: client.predict("run", run_id, [], 3, [handle_file(str(f))],
                                                  api_name="/predict_many"),
        "/predict_sketch": lambda f: client.predict("run", run_id, [], 3, {"background": None, "layers": [],
                                                                           "composite": handle_file(str(f))},
                                                    api_name="/predict_sketch"),
    }
    for api_name, call in calls.items():
        for path, phrase in ((bomb, "over the 40 MP limit"), (notes, "is not an image")):
            with pytest.raises(AppError) as err:
                call(path)
            assert phrase in str(err.value) and path.name in str(err.value), (api_name, str(err.value))
    grown = rss_mb() - before
    print(f"\n[abuse] app RSS after 6 pixel-bomb / non-image calls: +{grown:.0f} MB")
    assert grown < 100
    # The CLI: the same limit, exit 2.
    assert cli(["predict", str(server.runner.runs_dir / run_id), str(bomb)]) == 2


# -- point 2: the zip bomb, through the app's settings check ----------------------------------------
def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def test_zip_bomb_in_the_settings_check_writes_nothing(client: Client, tmp_path: Path) -> None:
    # 512 entries of 1 MiB of zeros: ~0.5 MB on disk, 512 MiB declared. Before: the settings check,
    # run on every form change, extracted all of it (1.1 GB for the 1,024-entry version).
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for i in range(512):
            z.writestr(f"cats/{i}.png", bytes(1024 * 1024))
    assert bomb.stat().st_size < 1_000_000
    cache = Path(tempfile.gettempdir()) / "karst-datasets"
    before_disk, before_mem = _folder_bytes(cache), rss_mb()
    form = form_values(fast_form(dataset_source="zip"))
    form[[*fast_form().__dataclass_fields__].index("dataset_zip")] = handle_file(str(bomb))
    for _ in range(2):  # a second upload of the same bytes does not make a copy either
        message = client.predict(*form, api_name="/check_settings")
        assert "ratio limit" in message and "bomb.zip" in message, message
    grown_disk, grown_mem = _folder_bytes(cache) - before_disk, rss_mb() - before_mem
    print(f"\n[abuse] zip bomb through /check_settings: +{grown_disk} bytes in the cache, +{grown_mem:.0f} MB RSS")
    assert grown_disk == 0 and grown_mem < 50


# -- point 7: server paths -----------------------------------------------------------------------
def check(client: Client, **changes: Any) -> str:
    return client.predict(*form_values(fast_form(**changes)), api_name="/check_settings")


def test_server_paths_only_under_data_roots_with_one_answer(client: Client, server: AppHandle,
                                                            roots: dict[str, Path]) -> None:
    root, private = roots["root"], roots["private"]
    inside = check(client, dataset_source="folder", dataset_path=str(root / "pets"))
    assert "trainable parameters" in inside, inside
    refused = {
        "outside": private, "system": Path("/etc"), "missing inside": root / "nope",
        "missing outside": roots["base"] / "nope", "dot-dot": root / ".." / "private", "symlink": root / "escape",
    }
    answers = {}
    for label, path in refused.items():
        message = check(client, dataset_source="folder", dataset_path=str(path))
        assert NOT_ALLOWED in message, (label, message)
        answers[label] = message.replace(repr(str(path)), "PATH")
    assert len(set(answers.values())) == 1, answers  # exists or not, allowed or not: one answer
    for form in ({"backbone_source": "file", "weights_path": "/etc/passwd"},
                 {"backbone_source": "file", "weights_path": str(roots["base"] / "missing.safetensors")},
                 {"backbone": "/etc/passwd"}):  # a "catalogue" name that is a path
        message = check(client, **form)
        assert NOT_ALLOWED in message, (form, message)
    # An "embedded task" that is a path: Gradio's dropdown refuses it, and so does the library.
    assert "not an embedded task" in server.runner.check(fast_form(dataset=str(private))).message
    with pytest.raises(AppError, match="data roots"):
        client.predict(*form_values(fast_form(dataset_source="folder", dataset_path=str(private))),
                       api_name="/launch")


def test_examples_come_only_from_allowed_data(server: AppHandle, roots: dict[str, Path]) -> None:
    assert server.runner.example_images(None, str(roots["private"])) == []
    assert len(server.runner.example_images(None, str(roots["root"] / "pets"), n=2)) == 2


def _call_private(server: AppHandle, fn_name: str, data: list[Any], event_data: Any) -> dict[str, Any]:
    """Call a private event (no API name) as a browser does: join the queue, read its answer."""
    index = next(i for i, fn in server.demo.fns.items() if getattr(fn.fn, "__name__", "") == fn_name)
    session = uuid.uuid4().hex
    base = server.url.rstrip("/") + "/gradio_api"
    with httpx.Client(timeout=30) as http:
        http.post(f"{base}/queue/join", json={"data": data, "event_data": event_data, "fn_index": index,
                                             "session_hash": session, "trigger_id": None}).raise_for_status()
        with http.stream("GET", f"{base}/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and (msg := json.loads(line[5:]))["msg"] == "process_completed":
                    return msg
    raise AssertionError("no answer")


def test_an_example_click_cannot_name_a_server_file(server: AppHandle, roots: dict[str, Path], run_id: str) -> None:
    common = ["run", run_id, None, 3]
    # The browser reports the clicked image's path; a client could name any file. Gradio refuses
    # paths outside its cache, and the app does not use the path at all: only the index.
    secret = {"index": 0, "value": {"image": {"path": str(roots["private"] / "secret.png")}}, "selected": True}
    assert not _call_private(server, "on_example", common, secret)["success"]
    stale = _call_private(server, "on_example", common, {"index": 99, "value": None, "selected": True})
    assert not stale["success"] and "no longer shown" in stale["output"]["error"], stale
    shown = _call_private(server, "on_example", common, {"index": 0, "value": None, "selected": True})
    assert shown["success"], shown
    image = Path(shown["output"]["data"][0]["path"])
    assert image.is_relative_to(server.runner.upload_dir)  # the server's own example, served from its cache


# -- point 9: what is served, what is said -------------------------------------------------------
def test_downloads_are_copies_named_after_the_run_and_nothing_else_is_served(
        client: Client, server: AppHandle, run_id: str) -> None:
    *buttons, note = client.predict(run_id, api_name="/downloads")
    files = [Path(value(b)) for b in buttons]
    assert [f.name for f in files] == [f"{run_id}-merged.safetensors", f"{run_id}-merged.json",
                                       f"{run_id}-adapter.safetensors"], note
    runs = server.runner.runs_dir
    assert load_file(str(files[0])).keys() == load_file(str(runs / run_id / "merged.safetensors")).keys()
    base = server.url.rstrip("/") + "/gradio_api/file="
    (runs / ".worker.log").touch()
    for private in (runs / ".worker.log", runs / run_id / "config.json", runs / run_id / "merged.safetensors"):
        assert httpx.get(base + str(private)).status_code == 403, private


def test_export_refuses_to_write_into_a_running_run(capsys, server: AppHandle, run_id: str) -> None:
    store = RunStore(server.runner.runs_dir)
    live = store.root / "20990101-000000-karst-live"
    shutil.copytree(store.root / run_id, live)
    (live / "merged.safetensors").unlink()
    lock = store.claim(live.name)
    try:
        store.write_status(live.name, status="running")
        code = cli(["export", live.name, "--runs-dir", str(store.root)])
        err = capsys.readouterr().err
        assert code == 2 and "still running" in err and err.count("\n") == 1, err
        assert not (live / "merged.safetensors").exists()
    finally:
        lock.release()
        shutil.rmtree(live)


def test_messages_read_the_same_in_a_client_and_contain_no_markup(client: Client) -> None:
    with pytest.raises(AppError) as err:
        client.predict("<img src=x>it's", api_name="/watch")
    message = str(err.value)
    assert "it's" in message and "&#" not in message and "&lt;" not in message  # not HTML-escaped
    assert "<" not in message and "‹img src=x›" in message  # but no tag can form in the browser


def test_wrong_passwords_are_slowed_down(tmp_path: Path) -> None:
    handle = start_app(tmp_path / "runs", auth=("ada", "correct horse"), start_worker=False)
    try:
        login = handle.url.rstrip("/") + "/login"
        times = []
        with httpx.Client(timeout=30) as http:
            for _ in range(3):
                start = time.monotonic()
                assert http.post(login, data={"username": "ada", "password": "guess"}).status_code >= 400
                times.append(time.monotonic() - start)
            assert http.post(login, data={"username": "ada", "password": "correct horse"}).status_code == 200
        print(f"\n[abuse] wrong-password answers took {', '.join(f'{t:.2f}' for t in times)} s")
        assert times[0] >= 0.45 and times[2] >= 1.8 and times[2] > times[0], times  # 0.5 s, 1 s, 2 s
        # No server path is readable without a data root (the default).
        message = Client(handle.url, auth=("ada", "correct horse"), verbose=False).predict(
            *form_values(fast_form(dataset_source="folder", dataset_path=str(tmp_path))), api_name="/check_settings")
        assert NOT_ALLOWED in message
    finally:
        handle.close()


def test_upload_folder_is_removed_on_sigterm(tmp_path: Path) -> None:
    temp, runs, port = tmp_path / "tmp", tmp_path / "runs", free_port()
    temp.mkdir()
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port), "--runs-dir", str(runs)],
                            env=env(TMPDIR=str(temp)), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90  # gradio, torch and the worker it starts, on two shared cores
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        assert list(temp.glob("karst-uploads-*")), "the app did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) is not None
        assert not list(temp.glob("karst-uploads-*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        JobManager(runs).stop_worker(timeout_s=10)


# -- point 8: the CLI: one line, an exit status, a traceback only on request -----------------------
@pytest.mark.parametrize("argv, match", [
    (["export", "a" * 5000], "not a valid run id"),
    (["export", "RUN", "--out", "/proc/no/such/m.safetensors"], "cannot write the export file"),
])
def test_cli_bad_input_exits_2_with_one_line(capsys, argv: list[str], match: str, server: AppHandle,
                                             run_id: str) -> None:
    argv = [a.replace("RUN", str(server.runner.runs_dir / run_id)) for a in argv]
    code = cli([*argv, "--runs-dir", str(server.runner.runs_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and match in err and len(err) < 400, err


@pytest.mark.parametrize("flag, match", [("--dataset", "neither an embedded task"),
                                         ("--backbone", "not karst-vit-micro")])
def test_cli_train_with_a_name_too_long_for_the_file_system(capsys, tmp_path: Path, flag: str, match: str) -> None:
    code = cli(["train", flag, "c" * 5000, "--epochs", "1", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "internal error" not in err, err[-300:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("karst: error: ") and match in last and len(last) < 500, last


def test_cli_export_creates_a_missing_out_folder(capsys, server: AppHandle, run_id: str, tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder" / "m.safetensors"
    assert cli(["export", run_id, "--out", str(out), "--runs-dir", str(server.runner.runs_dir)]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_cli_internal_error_names_its_log_and_debug_shows_the_traceback(capsys, monkeypatch,
                                                                        tmp_path: Path) -> None:
    def broken(args: Any) -> int:
        raise TypeError("simulated bug")

    monkeypatch.setitem(sys.modules["karst.cli"]._COMMANDS, "runs", broken)
    code = cli(["runs", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    log = tmp_path / ".karst-cli.log"
    assert code == 1 and err.count("\n") == 1 and str(log) in err and "Traceback" not in err, err
    assert "simulated bug" in log.read_text() and "Traceback" in log.read_text()
    with pytest.raises(TypeError, match="simulated bug"):
        cli(["--debug", "runs", "--runs-dir", str(tmp_path)])


def test_python_m_karst_prints_no_traceback(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "karst", "cancel", "b" * 5000, "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
