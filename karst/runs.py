"""Run folders: the contract between the engine and its readers (the app, the CLI, notebooks).

A run is a folder ``<runs-dir>/<run-id>/`` (layout in docs/ARCHITECTURE.md). Everything here is
safe against concurrent readers and against the writer dying at any instant:

- JSON files are written to a temporary file and moved into place with ``os.replace``, so a reader
  sees the old or the new content, never half of it.
- ``metrics.jsonl`` is append-only; a torn last line (the writer died mid-line) is ignored.
- The process that owns a run holds an exclusive ``flock`` on ``<run>/.lock`` for as long as it
  works on it. The kernel drops the lock when the process dies, however it dies, so "status says
  running but nobody holds the lock" means the owner is gone: the run is shown as ``interrupted``.
  A lock, unlike a bare pid check, cannot be fooled by pid reuse.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.torch import save_file

from .config import TrainConfig
from .errors import RunError

try:  # POSIX; on Windows runs still work, but liveness falls back to a pid check.
    import fcntl
except ImportError:  # pragma: no cover - not reachable on Linux/macOS
    fcntl = None

__all__ = [
    "RUN_STATES",
    "FINAL_STATES",
    "RunStore",
    "owner_key",
    "fair_order",
    "FileLock",
    "default_runs_dir",
    "atomic_write_json",
    "publish",
    "read_json",
    "read_jsonl",
    "encode_array",
    "decode_array",
    "RunRecorder",
    "alignment_gaps",
    "channel_distance",
    "saved_epochs",
    "ACTIVE_STATES",
    "UNREADABLE",
    "RESUMABLE_STATES",
    "check_status",
]

RUN_STATES = ("queued", "running", "completed", "failed", "cancelled", "diverged", "interrupted")
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("completed", "failed", "cancelled", "diverged", "interrupted")
# A run's name labels it in plots; its note is free text shown in its details.
META_NAME_MAX = 60
META_NOTE_MAX = 2000
# Run ids are ~30 characters; the cap keeps a hostile id from reaching the file system (ENAMETOOLONG).
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# What a listing shows for a run folder whose files cannot be read (never written to status.json).
UNREADABLE = "unreadable"
# Resume continues a run from its last saved training state (``snapshots/state_NNN.pt``).
RESUMABLE_STATES = ("cancelled", "interrupted")
_DAMAGED = "the run folder was damaged or edited by hand; restore the file or delete the run."
# status.json fields that must be numbers (or null) for the queue and the views to use them.
_STATUS_NUMBERS = ("queued_at", "started_at", "updated_at", "finished_at", "eta_s", "pid", "step", "total_steps",
                   "epoch", "epochs", "resume_from")


def default_runs_dir() -> Path:
    """``$KARST_RUNS_DIR`` if set, else ``./runs``."""
    return Path(os.environ.get("KARST_RUNS_DIR", "runs"))


@functools.cache
def _file_mode() -> int:
    # The mode a plain open() would give (0o666 minus the umask). Temporary files are created 0600
    # (mkstemp, and safetensors' writer), so published files are set to this before the rename.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def publish(tmp: str | Path, path: str | Path) -> None:
    """Give a finished temporary file the usual permissions and move it into place atomically."""
    os.chmod(tmp, _file_mode())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON so that readers never see a partial file (temp file in the same dir + replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path, default: Any = None, name: str | None = None) -> Any:
    """Read a JSON file; ``default`` if it does not exist.

    Raises:
        RunError: the file is not UTF-8 JSON; the message names it as ``name`` (default: the path).
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    # Only a file damaged outside this package can get here (our writes are atomic).
    except UnicodeDecodeError:
        raise RunError(f"{name or path} is not UTF-8 text; {_DAMAGED}") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{name or path} is not valid JSON ({e.msg}); {_DAMAGED}") from None


def read_jsonl(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Read complete JSON lines from byte ``offset``; returns (records, offset after them).

    A last line without its newline is a write in progress (or torn by a crash) and is left for
    the next call; an undecodable line is skipped. Polling readers pass the returned offset back.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records, offset + end


def encode_array(a: np.ndarray) -> str:
    """Compact JSON-friendly encoding: float16, little-endian, base64 (per-channel statistics)."""
    a = np.clip(np.nan_to_num(np.asarray(a, dtype=np.float32)), -65000.0, 65000.0)
    return base64.b64encode(a.astype("<f2").tobytes()).decode("ascii")


def decode_array(s: str) -> np.ndarray:
    """Inverse of :func:`encode_array` (returns float32)."""
    return np.frombuffer(base64.b64decode(s), dtype="<f2").astype(np.float32)


class FileLock:
    """An exclusive ``flock`` on a file; released on ``release()`` or when the process dies.

    Args:
        path: lock file (created if missing).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; with ``blocking=False`` return False at once if someone holds it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            self._fd = fd
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            # Closing the descriptor drops the flock.
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def still_at_path(self) -> bool:
        """True while the held file is still the one at ``path`` (not deleted, replaced or moved away).

        A lock on a deleted file excludes nobody: whoever creates the path again locks a new file.
        """
        if self._fd is None:
            return False
        try:
            now = os.stat(self.path)
        except OSError:  # the file or its folder is gone
            return False
        held = os.fstat(self._fd)  # an open file keeps its inode: it cannot be reused meanwhile
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def __enter__(self) -> FileLock:
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _new_status(now: float) -> dict[str, Any]:
    return {
        "status": "queued",
        "message": "waiting for a worker",
        "pid": None,
        "device": None,
        "step": 0,
        "total_steps": 0,
        "epoch": 0,
        "epochs": 0,
        "eta_s": None,
        "queued_at": now,
        "started_at": None,
        "updated_at": now,
        "finished_at": None,
        "owner": None,  # owner_key() of whoever launched it from a front end; None: the operator (CLI, notebook)
    }


def owner_key(token: str) -> str:
    """What a run records of the front-end client that launched it: a digest of the client's secret
    token. Status files are readable by every client, so they never hold a token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def fair_order(rows: list[tuple[float, str, str | None]], running: Counter) -> list[str]:
    """Queued runs ``(queued_at, run_id, owner)`` in the order they get the device: round robin over
    owners, launch order within one owner. An owner whose run is training now has used a turn, so
    one client's long queue (or a 1,000-epoch typo) never holds back everybody else's next run."""
    turns = Counter(running)
    keyed = []
    for queued_at, run_id, owner in sorted(rows):
        keyed.append((turns[owner], queued_at, run_id))
        turns[owner] += 1
    return [run_id for *_, run_id in sorted(keyed)]


def check_status(status: Any, name: str = "status.json") -> dict[str, Any]:
    """``status`` if it is a usable status object; else RunError saying what is wrong with ``name``."""
    if not isinstance(status, dict):
        raise RunError(f"{name} holds a JSON {type(status).__name__}, not an object; {_DAMAGED}")
    if status.get("status") not in RUN_STATES:
        what = f"status {status['status']!r}" if "status" in status else "no 'status' field"
        raise RunError(f"{name} has {what} (one of {', '.join(RUN_STATES)} expected); {_DAMAGED}")
    for key in _STATUS_NUMBERS:
        value = status.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number and (value is not None or key == "queued_at"):
            raise RunError(f"{name} has {key}={value!r}, not a number; {_DAMAGED}")
    if not isinstance(status.get("message", ""), str):
        raise RunError(f"{name} has a message that is not text; {_DAMAGED}")
    if not isinstance(status.get("owner") or "", str):
        raise RunError(f"{name} has an owner that is not text; {_DAMAGED}")
    return status


class RunStore:
    """All run folders under one runs directory.

    Args:
        root: the runs directory (created on first write); ``None`` = :func:`default_runs_dir`.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_runs_dir()

    # -- creation -------------------------------------------------------------------------------
    def create(self, config: TrainConfig, owner: str | None = None) -> str:
        """Create a queued run for ``config`` and return its id (for the worker to pick up).

        Args:
            owner: :func:`owner_key` of the front-end client launching it (queue turns, who may stop it).
        """
        run_id, lock = self._make(config, claim=False, owner=owner)
        return run_id

    def create_claimed(self, config: TrainConfig) -> tuple[str, FileLock]:
        """Create a run owned by this process (foreground training): returns (run_id, held lock).

        The status carries this pid, so the worker leaves the run alone, and if this process dies
        before finishing, readers see ``interrupted``.
        """
        run_id, lock = self._make(config, claim=True)
        assert lock is not None
        return run_id, lock

    def _make(self, config: TrainConfig, claim: bool, owner: str | None = None) -> tuple[str, FileLock | None]:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(1000):
            run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{config.method.name}-{secrets.token_hex(2)}"
            try:
                # mkdir is atomic: two launches at the same instant can never share a folder.
                os.mkdir(self.root / run_id)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 65536 ids per second per method
            raise RunError(f"could not create a unique run folder in {self.root}; try again.")
        run_dir = self.root / run_id
        lock = None
        if claim:
            lock = FileLock(run_dir / ".lock")
            lock.acquire()
        atomic_write_json(run_dir / "config.json", config.to_dict())
        status = {**_new_status(time.time()), "owner": owner}
        if claim:
            status.update(pid=os.getpid(), message="waiting for the device")
        # status.json is written last: a folder without it is still being created and is skipped.
        atomic_write_json(run_dir / "status.json", status)
        return run_id, lock

    # -- paths and reads --------------------------------------------------------------------------
    def path(self, run_id: str) -> Path:
        """The folder of ``run_id``; raises RunError if the id is malformed or unknown."""
        if not isinstance(run_id, str) or not _SAFE_ID.match(run_id):
            raise RunError(f"run id {run_id!r:.80} is not a valid run id; list runs with `karst runs`.")
        p = self.root / run_id
        if not (p / "config.json").is_file():
            raise RunError(f"no run {run_id!r} in {self.root}; list runs with `karst runs`.")
        return p

    def exists(self, run_id: str) -> bool:
        try:
            self.path(run_id)
        except RunError:
            return False
        return True

    def read_config(self, run_id: str) -> TrainConfig:
        return TrainConfig.from_dict(read_json(self.path(run_id) / "config.json"))

    @staticmethod
    def _status_file(run_dir: Path) -> dict[str, Any] | None:
        """status.json, checked; None while the run is being created. RunError names ``<id>/status.json``."""
        name = f"{run_dir.name}/status.json"
        status = read_json(run_dir / "status.json", name=name)
        return None if status is None else check_status(status, name)

    def read_status(self, run_id: str) -> dict[str, Any]:
        """The run's status, with a dead owner detected and recorded as ``interrupted``.

        Raises:
            RunError: the run is unknown, or its status.json is damaged (the message says how).
        """
        run_dir = self.path(run_id)
        status = self._status_file(run_dir)
        if status is None:
            raise RunError(f"run {run_id!r} is still being created; try again in a moment.")
        if self._owner_may_be_gone(status):
            status = self._check_interrupted(run_dir, status)
        return status

    @staticmethod
    def _owner_may_be_gone(status: dict) -> bool:
        return status["status"] == "running" or (status["status"] == "queued" and status.get("pid"))

    def _check_interrupted(self, run_dir: Path, status: dict) -> dict:
        lock = FileLock(run_dir / ".lock")
        if fcntl is None:  # pragma: no cover
            if _pid_alive(status.get("pid")):
                return status
        elif not lock.acquire():
            return status  # the owner is alive and working
        try:
            # Re-read under the lock: the owner may have finished between our read and the lock.
            fresh = self._status_file(run_dir)
            if fresh is None or not self._owner_may_be_gone(fresh):
                return fresh or status
            status = fresh
            last = self._last_snapshot(run_dir)
            kept = f"the last snapshot (epoch {last}) is kept" if last is not None else "no snapshot was saved"
            now = time.time()
            status.update(
                status="interrupted",
                message=f"the process running this run (pid {status.get('pid')}) stopped; {kept}.",
                eta_s=None,
                updated_at=now,
                finished_at=now,
            )
            atomic_write_json(run_dir / "status.json", status)
            return status
        finally:
            lock.release()

    def write_status(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Update fields of status.json (atomically) and return the new status."""
        run_dir = self.path(run_id)
        status = self._status_file(run_dir) or _new_status(time.time())
        status.update(fields, updated_at=time.time())
        atomic_write_json(run_dir / "status.json", status)
        return status

    def read_metrics(self, run_id: str, offset: int = 0) -> tuple[list[dict], int]:
        """Metrics records from byte ``offset`` (0 = all) and the offset to poll from next."""
        return read_jsonl(self.path(run_id) / "metrics.jsonl", offset)

    def read_summary(self, run_id: str) -> dict[str, Any] | None:
        return read_json(self.path(run_id) / "summary.json")

    def snapshot_epochs(self, run_id: str) -> list[int]:
        """Epochs with a stats file (000 = before training), ascending."""
        return saved_epochs(self.path(run_id), "stats")

    @staticmethod
    def _last_snapshot(run_dir: Path) -> int | None:
        epochs = saved_epochs(run_dir, "epoch")
        return epochs[-1] if epochs else None

    def last_checkpoint(self, run_id: str) -> Path | None:
        """The newest weights of a run: ``adapter.safetensors`` or else the last epoch snapshot."""
        run_dir = self.path(run_id)
        if (run_dir / "adapter.safetensors").is_file():
            return run_dir / "adapter.safetensors"
        last = self._last_snapshot(run_dir)
        return None if last is None else run_dir / "snapshots" / f"epoch_{last:03d}.safetensors"

    def run_ids(self) -> list[str]:
        """Ids of complete run folders (status.json written), oldest first."""
        if not self.root.is_dir():
            return []
        ids = [p.name for p in self.root.iterdir() if _SAFE_ID.match(p.name) and (p / "status.json").is_file()]
        return sorted(ids)

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run, newest first: ``{"run_id", "status", "config", "summary"}`` (dicts).

        A folder whose files cannot be read costs only itself: it is listed last, with
        ``status == {"status": UNREADABLE, "message": <why>}`` and ``config``/``summary`` None.
        """
        out, damaged = [], []
        for run_id in self.run_ids():
            try:
                out.append(self._list_row(run_id))
            except RunError as e:
                if (self.root / run_id / "status.json").is_file():  # else deleted while we listed
                    damaged.append({"run_id": run_id, "status": {"status": UNREADABLE, "message": str(e)},
                                    "config": None, "summary": None})
        out.sort(key=lambda r: (r["status"].get("queued_at") or 0, r["run_id"]), reverse=True)
        return out + sorted(damaged, key=lambda r: r["run_id"], reverse=True)

    def _list_row(self, run_id: str) -> dict[str, Any]:
        run_dir = self.root / run_id
        if not (run_dir / "config.json").is_file():
            raise RunError(f"{run_id}/config.json is missing; {_DAMAGED}")
        row: dict[str, Any] = {"run_id": run_id, "status": self.read_status(run_id)}
        for key in ("config", "summary"):
            name = f"{run_id}/{key}.json"
            row[key] = read_json(run_dir / f"{key}.json", name=name)
            if row[key] is not None and not isinstance(row[key], dict):
                raise RunError(f"{name} holds a JSON {type(row[key]).__name__}, not an object; {_DAMAGED}")
        return row

    def queued(self, skipped: dict[str, str] | None = None) -> list[str]:
        """Queued run ids in the order the worker starts them: launch order, taking turns between
        the clients that launched them (:func:`fair_order`).

        Reads only status files: the worker calls this several times a second.

        Args:
            skipped: if given, filled with ``run id -> why`` for folders whose status cannot be read
                (they are left out of the queue, and the queue goes on).
        """
        rows, running = [], Counter()
        for run_id in self.run_ids():
            try:
                status = self._status_file(self.root / run_id)
                if status and status["status"] == "queued":
                    status = self.read_status(run_id)  # a dead foreground owner → interrupted
            except RunError as e:
                if skipped is not None and (self.root / run_id).is_dir():
                    skipped[run_id] = str(e)
                continue
            if status and status["status"] == "queued":
                rows.append((status["queued_at"], run_id, status.get("owner")))
            elif status and status["status"] == "running":
                running[status.get("owner")] += 1
        return fair_order(rows, running)

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next run to start, 2 for the one after, ...; None if not queued."""
        order = self.queued()
        return order.index(run_id) + 1 if run_id in order else None

    # -- control --------------------------------------------------------------------------------
    def claim(self, run_id: str) -> FileLock | None:
        """Take ownership of a run (non-blocking); None if another process owns it."""
        lock = FileLock(self.path(run_id) / ".lock")
        return lock if lock.acquire() else None

    def request_cancel(self, run_id: str) -> dict[str, Any]:
        """Ask a run to stop. A queued run is cancelled at once; a running one within one step."""
        run_dir = self.path(run_id)
        status = self.read_status(run_id)
        if status["status"] in FINAL_STATES:
            return status
        (run_dir / "cancel").touch()
        if status["status"] == "queued":
            lock = self.claim(run_id)
            if lock is not None:  # nobody is working on it: mark it ourselves
                try:
                    status = self._status_file(run_dir) or status
                    if status["status"] == "queued" and not status.get("pid"):
                        message = "cancelled before it started"
                        atomic_write_json(run_dir / "summary.json", {
                            "run_id": run_id, "status": "cancelled", "message": message, "seconds": 0.0,
                            "epochs_done": 0})
                        status = self.write_status(run_id, status="cancelled", message=message,
                                                   finished_at=time.time())
                finally:
                    lock.release()
        return status

    def prepare_resume(self, run_id: str, claim: bool = False) -> tuple[int, FileLock | None]:
        """Queue a cancelled or interrupted run again, to continue from its last saved training state.

        The run keeps its id and folder; the files of its earlier end (summary, export, cancel flag)
        are removed, and the trainer rewinds metrics and snapshots to the resumed epoch.

        Args:
            run_id: the run.
            claim: keep the run for this process (a foreground ``karst resume``); else a worker takes it.

        Returns:
            (the epoch it resumes from, 0 if no training state was saved: it starts over; the held
            run lock if ``claim``).

        Raises:
            RunError: the run is not cancelled or interrupted, or another process is working on it.
        """
        run_dir = self.path(run_id)
        _check_resumable(run_id, self.read_status(run_id))
        lock = self.claim(run_id)
        if lock is None:
            raise RunError(f"run {run_id} is being worked on by another process; wait until it stops, then resume it.")
        try:
            status = self._status_file(run_dir)
            _check_resumable(run_id, status)  # again, under the lock
            states = saved_epochs(run_dir, "state")
            epoch = states[-1] if states else 0
            for name in ("cancel", "summary.json", "error.log", "adapter.safetensors", "merged.safetensors",
                         "merged.json"):
                (run_dir / name).unlink(missing_ok=True)
            now = time.time()
            status.update(status="queued", message=f"queued to resume from epoch {epoch}", resume_from=epoch,
                          pid=os.getpid() if claim else None, eta_s=None, queued_at=now, updated_at=now,
                          started_at=None, finished_at=None)
            atomic_write_json(run_dir / "status.json", status)
        except BaseException:
            lock.release()
            raise
        if not claim:
            lock.release()
            return epoch, None
        return epoch, lock

    def cancel_requested(self, run_id: str) -> bool:
        return (self.path(run_id) / "cancel").exists()

    def read_meta(self, run_id: str) -> dict[str, str]:
        """The name and note a user gave the run (``meta.json``): ``{"name": str, "note": str}``."""
        data = read_json(self.path(run_id) / "meta.json")
        data = data if isinstance(data, dict) else {}
        return {key: data[key] if isinstance(data.get(key), str) else "" for key in ("name", "note")}

    def write_meta(self, run_id: str, name: str | None = None, note: str | None = None) -> dict[str, str]:
        """Set the run's name and/or note (None keeps the current one; "" clears it); returns both.

        They label the run in every view; the settings and results of the run are not touched.
        """
        meta = self.read_meta(run_id)
        for key, value, limit in (("name", name, META_NAME_MAX), ("note", note, META_NOTE_MAX)):
            if value is None:
                continue
            if not isinstance(value, str):
                raise RunError(f"a run {key} must be text, got {type(value).__name__}.")
            # One line for a name, no control characters anywhere: both end up in labels and tables.
            text = " ".join(value.split()) if key == "name" else value.strip()
            text = "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())
            if len(text) > limit:
                raise RunError(f"a run {key} of {len(text)} characters is too long; keep it under {limit}.")
            meta[key] = text
        atomic_write_json(self.path(run_id) / "meta.json", meta)
        return meta

    def delete(self, run_id: str) -> None:
        """Delete a run folder; refuses while a process is working on it."""
        run_dir = self.path(run_id)
        lock = self.claim(run_id)
        if lock is None:
            raise RunError(f"run {run_id!r} is running; cancel it first, then delete it.")
        try:
            try:  # a damaged run can be deleted too
                status = self._status_file(run_dir) or {}
            except RunError:
                status = {}
            if status.get("status") == "queued" and status.get("pid") and _pid_alive(status["pid"]):
                raise RunError(f"run {run_id!r} is waiting to start; cancel it first, then delete it.")
            # Rename first so readers never see a half-deleted folder under the real id.
            trash = self.root / f".deleted-{run_id}-{secrets.token_hex(2)}"
            os.replace(run_dir, trash)
        finally:
            lock.release()
        shutil.rmtree(trash, ignore_errors=True)


def _check_resumable(run_id: str, status: dict[str, Any] | None) -> None:
    state = (status or {}).get("status")
    if state in RESUMABLE_STATES:
        return
    if state in ACTIVE_STATES:
        raise RunError(f"run {run_id} is {state}; there is nothing to resume.")
    why = ": it has its final weights already" if state == "completed" else ""
    raise RunError(f"run {run_id} is {state}{why}; only a cancelled or interrupted run can be resumed.")


_SNAPSHOT_SUFFIX = {"epoch": ".safetensors", "stats": ".json", "state": ".pt"}


def saved_epochs(run_dir: str | Path, kind: Literal["epoch", "stats", "state"] = "epoch") -> list[int]:
    """Epochs with a snapshot of ``kind`` in ``run_dir`` (0 = before training), ascending.

    ``"epoch"``: adapter tensors (``epoch_NNN.safetensors``); ``"stats"``: feature statistics
    (``stats_NNN.json``); ``"state"``: the training state to resume from (``state_NNN.pt``).
    """
    folder = Path(run_dir) / "snapshots"
    prefix, suffix = f"{kind}_", _SNAPSHOT_SUFFIX[kind]
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        name = p.name
        if name.startswith(prefix) and name.endswith(suffix):
            num = name[len(prefix) : -len(suffix)]
            if num.isdigit():
                out.append(int(num))
    return sorted(out)


class RunRecorder:
    """The trainer callback that keeps a run folder up to date (see ``karst.train.Callback``).

    Status writes during training are throttled to a few per second: a poller sees fresh
    progress, and a long run does not spend its time renaming files.

    Args:
        run_dir: an existing run folder (made by :class:`RunStore`).
        config: the run's configuration (written to config.json if missing).
        status_interval_s: minimum seconds between two step-driven status writes.
    """

    def __init__(self, run_dir: str | Path, config: TrainConfig, status_interval_s: float = 0.5):
        self.run_dir = Path(run_dir)
        self.config = config
        self.status_interval_s = status_interval_s
        self._last_status = 0.0
        self._metrics = None
        self._reference: dict[str, dict[str, np.ndarray]] | None = None
        (self.run_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / "config.json").is_file():
            atomic_write_json(self.run_dir / "config.json", config.to_dict())

    def _status(self, **fields: Any) -> None:
        path = self.run_dir / "status.json"
        status = read_json(path) or _new_status(time.time())
        status.update(fields, updated_at=time.time())
        atomic_write_json(path, status)
        self._last_status = time.monotonic()

    def _append(self, record: dict[str, Any]) -> None:
        if self._metrics is None:
            self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        # One write per line, flushed at once: readers see whole lines or a torn tail they skip.
        self._metrics.write(json.dumps(record, allow_nan=False) + "\n")
        self._metrics.flush()

    def on_phase(self, message: str) -> None:
        status = read_json(self.run_dir / "status.json") or {}
        started = status.get("started_at") or time.time()
        self._status(status="running", message=message, pid=os.getpid(), started_at=started,
                     epochs=self.config.epochs)

    def on_start(self, info: dict[str, Any]) -> None:
        self._status(status="running", message="training", device=info["device"], step=info.get("step", 0),
                     total_steps=info["total_steps"], epoch=info.get("epoch", 0), epochs=info["epochs"])

    def on_resume(self, epoch: int, step: int) -> None:
        """Rewind the folder to the end of ``epoch`` (0: to nothing): the resumed run appends after it."""
        folder = self.run_dir / "snapshots"
        for kind in ("epoch", "stats"):
            for old in saved_epochs(self.run_dir, kind):
                if old > epoch or epoch == 0:  # epoch 0 is written again by a run that starts over
                    (folder / f"{kind}_{old:03d}{_SNAPSHOT_SUFFIX[kind]}").unlink(missing_ok=True)
        gaps = read_json(folder / "gaps.json")
        if gaps is not None:
            keep = [i for i, e in enumerate(gaps["epochs"]) if epoch > 0 and e <= epoch]
            gaps["layers"] = {name: {k: [v[i] for i in keep] for k, v in row.items()}
                              for name, row in gaps["layers"].items()}
            gaps["epochs"] = [gaps["epochs"][i] for i in keep]
            atomic_write_json(folder / "gaps.json", gaps)
        records, _ = read_jsonl(self.run_dir / "metrics.jsonl")
        kept = [r for r in records if (r.get("type") == "step" and r.get("step", 0) <= step)
                or (r.get("type") == "epoch" and r.get("epoch", 0) <= epoch)]
        # A new file (temp + rename): a reader polling by byte offset notices the change of file.
        fd, tmp = tempfile.mkstemp(prefix=".metrics.jsonl.", suffix=".tmp", dir=self.run_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        publish(tmp, self.run_dir / "metrics.jsonl")

    def on_step(self, record: dict[str, Any], progress: Any) -> None:
        self._append(record)
        if time.monotonic() - self._last_status >= self.status_interval_s:
            self._status(step=progress.step, epoch=progress.epoch, eta_s=round(progress.eta_s, 1))

    def on_epoch(self, record: dict[str, Any], progress: Any) -> None:
        self._append(record)
        self._status(step=progress.step, epoch=progress.epoch, eta_s=round(progress.eta_s, 1),
                     message=f"epoch {progress.epoch}/{progress.epochs} done")

    def on_snapshot(self, epoch: int, tensors: dict, stats: dict, metadata: dict[str, str]) -> None:
        folder = self.run_dir / "snapshots"
        final = folder / f"epoch_{epoch:03d}.safetensors"
        tmp = folder / f".epoch_{epoch:03d}.safetensors.tmp"
        save_file(tensors, str(tmp), metadata=metadata)
        publish(tmp, final)
        if self.config.method.name == "full":
            # A full fine-tune's "adapter" is the whole model: keep only the newest copy.
            for old in saved_epochs(self.run_dir, "epoch"):
                if old < epoch:
                    (folder / f"epoch_{old:03d}.safetensors").unlink(missing_ok=True)
        reference = self._reference_layers()
        layers = {}
        for name, entry in stats.items():
            layers[name] = {key: encode_array(value) for key, value in entry.items()}
            layers[name]["channels"] = int(len(entry["out_mean"]))
            layers[name].update(alignment_gaps(entry, reference.get(name)))
        atomic_write_json(folder / f"stats_{epoch:03d}.json",
                          {"epoch": epoch, "encoding": "float16-base64", "layers": layers})
        if layers:
            # The gap curves over epochs, kept small so a view need not parse every stats file.
            gaps = read_json(folder / "gaps.json") or {"epochs": [], "layers": {}}
            gaps["reference"] = (read_json(folder / "reference.json") or {}).get("source")
            gaps["epochs"].append(epoch)
            for name, entry in layers.items():
                row = gaps["layers"].setdefault(name, {"pre": [], "out": []})
                row["pre"].append(entry.get("gap_pre"))
                row["out"].append(entry["gap_out"])
            atomic_write_json(folder / "gaps.json", gaps)

    def on_reference(self, reference: dict[str, Any]) -> None:
        """Write ``snapshots/reference.json``: the statistics the alignment gaps are measured against."""
        layers = {name: {key: encode_array(value) for key, value in entry.items()}
                  for name, entry in reference["layers"].items()}
        atomic_write_json(self.run_dir / "snapshots" / "reference.json",
                          {**reference, "encoding": "float16-base64", "layers": layers})
        self._reference = None  # re-read, so gaps use the stored (float16) values like every reader

    def _reference_layers(self) -> dict[str, dict[str, np.ndarray]]:
        if self._reference is None:
            data = read_json(self.run_dir / "snapshots" / "reference.json") or {"layers": {}}
            self._reference = {name: {k: decode_array(v) for k, v in entry.items()}
                               for name, entry in data["layers"].items()}
        return self._reference

    def on_test(self, record: dict[str, Any]) -> None:
        self._append(record)

    def on_end(self, summary: dict[str, Any], result: Any) -> None:
        status = summary["status"]
        atomic_write_json(self.run_dir / "summary.json", summary)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        now = time.time()
        self._status(status=status, message=summary.get("message", ""), eta_s=None, finished_at=now,
                     epoch=summary.get("epochs_done", 0), step=summary.get("steps", 0))


def channel_distance(mean: np.ndarray, std: np.ndarray, ref_mean: np.ndarray, ref_std: np.ndarray) -> np.ndarray:
    """Per channel ``(|μ − μ_ref| + |σ − σ_ref|) / mean_c(σ_ref)``: 0 is the reference's distribution,
    1 is off by one typical standard deviation of the reference."""
    scale = float(np.mean(ref_std)) + 1e-8
    return (np.abs(np.asarray(mean) - ref_mean) + np.abs(np.asarray(std) - ref_std)) / scale


def alignment_gaps(entry: dict[str, np.ndarray], reference: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """How far a layer's output statistics are from the reference, scale-free (mean of
    :func:`channel_distance` over channels), for each output the entry has (``gap_pre``, ``gap_out``).

    ``reference`` is ``{"mean", "std"}`` (see ``karst.stats.reference_stats``); without one the
    entry's own frozen output (``base``) is used.
    """
    if reference is None:
        reference = {"mean": entry.get("base_mean", entry["out_mean"]), "std": entry.get("base_std", entry["out_std"])}
    return {f"gap_{key}": float(np.mean(channel_distance(entry[f"{key}_mean"], entry[f"{key}_std"],
                                                         reference["mean"], reference["std"])))
            for key in ("pre", "out") if f"{key}_mean" in entry}
