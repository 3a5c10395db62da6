"""Faults an unlucky user or a crash causes: damaged run folders, ghost and dead workers, resume.

Real files and real worker processes (``python -m karst worker``), tiny runs, bounded waits.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import env, tiny_config, wait_for
from safetensors.torch import load_file

from karst.callbacks import Callback
from karst.cli import main as cli_main
from karst.errors import RunError
from karst.jobs import JobManager, execute_run, resume_foreground, run_foreground
from karst.runs import UNREADABLE, RunStore, read_json, read_jsonl
from karst.runview import MetricsTail
from karst.workspace import Workspace


@pytest.fixture(scope="module", autouse=True)
def child_env():
    """Workers started by the code under test inherit this checkout and one thread."""
    saved = dict(os.environ)
    os.environ.update(env())
    yield
    os.environ.clear()
    os.environ.update(saved)


def _worker(runs: Path, *args: str) -> subprocess.Popen:
    runs.mkdir(parents=True, exist_ok=True)
    log = open(runs.parent / f"{runs.name}-worker.log", "ab")  # outside the folder the test deletes
    return subprocess.Popen([sys.executable, "-m", "karst", "worker", "--runs-dir", str(runs), *args],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env())


def _noticed(runs: Path) -> bool:
    """The worker has logged why it exits (the process may still be shutting down)."""
    return b"exits:" in (runs.parent / f"{runs.name}-worker.log").read_bytes()


def _ready(runs: Path, pid: int) -> bool:
    info = read_json(runs / ".worker.json") or {}
    return info.get("pid") == pid and info.get("ready")


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


def _state(store: RunStore, run_id: str) -> str:
    return store.read_status(run_id)["status"]


# ------------------------------------------------------------------------------ damaged run folders
# Each way a status.json (or config.json) can be damaged, and a word the reason must contain.
DAMAGE = {
    "non-utf8": ("status.json", b'\xff\xfe{"status": "queued"}', "UTF-8"),
    "json-list": ("status.json", b"[1, 2, 3]", "list"),
    "no-status": ("status.json", b'{"message": "hi", "queued_at": 1.0}', "'status'"),
    "text-queued-at": ("status.json", b'{"status": "queued", "queued_at": "yesterday"}', "queued_at"),
    "truncated-config": ("config.json", b'{"backbone": "karst-vit-mi', "config.json"),
}


def test_damaged_run_folders_cost_only_themselves(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ws = Workspace(tmp_path / "runs", tmp_path / "uploads", start_worker=False)
    config = tiny_config(tmp_path, epochs=1, warmup_epochs=0)
    bad = {}
    for kind, (name, data, _) in DAMAGE.items():
        run_id = ws.jobs.submit(config, start_worker=False)
        (ws.runs_dir / run_id / name).write_bytes(data)
        bad[run_id] = kind

    rows = {r["run_id"]: r for r in ws.list_runs()}
    for run_id, kind in bad.items():
        status = rows[run_id]["status"]
        assert status["status"] == UNREADABLE, kind
        assert DAMAGE[kind][2] in status["message"] and "\n" not in status["message"], (kind, status)
    # The CLI lists them (exit 0, one line each, the reason included), the app's views too.
    assert cli_main(["runs", "--runs-dir", str(ws.runs_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count(UNREADABLE) == len(bad) and "queued_at='yesterday'" in out
    labels = {run_id: label for label, run_id, _ in ws.run_choices()}
    assert all(f"{UNREADABLE}: " in labels[run_id] for run_id in bad)
    compared = {r["run"]: r["status"] for r in ws.compare_rows()}
    assert all(compared[run_id].startswith(f"{UNREADABLE}: ") for run_id in bad)
    assert ws.default_run() is None  # a fresh page attaches to no damaged run
    with pytest.raises(RunError, match="queued_at"):
        ws.view(next(r for r, k in bad.items() if k == "text-queued-at"))

    # Launching still works and a good run still completes past the damaged ones.
    good = ws.jobs.submit(config)
    assert ws.store.queue_position(good) is not None
    wait_for(lambda: _state(ws.store, good) == "completed", timeout=120, what="the good run completing")
    broken_config = next(r for r, k in bad.items() if k == "truncated-config")
    summary = read_json(ws.runs_dir / broken_config / "summary.json")
    assert summary["status"] == "failed" and "config.json" in summary["message"]
    # Each damaged folder is logged once, not once per poll (5 polls a second).
    log_file = ws.runs_dir / ".worker.log"
    size = log_file.stat().st_size
    time.sleep(1.5)
    text = log_file.read_text()
    assert log_file.stat().st_size == size, "the worker log grows while idle"
    assert "Traceback" not in text
    for run_id, kind in bad.items():
        if kind != "truncated-config":  # that one has a readable status: it was tried and failed
            assert text.count(f"skipping run folder {run_id}") == 1, (kind, text)
    ws.delete(next(iter(bad)))  # a damaged run can be deleted
    assert ws.jobs.stop_worker(timeout_s=20)


# ------------------------------------------------------------------------------ ghost workers
class _App:
    """What the app's watchdog does for a worker's idle check: touch a heartbeat file every 0.3 s."""

    def __init__(self, runs: Path):
        self.heartbeat = runs / ".attached" / "4242"
        self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
        self.detached = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.detached.is_set():
            self.heartbeat.touch()
            self.detached.wait(0.3)

    def detach(self) -> None:
        self.detached.set()
        self.thread.join()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory):
    """Three idle workers started at once (their start-up overlaps): one per way of ending."""
    root = tmp_path_factory.mktemp("workers")
    dirs = {"ghost": root / "a" / "runs", "lock": root / "b" / "runs", "idle": root / "c" / "runs"}
    app = _App(dirs["idle"])  # attached before the idle worker starts
    procs = {"ghost": _worker(dirs["ghost"]), "lock": _worker(dirs["lock"]),
             "idle": _worker(dirs["idle"], "--idle-exit", "1")}
    try:
        yield {name: (procs[name], dirs[name]) for name in dirs}, app, root
    finally:
        app.detach()
        for proc in procs.values():
            _end(proc)


def _exit_seconds(proc: subprocess.Popen, runs: Path, t0: float) -> tuple[float, float]:
    """(seconds until the worker logged why it exits, seconds until its process ended) since ``t0``."""
    wait_for(lambda: _noticed(runs), timeout=10, what="the worker noticing")
    noticed = time.monotonic() - t0
    assert proc.wait(timeout=10) == 0
    return noticed, time.monotonic() - t0


def test_worker_exits_when_its_runs_directory_is_deleted(workers) -> None:
    procs, _, root = workers
    ghost, runs = procs["ghost"]
    wait_for(lambda: _ready(runs, ghost.pid), timeout=150, what="worker ready")
    # The runs directory is deleted, and a launch recreates it and queues a run at once: the old
    # worker must leave it to the worker that launch starts (it used to train it, as a ghost).
    shutil.rmtree(runs)
    t0 = time.monotonic()
    store = RunStore(runs)
    run_id = store.create(tiny_config(root, epochs=1, warmup_epochs=0))
    noticed, ended = _exit_seconds(ghost, runs, t0)
    print(f"\nruns directory deleted: the worker noticed in {noticed:.2f}s, exited (rc 0) in {ended:.2f}s")
    status = store.read_status(run_id)
    assert status["status"] == "queued" and status["pid"] is None, "the ghost took the new run"
    assert JobManager(runs).worker_pid() is None  # the next launch starts the one worker


def test_worker_exits_when_its_lock_file_is_replaced(workers) -> None:
    procs, _, _ = workers
    replaced, runs = procs["lock"]
    wait_for(lambda: _ready(runs, replaced.pid), timeout=150, what="worker ready")
    fresh = runs / ".worker.lock.new"  # what a second folder created at the same path looks like
    fresh.touch()
    os.replace(fresh, runs / ".worker.lock")
    noticed, ended = _exit_seconds(replaced, runs, time.monotonic())
    print(f"\nlock file replaced: the worker noticed in {noticed:.2f}s, exited (rc 0) in {ended:.2f}s")


def test_idle_worker_exits_once_no_app_is_attached(workers) -> None:
    procs, app, _ = workers
    proc, runs = procs["idle"]
    wait_for(lambda: _ready(runs, proc.pid), timeout=150, what="worker ready")
    time.sleep(2.0)  # twice its idle period (--idle-exit 1), with an app attached
    assert proc.poll() is None, "the worker left although an app is attached"
    app.detach()
    noticed, ended = _exit_seconds(proc, runs, time.monotonic())
    print(f"\nlast heartbeat -> the idle worker (--idle-exit 1) noticed in {noticed:.2f}s, exited (rc 0) in "
          f"{ended:.2f}s")


# ------------------------------------------------------------------------------ dead worker, resume
def _steps(store: RunStore, run_id: str) -> list[dict]:
    return [r for r in store.read_metrics(run_id)[0] if r["type"] == "step"]


def test_watchdog_restarts_a_killed_worker_and_the_killed_run_resumes(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="karst.jobs")
    ws = Workspace(tmp_path / "runs", tmp_path / "uploads")  # starts the worker and the watchdog
    store, jobs = ws.store, ws.jobs
    try:
        victim = jobs.submit(tiny_config(tmp_path, epochs=3, warmup_epochs=1, max_train_samples=128, batch_size=16))
        waiting = jobs.submit(tiny_config(tmp_path, epochs=1, warmup_epochs=0, seed=3))
        state_1 = ws.runs_dir / victim / "snapshots" / "state_001.pt"
        wait_for(state_1.exists, timeout=120, what="the first epoch's training state")
        old = jobs.worker_pid()
        os.kill(old, signal.SIGKILL)
        killed_at, t0 = time.time(), time.monotonic()
        wait_for(lambda: jobs.worker_pid() not in (None, old), timeout=120, every=0.02, what="a new worker")
        locked_s = time.monotonic() - t0
        wait_for(jobs.worker_ready, timeout=120, every=0.02, what="the new worker ready")
        ready_s = time.monotonic() - t0
        noticed = [r.created for r in caplog.records if "no worker is alive" in r.getMessage()]
        assert noticed, "the watchdog did not say it started a worker"
        noticed_s = noticed[0] - killed_at
        print(f"\nSIGKILL -> watchdog noticed {noticed_s:.2f}s, new worker holds the lock {locked_s:.2f}s, "
              f"ready {ready_s:.2f}s")
        assert noticed_s < 3.0  # one watchdog period (1 s) plus slack; the rest is the worker's imports
        wait_for(lambda: _state(store, waiting) == "completed", timeout=120, what="the queued run completing")
        assert _state(store, victim) == "interrupted"

        # Resume the killed run in the worker (the app's Resume button): queued, then running, then done.
        assert "from epoch" in ws.resume(victim)
        assert store.read_status(victim)["status"] in ("queued", "running")
        wait_for(lambda: _state(store, victim) == "completed", timeout=120, what="the resumed run completing")
        summary = store.read_summary(victim)
        assert summary["resumed_from"] >= 1 and summary["epochs_done"] == 3
        epochs = [r["epoch"] for r in store.read_metrics(victim)[0] if r["type"] == "epoch"]
        assert epochs == [1, 2, 3]
        assert [s["step"] for s in _steps(store, victim)] == list(range(1, 25))
        assert [p.name for p in state_1.parent.glob("state_*.pt")] == ["state_003.pt"]  # only the newest kept
    finally:
        ws.close()
        jobs.stop_worker(timeout_s=20)
    assert not (ws.runs_dir / ".attached" / str(os.getpid())).exists()


class _CancelAfter(Callback):
    """Stop a run after an epoch, as the Stop button does (the cancel file)."""

    def __init__(self, run_dir: Path, epoch: int):
        self.run_dir, self.epoch = run_dir, epoch

    def on_epoch(self, record: dict, progress) -> None:
        if record["epoch"] == self.epoch:
            (self.run_dir / "cancel").touch()


def _comparable(records: list[dict]) -> list[dict]:
    # Times and speeds differ between any two runs; everything else must not.
    return [{k: v for k, v in r.items() if k not in ("t", "elapsed_s", "img_per_s")} for r in records]


def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path, capsys: pytest.CaptureFixture, one_thread) -> None:
    runs = tmp_path / "runs"
    store = RunStore(runs)
    config = tiny_config(tmp_path, epochs=3)
    whole = run_foreground(config, runs)
    assert whole["status"] == "completed"

    run_id, lock = store.create_claimed(config)
    stopped = execute_run(store, run_id, lock, [_CancelAfter(runs / run_id, 1)])
    assert stopped["status"] == "cancelled" and stopped["epochs_done"] == 1
    tail = MetricsTail(store)
    assert [r["epoch"] for r in tail.read(run_id)[1]] == [1]
    resumed = resume_foreground(run_id, runs)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == 1 and resumed["run_id"] == run_id
    assert store.read_status(run_id)["resume_from"] == 1

    # Same process, same thread count, same torch: every float operation repeats in the same order,
    # so the weights must be bitwise equal (atol=0). Only a different thread count or BLAS could
    # change the summation order; that would show as differences near float32 epsilon, not here.
    a = load_file(str(runs / whole["run_id"] / "adapter.safetensors"))
    b = load_file(str(runs / run_id / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    records_a = read_jsonl(runs / whole["run_id"] / "metrics.jsonl")[0]
    records_b = read_jsonl(runs / run_id / "metrics.jsonl")[0]
    assert _comparable(records_b) == _comparable(records_a)  # step losses, val_acc per epoch, test_acc
    assert [r["epoch"] for r in records_b if r["type"] == "epoch"] == [1, 2, 3]
    assert resumed["test_acc"] == whole["test_acc"] and resumed["best_val_acc"] == whole["best_val_acc"]
    assert [r["epoch"] for r in tail.read(run_id)[1]] == [1, 2, 3]  # a poller sees the rewound file afresh

    # A completed run is not resumed: one line, exit 2.
    with pytest.raises(RunError, match="completed") as err:
        resume_foreground(whole["run_id"], runs)
    assert "\n" not in str(err.value)
    capsys.readouterr()
    assert cli_main(["resume", whole["run_id"], "--runs-dir", str(runs)]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "only a cancelled or interrupted run can be resumed" in message
    assert json.loads((runs / whole["run_id"] / "status.json").read_text())["status"] == "completed"
