"""The job queue: a worker process that outlives any UI session, one job per device at a time.

The app (or anyone) submits runs with :class:`JobManager`; they land in the runs directory as
``queued`` folders. A long-lived worker (``python -m karst worker --runs-dir D``, started by
``JobManager.ensure_worker``) keeps torch imported, picks queued runs in launch order and trains
them. Everything goes through the run folders and file locks, so any number of processes (app
instances, ``karst train`` in a terminal, the worker) can share one runs directory:

- ``<runs>/.worker.lock``: held by the one live worker of this runs directory.
- ``<runs>/.locks/device-<key>.lock``: held by whoever trains on that device (worker or a
  foreground ``karst train``), so jobs on one device never overlap. ``$KARST_LOCK_DIR`` moves
  these locks elsewhere (e.g. a machine-wide folder shared by several runs directories).
- ``<run>/.lock``: held by the process working on that run (see ``karst.runs``). A worker killed
  mid-run releases it, and readers then show the run as ``interrupted``.
- ``<runs>/.attached/<pid>``: a heartbeat file each front end (the app) touches every second while
  it runs (:meth:`JobManager.start_watchdog`).

A worker runs one job at a time: runs start in order even when they ask for different devices.
It exits when its runs directory or its ``.worker.lock`` is deleted or replaced (a new worker
would lock the new file), and after ``idle_exit_s`` with nothing queued and no fresh heartbeat.
The app's watchdog thread starts a new worker within seconds when runs are queued and none lives.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .device import device_key, resolve_device
from .errors import KarstError, RunError
from .runs import FileLock, RunStore, atomic_write_json, check_status, read_json

__all__ = ["JobManager", "run_worker", "claim_worker", "execute_run", "run_foreground", "resume_foreground",
           "device_lock", "WORKER_IDLE_EXIT_S"]

_POLL_S = 0.2
# A worker with nothing queued and no app attached exits after this long (it holds ~1 GB of imports).
WORKER_IDLE_EXIT_S = 600.0
# How often the app's watchdog touches its heartbeat and checks that queued runs have a worker.
_WATCH_S = 1.0
_ATTACHED = ".attached"
log = logging.getLogger("karst.jobs")


def _lock_dir(root: Path) -> Path:
    folder = Path(os.environ.get("KARST_LOCK_DIR") or root / ".locks")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def device_lock(root: str | Path, key: str) -> FileLock:
    """The lock that serialises jobs on one device (``key`` from ``karst.device.device_key``)."""
    return FileLock(_lock_dir(Path(root)) / f"device-{key}.lock")


def _finish_unstarted(store: RunStore, run_id: str, status: str, message: str) -> dict[str, Any]:
    now = time.time()
    summary = {"run_id": run_id, "status": status, "message": message, "seconds": 0.0, "epochs_done": 0}
    atomic_write_json(store.path(run_id) / "summary.json", summary)
    store.write_status(run_id, status=status, message=message, finished_at=now, eta_s=None)
    return summary


def execute_run(
    store: RunStore,
    run_id: str,
    run_lock: FileLock,
    callbacks: Iterable[Any] = (),
    stop_flag: Any = None,
    raise_errors: bool = False,
) -> dict[str, Any]:
    """Train a claimed run: wait for its device, train, record; always releases ``run_lock``.

    Args:
        store: the runs directory.
        run_id: a run this process has claimed (``run_lock`` held).
        callbacks: extra trainer callbacks (the CLI's progress bar).
        stop_flag: optional zero-argument callable; True cancels (a worker asked to stop).
        raise_errors: re-raise a ``KarstError`` after recording it (the CLI turns it into exit 2);
            the worker leaves it False and moves on to the next run.

    Returns:
        The run summary. A ``KarstError`` (bad settings/data) is recorded as ``failed``.
    """
    # local: train pulls in timm and the data stack (seconds); importing karst.jobs stays light so
    # that `karst worker` holds its lock at once, and imports train in _warm_up right after.
    from .train import train

    run_dir = store.path(run_id)
    stop_flag = stop_flag or (lambda: False)

    def cancelled() -> bool:
        return (run_dir / "cancel").exists() or stop_flag()

    dev_lock = None
    try:
        try:
            config = store.read_config(run_id)
            resume = (read_json(run_dir / "status.json") or {}).get("resume_from") is not None
            device = resolve_device(config.device)
        except KarstError as e:
            summary = _finish_unstarted(store, run_id, "failed", str(e))
            if raise_errors:
                raise
            return summary
        dev_lock = _wait_for_device(store, run_id, device, device_key(device), cancelled)
        if dev_lock is None or cancelled():
            return _finish_unstarted(store, run_id, "cancelled", "cancelled before it started")
        return _train_recorded(train, config, run_dir, callbacks, cancelled, resume, raise_errors)
    finally:
        if dev_lock is not None:
            dev_lock.release()
        run_lock.release()


def _train_recorded(train: Any, config: TrainConfig, run_dir: Path, callbacks: Iterable[Any], cancelled: Any,
                    resume: bool, raise_errors: bool) -> dict[str, Any]:
    """Train and return the summary; a failure is on record in the run folder either way."""
    try:
        return train(config, run_dir, callbacks=callbacks, cancel_check=cancelled, resume=resume)
    except KarstError:
        if raise_errors:
            raise
        # Otherwise recorded as failed by the run recorder; the message is in status/summary.
    except Exception:
        # A bug: keep the worker alive. train() saved the traceback to error.log and named the file
        # in the run's status; one raised outside its loop (while recording the end) is saved here.
        if not (run_dir / "error.log").exists():
            (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
    return read_json(run_dir / "summary.json") or {"run_id": run_dir.name, "status": "failed"}


def _wait_for_device(store: RunStore, run_id: str, device: Any, key: str, cancelled: Any) -> FileLock | None:
    """Take the device's lock, waiting while another job holds it; None if the run was cancelled meanwhile."""
    lock = device_lock(store.root, key)
    waiting = False
    while not lock.acquire():
        if cancelled():
            return None
        if not waiting:
            store.write_status(run_id, pid=os.getpid(), message=f"waiting for {device} (another job is using it)")
            waiting = True
        time.sleep(_POLL_S)
    return lock


def run_foreground(
    config: TrainConfig, runs_dir: str | Path | None = None, callbacks: Iterable[Any] = ()
) -> dict[str, Any]:
    """Create a run owned by this process and train it here (``karst train``).

    It waits for the device like any job. Ctrl-C cancels it (status ``cancelled``).
    """
    store = RunStore(runs_dir)
    run_id, lock = store.create_claimed(config)
    return _foreground(store, run_id, lock, callbacks)


def resume_foreground(run_id: str, runs_dir: str | Path | None = None, callbacks: Iterable[Any] = ()) -> dict[str, Any]:
    """Resume a cancelled or interrupted run here, from its last saved training state (``karst resume``).

    Raises:
        RunError: the run cannot be resumed (completed, active, ...); the message says why.
    """
    store = RunStore(runs_dir)
    _, lock = store.prepare_resume(run_id, claim=True)
    return _foreground(store, run_id, lock, callbacks)


def _foreground(store: RunStore, run_id: str, lock: FileLock, callbacks: Iterable[Any]) -> dict[str, Any]:
    try:
        return execute_run(store, run_id, lock, callbacks, raise_errors=True)
    except KeyboardInterrupt:  # only while waiting for the device; train() handles its own
        lock.release()
        return _finish_unstarted(store, run_id, "cancelled", "interrupted by the user before it started")


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def run_worker(
    runs_dir: str | Path, poll_s: float = _POLL_S, idle_exit_s: float | None = WORKER_IDLE_EXIT_S,
    threads: int | None = None
) -> int:
    """The worker loop: train queued runs in launch order until stopped (SIGTERM/SIGINT), idle or orphaned.

    Args:
        runs_dir: the runs directory to serve.
        poll_s: seconds between scans of the queue.
        idle_exit_s: exit after this long with nothing queued and no app attached (None or inf: run
            until stopped). It also exits as soon as its runs directory or lock file is gone.
        threads: torch CPU threads. Default: all CPUs but one, unless ``OMP_NUM_THREADS`` is set.
            The spare core keeps the app that polls this worker responsive, and on a busy small
            machine one thread too many makes every step several times slower.

    Returns:
        0, or 1 if another worker already serves ``runs_dir``.
    """
    store = RunStore(runs_dir)
    claimed = claim_worker(store)
    if claimed is None:
        return 1
    lock, stopping = claimed
    try:
        _warm_up(store, threads)
        why = _serve(store, lock, poll_s, idle_exit_s, stopping)
        print(f"karst worker {os.getpid()} exits: {why}", file=sys.stderr, flush=True)
    finally:
        lock.release()
    return 0


def claim_worker(store: RunStore) -> tuple[FileLock, threading.Event] | None:
    """Become the worker of ``store``: its lock, and an event that SIGTERM/SIGINT set.

    The event lets the current run end cleanly (status cancelled, weights kept) before the loop
    stops. None (and a line on stderr) if another worker already serves the directory.
    """
    store.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(store.root / ".worker.lock")
    if not _acquire_soon(lock):
        print(f"a worker already serves {store.root}", file=sys.stderr)
        return None
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
        signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
    return lock, stopping


def _acquire_soon(lock: FileLock, wait_s: float = 1.0) -> bool:
    # A front end checks for a live worker by taking the lock for an instant: retry past such probes.
    deadline = time.monotonic() + wait_s
    while not lock.acquire():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _last_heartbeat(root: Path) -> float:
    """Newest heartbeat of an attached front end (wall clock), 0 if none."""
    try:
        return max((e.stat().st_mtime for e in os.scandir(root / _ATTACHED) if e.is_file()), default=0.0)
    except OSError:  # no such folder, or a file removed while we looked
        return 0.0


def _warm_up(store: RunStore, threads: int | None) -> None:
    """Set the thread count and import the heavy machinery before announcing the worker ready."""
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, _available_cpus() - 1)
    if threads:
        torch.set_num_threads(threads)
    info = {"pid": os.getpid(), "started_at": time.time(), "ready": False}
    atomic_write_json(store.root / ".worker.json", info)
    # local: the warm-up itself, once the worker holds its lock and has said so in .worker.json. A run
    # then starts within a second or two (train brings timm, data, export; LoRA/LoKr runs need peft).
    import peft  # noqa: F401

    from . import train  # noqa: F401

    atomic_write_json(store.root / ".worker.json", {**info, "ready": True})
    print(f"karst worker {os.getpid()} serving {store.root.resolve()}", file=sys.stderr, flush=True)


def _serve(store: RunStore, lock: FileLock, poll_s: float, idle_exit_s: float | None,
           stopping: threading.Event) -> str:
    """Train queued runs in launch order until stopped, idle or orphaned; returns why it stopped."""
    idle_limit = math.inf if idle_exit_s is None else idle_exit_s
    busy_at = time.time()
    skipped: dict[str, str] = {}  # damaged run folders already reported (each is logged once)
    last_error = ""

    def orphaned() -> bool:  # checked every poll and every training step: two stat calls
        return not lock.still_at_path()

    while not stopping.is_set():
        if orphaned():
            return f"{store.root / '.worker.lock'} was deleted or replaced (a new worker may serve that path)"
        try:
            claimed = _claim_next(store, skipped)
            if claimed is None:
                if time.time() - max(busy_at, _last_heartbeat(store.root)) > idle_limit:
                    return f"idle for {idle_limit:g} s with nothing queued and no app attached"
                time.sleep(poll_s)
                continue
            run_id, run_lock = claimed
            print(f"starting {run_id}", file=sys.stderr, flush=True)
            summary = execute_run(store, run_id, run_lock, stop_flag=lambda: stopping.is_set() or orphaned())
            print(f"finished {run_id}: {summary.get('status')}", file=sys.stderr, flush=True)
        except Exception:  # e.g. a run folder deleted by hand mid-scan: log it (once), keep serving
            error = traceback.format_exc()
            if error != last_error:
                print(error, file=sys.stderr, end="", flush=True)
            last_error = error
            time.sleep(poll_s)
        busy_at = time.time()
    return "asked to stop"


def _unowned_queued(store: RunStore, run_id: str) -> bool:
    try:
        status = check_status(read_json(store.root / run_id / "status.json"))
    except RunError:
        return False
    return status["status"] == "queued" and not status.get("pid")  # a pid: a foreground `karst train`


def _claim_next(store: RunStore, reported: dict[str, str]) -> tuple[str, FileLock] | None:
    skipped: dict[str, str] = {}
    queued = store.queued(skipped)
    for run_id, why in skipped.items():
        if reported.get(run_id) != why:
            print(f"skipping run folder {run_id}: {why}", file=sys.stderr, flush=True)
            reported[run_id] = why
    for run_id in queued:
        if not _unowned_queued(store, run_id):
            continue
        run_lock = store.claim(run_id)
        if run_lock is None:
            continue
        # Re-read under the lock: it may have been cancelled or taken meanwhile.
        if _unowned_queued(store, run_id):
            store.write_status(run_id, pid=os.getpid(), message="starting")
            return run_id, run_lock
        run_lock.release()
    return None


class JobManager:
    """The app's handle on the queue: submit, cancel, queue positions, and the worker process.

    Args:
        runs_dir: the runs directory (default ``$KARST_RUNS_DIR`` or ``./runs``).
        idle_exit_s: the workers it starts exit after this long with nothing queued and no app
            attached (``math.inf``: never).
        worker_args: more ``karst worker`` flags for the workers it starts (``karst.cluster.worker_args``:
            send the runs to a Ray cluster).
    """

    def __init__(self, runs_dir: str | Path | None = None, idle_exit_s: float = WORKER_IDLE_EXIT_S,
                 worker_args: Sequence[str] = ()):
        self.store = RunStore(runs_dir)
        self.idle_exit_s = idle_exit_s
        self.worker_args = list(worker_args)
        self._watchdog: threading.Thread | None = None
        self._unwatch = threading.Event()

    @property
    def root(self) -> Path:
        return self.store.root

    def worker_alive(self) -> bool:
        """True if some process holds this runs directory's worker lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        probe = FileLock(self.root / ".worker.lock")
        if probe.acquire():
            probe.release()
            return False
        return True

    def worker_pid(self) -> int | None:
        """Pid of the live worker, if any."""
        if not self.worker_alive():
            return None
        info = read_json(self.root / ".worker.json") or {}
        pid = info.get("pid")
        try:
            os.kill(pid, 0)  # .worker.json may still name the previous worker for an instant
        except (TypeError, ProcessLookupError):
            return None
        except PermissionError:
            pass
        return pid

    def worker_ready(self) -> bool:
        """True once the live worker has imported torch & co. and serves the queue at full speed."""
        return bool(self.worker_pid() and (read_json(self.root / ".worker.json") or {}).get("ready"))

    def ensure_worker(self, wait_s: float = 15.0, wait_ready: bool = False) -> int:
        """Start a detached worker unless one is alive; return its pid.

        The worker is its own session (``start_new_session``): closing the app, the terminal or
        a browser tab does not stop it. Its log is ``<runs>/.worker.log``.

        Args:
            wait_s: how long to wait for the new worker to take its lock (or to be ready).
            wait_ready: also wait until it has finished importing (a few seconds on 2 cores);
                runs submitted before that are queued and start once it is ready.
        """
        pid = self.worker_pid()
        if pid and (not wait_ready or self.worker_ready()):
            return pid
        if pid:
            return self._wait_ready(pid, wait_s)
        self.root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # Make `-m karst` importable even when the package is used from a source checkout.
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        with open(self.root / ".worker.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "karst", "worker", "--runs-dir", str(self.root),
                 "--idle-exit", str(self.idle_exit_s), *self.worker_args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            pid = self.worker_pid()
            if pid:
                return self._wait_ready(pid, deadline - time.monotonic()) if wait_ready else pid
            if proc.poll() is not None and not self.worker_alive():
                log = self.root / ".worker.log"
                raise KarstError(f"the worker exited at once (code {proc.returncode}); see {log}.")
            time.sleep(0.05)
        raise KarstError(f"the worker did not start within {wait_s:.0f} s; see {self.root / '.worker.log'}.")

    def _wait_ready(self, pid: int, wait_s: float) -> int:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.worker_ready():
                return pid
            if not self.worker_alive():
                raise KarstError(f"the worker stopped while starting; see {self.root / '.worker.log'}.")
            time.sleep(0.05)
        raise KarstError(f"the worker was not ready within {wait_s:.0f} s; see {self.root / '.worker.log'}.")

    def stop_worker(self, timeout_s: float = 30.0) -> bool:
        """Ask the worker to stop (its current run ends as ``cancelled``); True once it is gone."""
        pid = self.worker_pid()
        if not pid:
            return True
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.worker_alive():
                return True
            time.sleep(0.05)
        return False

    # -- the watchdog of a front end ---------------------------------------------------------------
    def start_watchdog(self, every_s: float = _WATCH_S) -> None:
        """Attach to the runs directory and keep queued runs served, from a daemon thread.

        Every ``every_s`` it touches ``<runs>/.attached/<pid>`` (a worker does not idle-exit while
        that heartbeat is fresh) and starts a worker if runs are queued and none is alive (one was
        killed, or exited). :meth:`stop_watchdog` detaches.
        """
        if self._watchdog is not None:
            return
        self._unwatch.clear()
        self._watchdog = threading.Thread(target=self._watch, args=(every_s,), name="karst-watchdog", daemon=True)
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        """Stop the watchdog thread and remove this process's heartbeat file."""
        if self._watchdog is None:
            return
        self._unwatch.set()
        self._watchdog.join(timeout=30)
        self._watchdog = None
        (self.root / _ATTACHED / str(os.getpid())).unlink(missing_ok=True)

    def _watch(self, every_s: float) -> None:
        said = ""
        while not self._unwatch.is_set():
            try:
                heartbeat = self.root / _ATTACHED / str(os.getpid())
                heartbeat.parent.mkdir(parents=True, exist_ok=True)
                heartbeat.touch()
                if self.store.queued() and not self.worker_alive():
                    log.info("runs are queued in %s and no worker is alive: starting one", self.root)
                    self.ensure_worker()
                said = ""
            except Exception as e:  # keep watching; say each new problem once
                if str(e) != said:
                    log.warning("worker watchdog: %s", e, exc_info=not isinstance(e, KarstError))
                said = str(e)
            self._unwatch.wait(every_s)

    def submit(self, config: TrainConfig, start_worker: bool = True, owner: str | None = None) -> str:
        """Queue a run and return its id; starts the worker if none is alive.

        Args:
            owner: :func:`karst.runs.owner_key` of the front-end client launching it, or None.
        """
        run_id = self.store.create(config, owner=owner)
        if start_worker:
            self.ensure_worker()
        return run_id

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a queued or running run; returns its status (a running one stops within a step)."""
        return self.store.request_cancel(run_id)

    def queue_position(self, run_id: str) -> int | None:
        """1 = next to start; None when the run is not waiting in the queue."""
        return self.store.queue_position(run_id)
