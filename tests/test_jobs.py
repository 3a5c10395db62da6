"""The job queue with a real worker process: order, device lock, cancel, latency, SIGKILL recovery."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
from helpers import env, tiny_config, wait_for

from karst.export import Predictor, load_run
from karst.jobs import JobManager, device_lock
from karst.runs import read_json


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("jobs")
    saved = dict(os.environ)
    os.environ.update(env())  # the worker inherits: this checkout, one thread
    manager = JobManager(root / "runs")
    try:
        yield manager, root
    finally:
        manager.stop_worker(timeout_s=20)
        os.environ.clear()
        os.environ.update(saved)


def _steps(manager: JobManager, run_id: str) -> list[dict]:
    return [r for r in manager.store.read_metrics(run_id)[0] if r["type"] == "step"]


def _state(manager: JobManager, run_id: str) -> str:
    return manager.store.read_status(run_id)["status"]


def test_queue_runs_in_order_one_per_device(jobs) -> None:
    manager, root = jobs
    # Two callers at the same instant get the same single worker.
    pids: list[int] = []
    threads = [threading.Thread(target=lambda: pids.append(manager.ensure_worker(wait_s=60))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pids) == 2 and pids[0] == pids[1] == manager.worker_pid()

    # Someone else (say a foreground `karst train`) holds the CPU: the worker must wait for it.
    held = device_lock(manager.root, "cpu")
    assert held.acquire()
    config = tiny_config(root, epochs=1, warmup_epochs=0)
    ids = [manager.submit(config) for _ in range(3)]
    assert [manager.queue_position(i) for i in ids] == [1, 2, 3]
    wait_for(lambda: "waiting for cpu" in manager.store.read_status(ids[0])["message"], timeout=30)
    cancelled = manager.cancel(ids[2])
    assert cancelled["status"] == "cancelled"
    assert [manager.queue_position(i) for i in ids] == [1, 2, None]
    time.sleep(0.5)
    assert _steps(manager, ids[0]) == [] and _state(manager, ids[0]) == "queued"
    held.release()

    wait_for(lambda: all(_state(manager, i) == "completed" for i in ids[:2]), timeout=120)
    first, second = (manager.store.read_status(i) for i in ids[:2])
    assert first["finished_at"] <= second["started_at"], "two jobs overlapped on one device"
    assert not (manager.root / ids[2] / "metrics.jsonl").exists(), "a cancelled queued run must never start"
    assert manager.store.read_summary(ids[2])["status"] == "cancelled"


def test_warm_worker_latency_and_cancel_within_a_step(jobs) -> None:
    manager, root = jobs
    manager.ensure_worker(wait_s=60, wait_ready=True)
    assert manager.worker_ready()
    config = tiny_config(root, epochs=3, warmup_epochs=1, max_train_samples=512, batch_size=16)
    t0 = time.time()
    run_id = manager.submit(config)
    wait_for(lambda: _steps(manager, run_id), timeout=60, every=0.02)
    latency = time.time() - t0
    print(f"\nsubmit -> first metric line with a warm worker: {latency:.2f}s")
    assert latency < 10.0

    wait_for(lambda: len(_steps(manager, run_id)) >= 3, timeout=60)
    asked = time.time()
    manager.cancel(run_id)
    wait_for(lambda: _state(manager, run_id) == "cancelled", timeout=30)
    late = [s for s in _steps(manager, run_id) if s["t"] > asked]
    assert len(late) <= 1, f"{len(late)} steps ran after the cancel request"
    assert len(_steps(manager, run_id)) < 96
    # The weights at the moment of cancelling are kept and load.
    assert (manager.root / run_id / "adapter.safetensors").is_file()
    method, _, classes = load_run(manager.root / run_id)
    assert len(classes) == 10 and method.name == "karst"


def test_killed_worker_leaves_an_interrupted_run_that_still_loads(jobs) -> None:
    manager, root = jobs
    pid = manager.ensure_worker(wait_s=60)
    long = tiny_config(root, epochs=8, warmup_epochs=1, max_train_samples=128, batch_size=16)
    victim = manager.submit(long)
    waiting = manager.submit(tiny_config(root, epochs=1, warmup_epochs=0, seed=3))
    wait_for(lambda: (manager.root / victim / "snapshots" / "epoch_001.safetensors").exists(), timeout=90)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not manager.worker_alive(), timeout=10)

    rows = {r["run_id"]: r for r in manager.store.list_runs()}
    assert rows[victim]["status"]["status"] == "interrupted"
    assert "epoch" in rows[victim]["status"]["message"]
    assert rows[waiting]["status"]["status"] == "queued"
    # Metrics stay readable (at most a torn last line, which the reader skips).
    assert _steps(manager, victim)
    # The last snapshot is a usable checkpoint: it loads and predicts.
    assert manager.store.last_checkpoint(victim).parent.name == "snapshots"
    method, backbone, classes = load_run(manager.root / victim)
    image = torch.rand(3, 32, 32)
    from torchvision.transforms.functional import to_pil_image

    top = Predictor(method.model, backbone.transform(), classes).predict([to_pil_image(image)], top_k=3)[0]
    assert len(top) == 3 and all(c in classes for c, _ in top)

    # A new worker serves what is still queued; the interrupted run stays as it is.
    new_pid = manager.ensure_worker(wait_s=60)
    assert new_pid != pid
    wait_for(lambda: _state(manager, waiting) == "completed", timeout=120)
    assert _state(manager, victim) == "interrupted"
    assert read_json(manager.root / ".worker.json")["pid"] == new_pid
