"""The remote side of ``karst.ray_backend``: what runs on the cluster's nodes, and the mailbox between.

A run's Ray task (``run_task``) or Ray Tune trial (``run_trial``) trains into a temporary folder on
its node, with a ``_Forwarder`` among the trainer's callbacks that sends every event to the
driver's ``Mailbox`` actor and asks it, before every step, whether the run was cancelled. The driver
replays the events into the run folder it keeps (``karst.ray_backend``).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ray

from .config import TrainConfig
from .errors import RunError
from .runs import atomic_write_json
from .train import train

__all__ = ["Mailbox", "run_task", "run_trial", "new_trial_key", "unstarted", "answer", "POLL_S"]

POLL_S = 0.05
_CHUNK = 32 * 2**20  # files travel in pieces of this size (the object store holds each piece once)


def answer(ref: Any, timeout_s: float | None = None) -> tuple[bool, Any]:
    """(done, value) of an actor call, waiting up to ``timeout_s`` (None: until it comes) without ``ray.get``.

    A task blocked in ``ray.get`` lends its CPUs back to Ray, which may then start another task on
    them: two runs would share the CPUs meant for one. Polling the call's future keeps them.
    """
    future = ref.future() if hasattr(ref, "future") else ref
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not future.done():
        if deadline is not None and time.monotonic() > deadline:
            return False, None
        time.sleep(0.0005)
    return True, future.result()


@ray.remote(num_cpus=0)
class Mailbox:
    """Events from remote runs to the driver, cancel requests back; lives on the driver's node."""

    def __init__(self) -> None:
        self._events: dict[str, list] = {}
        self._cancelled: set[str] = set()
        self._names: dict[str, str] = {}

    def put(self, key: str, events: list) -> None:
        self._events.setdefault(key, []).extend(events)

    def take(self) -> dict[str, list]:
        out, self._events = self._events, {}
        return out

    def cancel(self, key: str) -> None:
        self._cancelled.add(key)

    def cancelled(self, key: str) -> bool:
        return key in self._cancelled

    def name(self, key: str, run_id: str | None = None) -> str | None:
        """The run folder the driver opened for a Tune trial's ``key`` (set by the driver, read by the trial)."""
        if run_id is not None:
            self._names[key] = run_id
        return self._names.get(key)


class _Forwarder:
    """Remote side: every trainer event goes to the driver's mailbox; answers the trainer's cancel check.

    Not a ``Callback`` subclass on purpose: any ``on_*`` event the trainer emits, including ones added
    later, is forwarded by ``__getattr__``.
    """

    def __init__(self, mailbox: Any, key: str, run_dir: Path):
        self.mailbox, self.key, self.run_dir = mailbox, key, run_dir
        self._asked: Any = None  # the cancel question not yet answered (a slow mailbox answers later)
        self._cancelled = False

    def send(self, *event: Any) -> None:
        self.mailbox.put.remote(self.key, [event])

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("on_"):
            return functools.partial(self.send, name)
        raise AttributeError(name)

    def on_end(self, summary: dict[str, Any], result: Any) -> None:
        self._send_files(summary)
        self.send("on_end", dict(summary))  # the model stays here: the exported files carry it

    def cancelled(self) -> bool:
        """Asked before every step: the mailbox answers in about a millisecond (waited for up to 50 ms)."""
        if not self._cancelled:
            self._asked = self._asked or self.mailbox.cancelled.remote(self.key).future()
            done, value = answer(self._asked, timeout_s=0.05)
            if done:
                self._cancelled, self._asked = bool(value), None
        return self._cancelled

    def finish(self) -> None:
        # Waited for: calls from one caller run in order, so every event sent before is in the mailbox.
        answer(self.mailbox.put.remote(self.key, [("finished",)]))

    def _send_files(self, summary: dict[str, Any]) -> None:
        """The files the run's callbacks do not rebuild from events: the export, and error.log of a bug."""
        paths = [Path(p) for p in (summary.get("files") or {}).values()] + [self.run_dir / "error.log"]
        for path in paths:
            if not (path.is_file() and path.is_relative_to(self.run_dir)):
                continue
            rel = path.relative_to(self.run_dir).as_posix()
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(_CHUNK)
                    self.send("file", rel, chunk, len(chunk) < _CHUNK)
                    if len(chunk) < _CHUNK:
                        break


def unstarted(run_id: str, status: str, message: str) -> dict[str, Any]:
    # The summary of a run that never trained, with the keys karst.jobs gives one.
    return {"run_id": run_id, "status": status, "message": message, "seconds": 0.0, "epochs_done": 0}


def _run_here(config_data: dict[str, Any], run_id: str, key: str, mailbox: Any,
              state: tuple[str, bytes] | None = None, callbacks: Iterable[Any] = ()) -> None:
    """Train one run on this node into a temporary folder, forwarding everything to the driver."""
    context = ray.get_runtime_context()
    with tempfile.TemporaryDirectory(prefix="karst-ray-") as tmp:
        run_dir = Path(tmp) / run_id
        (run_dir / "snapshots").mkdir(parents=True)
        forwarder = _Forwarder(mailbox, key, run_dir)
        forwarder.send("node", {"node_id": context.get_node_id(), "ip": ray.util.get_node_ip_address(),
                                "pid": os.getpid(), "dir": str(run_dir)})
        if forwarder.cancelled():
            forwarder.send("on_end", unstarted(run_id, "cancelled", "cancelled before it started"))
            forwarder.finish()
            return
        atomic_write_json(run_dir / "config.json", config_data)
        if state is not None:  # a resumed run: its newest training state, from the driver's folder
            (run_dir / "snapshots" / state[0]).write_bytes(state[1])
        # The loggers write on the driver (they replay the same events); not twice.
        config = TrainConfig.from_dict({**config_data, "tensorboard": False, "mlflow": False})
        try:
            train(config, run_dir, callbacks=[forwarder, *callbacks], cancel_check=forwarder.cancelled,
                  resume=state is not None)
        except Exception:  # recorded: the run ended `failed` (error.log for a bug) and on_end was sent
            pass
        forwarder.finish()


@ray.remote
def run_task(config_data: dict[str, Any], run_id: str, key: str, mailbox: Any,
             state: tuple[str, bytes] | None) -> None:
    """One run as a Ray task (its resources are set by the driver's ``.options``)."""
    _run_here(config_data, run_id, key, mailbox, state)


def run_trial(config_data: dict[str, Any], key: str, mailbox: Any, callbacks: Iterable[Any] = (),
              wait_s: float = 120.0) -> None:
    """Train a Ray Tune trial: ask the driver for a run folder, then train as any remote run.

    Raises:
        RunError: the driver did not open a folder within ``wait_s`` (it stopped).
    """
    mailbox.put.remote(key, [("open", config_data)])
    deadline = time.monotonic() + wait_s
    while (run_id := answer(mailbox.name.remote(key))[1]) is None:
        if time.monotonic() > deadline:
            raise RunError(f"the driver did not open a run folder for trial {key} within {wait_s:.0f} s.")
        time.sleep(POLL_S)
    _run_here(config_data, run_id, key, mailbox, callbacks=callbacks)



def new_trial_key(trial_id: str) -> str:
    """A mailbox key for one attempt of a Tune trial (a retried trial gets a new run folder)."""
    return f"{trial_id}:{uuid.uuid4().hex[:8]}"
