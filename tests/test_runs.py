"""Run folders: unique atomic creation, atomic JSON, torn metrics lines, liveness, cancel, delete."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from karst.config import TrainConfig
from karst.errors import RunError
from karst.runs import (
    RunStore,
    _file_mode,
    atomic_write_json,
    decode_array,
    encode_array,
    read_json,
    read_jsonl,
)

ID_RE = re.compile(r"^\d{8}-\d{6}-(karst|lora|lokr|full|probe)-[0-9a-f]{4}$")


def _create_many(root: str, n: int, queue: mp.Queue) -> None:
    store = RunStore(root)
    queue.put([store.create(TrainConfig(method="lora")) for _ in range(n)])


def test_create_writes_a_queued_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    config = TrainConfig.from_dict({"epochs": 3, "method": {"adapter": {"rank": 4}}})
    run_id = store.create(config)
    assert ID_RE.match(run_id)
    assert store.read_config(run_id) == config
    status = store.read_status(run_id)
    assert status["status"] == "queued" and status["pid"] is None and status["finished_at"] is None
    assert store.read_summary(run_id) is None
    assert store.read_metrics(run_id) == ([], 0)
    assert [r["run_id"] for r in store.list_runs()] == [run_id]


def test_simultaneous_creation_from_threads_and_processes(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    store = RunStore(root)
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        made = [store.create(TrainConfig()) for _ in range(10)]
        with lock:
            ids.extend(made)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    # fork: the children need no fresh interpreter (spawning re-imports torch: slow on 2 cores).
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create_many, args=(str(root), 10, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in procs:
        ids.extend(queue.get(timeout=60))
    for p in procs:
        p.join(timeout=60)
    assert len(ids) == 110 and len(set(ids)) == 110
    assert all(ID_RE.match(i) for i in ids)
    # Every folder is complete and readable; the queue holds all of them in launch order.
    assert sorted(store.run_ids()) == sorted(ids)
    assert all(store.read_status(i)["status"] == "queued" for i in ids)
    order = store.queued()
    stamps = [store.read_status(i)["queued_at"] for i in order]
    assert sorted(order) == sorted(ids) and stamps == sorted(stamps)


def test_atomic_json_never_shows_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    atomic_write_json(path, {"i": 0, "pad": "x" * 20000})
    stop = threading.Event()
    seen, errors = [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(read_json(path)["i"])
            except Exception as e:  # any partial read would land here
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(1, 300):
        atomic_write_json(path, {"i": i, "pad": "x" * 20000})
    stop.set()
    t.join()
    assert not errors and seen and seen == sorted(seen)
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_metrics_reader_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "step", "step": 1}\n{"type": "step", "st')
    records, offset = read_jsonl(path)
    assert records == [{"type": "step", "step": 1}]
    with open(path, "a") as f:
        f.write('ep": 2}\n{"type": "epoch", "epoch": 1}\n')
    more, offset2 = read_jsonl(path, offset)
    assert more == [{"type": "step", "step": 2}, {"type": "epoch", "epoch": 1}]
    assert offset2 == path.stat().st_size
    assert read_jsonl(path, offset2) == ([], offset2)
    assert read_jsonl(tmp_path / "missing.jsonl") == ([], 0)


def test_array_encoding_round_trip() -> None:
    a = np.linspace(-3, 3, 97).astype(np.float32)
    assert np.allclose(decode_array(encode_array(a)), a, atol=2e-3)


def _owner(root: str, conn) -> None:
    store = RunStore(root)
    run_id, lock = store.create_claimed(TrainConfig())
    store.write_status(run_id, status="running", message="training")
    conn.send(run_id)
    time.sleep(120)


def test_dead_owner_shows_as_interrupted(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_owner, args=(str(root), child))
    proc.start()
    try:
        run_id = parent.recv()
        store = RunStore(root)
        # Alive: the lock is held, so the run stays "running" however often it is read.
        assert store.read_status(run_id)["status"] == "running"
        with pytest.raises(RunError, match="running; cancel it first"):
            store.delete(run_id)
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.join(timeout=10)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        proc.kill()
    status = store.read_status(run_id)
    assert status["status"] == "interrupted"
    assert f"pid {proc.pid}" in status["message"] and "no snapshot" in status["message"]
    # Recorded on disk, so every reader agrees.
    assert read_json(root / run_id / "status.json")["status"] == "interrupted"
    store.delete(run_id)
    assert not store.exists(run_id)


def test_cancel_queued_at_once_and_running_by_flag(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    queued = store.create(TrainConfig())
    assert store.request_cancel(queued)["status"] == "cancelled"
    assert store.read_status(queued)["finished_at"] is not None
    owned, lock = store.create_claimed(TrainConfig())
    store.write_status(owned, status="running")
    status = store.request_cancel(owned)
    # Someone works on it: only the flag is set; the owner stops itself within a step.
    assert status["status"] == "running" and store.cancel_requested(owned)
    lock.release()
    # Cancelling a finished run changes nothing.
    assert store.request_cancel(queued)["status"] == "cancelled"


def test_queue_positions_follow_launch_order(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    ids = [store.create(TrainConfig()) for _ in range(3)]
    assert [store.queue_position(i) for i in ids] == [1, 2, 3]
    store.request_cancel(ids[0])
    assert [store.queue_position(i) for i in ids] == [None, 1, 2]
    assert [r["run_id"] for r in store.list_runs()] == ids[::-1]  # newest first


@pytest.mark.parametrize("bad", ["../etc", "no-such-run", "", "a/b"])
def test_unknown_or_unsafe_ids_are_refused(tmp_path: Path, bad: str) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(RunError, match="karst runs"):
        store.read_status(bad)
    with pytest.raises(RunError):
        store.delete(bad)


def test_delete_is_atomic_and_complete(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create(TrainConfig())
    store.write_status(run_id, status="completed", finished_at=time.time())
    (store.path(run_id) / "snapshots").mkdir()
    store.delete(run_id)
    assert not any(tmp_path.iterdir())
    assert store.list_runs() == []


def test_status_json_keys_follow_the_contract(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create(TrainConfig())
    keys = set(json.loads((tmp_path / run_id / "status.json").read_text()))
    assert keys == {"status", "message", "pid", "device", "step", "total_steps", "epoch", "epochs", "eta_s",
                    "queued_at", "started_at", "updated_at", "finished_at", "owner"}


def test_published_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from karst.runs import publish

    old = os.umask(0o027)
    try:
        _file_mode.cache_clear()
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        tmp = tmp_path / ".b.tmp"
        tmp.write_bytes(b"1")
        os.chmod(tmp, 0o600)  # as mkstemp and safetensors create them
        publish(tmp, tmp_path / "b.bin")
    finally:
        os.umask(old)
        _file_mode.cache_clear()
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
