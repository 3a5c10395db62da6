"""``karst worker --ray``: the worker of a runs directory when it sends the runs to a Ray cluster.

It holds the runs directory's worker lock like the local worker (``karst.jobs``), so the app and
the CLI find it the same way, and takes it before importing Ray: a front end waits for the lock.
The work itself is ``karst.ray_backend.dispatch``.
"""

from __future__ import annotations

import os
import time

from .cluster import RayOptions
from .jobs import claim_worker
from .runs import RunStore, atomic_write_json

__all__ = ["serve"]


def serve(runs_dir: str | os.PathLike, address: str, options: RayOptions | None = None,
          idle_exit_s: float | None = None) -> int:
    """``karst worker --ray``: the runs directory's worker, sending its queued runs to a Ray cluster.

    It takes the worker lock and says so in ``.worker.json`` before importing Ray (front ends wait
    for that), then hands over to ``karst.ray_backend.dispatch``. SIGTERM or SIGINT stop it.

    Returns:
        0, or 1 if another worker already serves ``runs_dir``.
    """
    store = RunStore(runs_dir)
    claimed = claim_worker(store)
    if claimed is None:
        return 1
    lock, stopping = claimed
    try:
        atomic_write_json(store.root / ".worker.json", {"pid": os.getpid(), "started_at": time.time(),
                                                        "ready": False, "ray": address})
        from .ray_backend import dispatch  # local: Ray is an optional extra, imported once the lock is held

        dispatch(store, address, options, lock, stopping, idle_exit_s=idle_exit_s)
    finally:
        lock.release()
    return 0
