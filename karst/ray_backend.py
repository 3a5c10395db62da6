"""Runs on a Ray cluster, recorded in the local runs directory exactly as a local run records itself.

Each run is one Ray task asking for ``RayOptions.gpus`` GPUs (only ``cpus`` CPUs when it trains
without a GPU); Ray places the tasks across the cluster, as many at a time as it holds. No file
system is shared: the run folder stays with the driver (this process), and the task streams the
trainer's events back (the remote side is ``karst._ray_remote``)::

    driver (this process)                              Ray task, on any node
    run folder created here, its .lock held
    submit ───────────────────────────────────────────► train(config, <tmp>/<run-id>) with a forwarder
    Mailbox actor (on this node) ◄───────────────────── every trainer event (fire and forget); at the
    pump thread: each event replayed to the run's          end the exported files, as bytes
      own callbacks (RunRecorder, StateSaver, loggers)
    <run>/cancel ─► mailbox.cancel ◄──────────────────── cancel_check before every step asks the mailbox
    task lost (its node died): the run is ``interrupted``; a new run with the same settings is
      submitted, up to ``RayOptions.max_retries`` times

The replay goes through the same callbacks ``karst.train`` gives a local run, so the folder holds
the same files with the same keys, and every view, ``karst export`` and ``karst predict`` read it
unchanged. While the driver lives it holds each run's ``.lock``; if it dies, Ray stops its tasks
and the runs read as ``interrupted``. Ray Tune trials (``karst.sweep``) use the same mailbox: a
trial asks the driver to open a run folder for it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayError, RayTaskError, TaskCancelledError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ._ray_remote import POLL_S, Mailbox, run_task, unstarted
from .cluster import LOCAL, RayOptions, prepare_ray, unreachable
from .config import TrainConfig
from .errors import ConfigError, KarstError, RunError
from .runs import FileLock, RunStore, atomic_write_json, publish, read_json, saved_epochs
from .train import run_callbacks

__all__ = ["RayBackend", "connected", "run_on_ray", "dispatch"]

log = logging.getLogger("karst.ray")
_POLL_S = POLL_S
_UNAVAILABLE_S = 30.0  # how long the mailbox may be "temporarily unavailable" before the runs are given up
_QUIET = {"logging_level": logging.WARNING, "log_to_driver": False}


# ------------------------------------------------------------------------------------------ connection
@contextmanager
def connected(address: str) -> Iterator[None]:
    """Ray connected to ``address`` inside the block; a connection this process already has is kept.

    ``local`` starts a Ray instance bound to 127.0.0.1, without the dashboard, stopped at the end.

    Raises:
        ConfigError: Ray is missing, or the cluster cannot be reached (one line; nothing was created).
    """
    if ray.is_initialized():
        yield
        return
    prepare_ray(address)
    main = threading.current_thread() is threading.main_thread()
    ours = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if address == LOCAL:
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, **_QUIET)
        else:
            ray.init(address=address, **_QUIET)
    except Exception as e:  # ConnectionError, TimeoutError, RuntimeError: Ray's words for "not there"
        raise unreachable(address, e) from None
    if callable(ours):  # ray.init makes SIGTERM a sys.exit; a worker's own handler stops it cleanly
        signal.signal(signal.SIGTERM, ours)
    try:
        yield
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------------------- driver side
def _on_this_node() -> NodeAffinitySchedulingStrategy | str:
    """Where the mailbox goes: this driver's node, so that it lives exactly as long as the driver can use it.

    Not soft: a soft affinity may place it on another node, whose loss would then cut every run off.
    A Ray Client driver (``ray://``) has no node of its own: then anywhere.
    """
    if ray.util.client.ray.is_connected():
        return "DEFAULT"
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


class _Replay:
    """Driver side: a remote run's events applied to its local folder by the callbacks a local run gets."""

    def __init__(self, run_dir: Path, config: TrainConfig, callbacks: Iterable[Any] = ()):
        self.run_dir, self.config = run_dir, config
        self.callbacks = [*run_callbacks(config, run_dir), *callbacks]
        self.node: dict[str, Any] = {}
        self.ended = self.finished = False
        self.seen: dict[str, Any] = {"epochs_done": 0}  # for a run that stops without its summary

    def apply(self, name: str, *args: Any) -> None:
        fix = getattr(self, f"_{name}", None)
        if fix is not None:
            args = fix(*args)
            if args is None:
                return
        for cb in self.callbacks:
            handler = getattr(cb, name, None)
            if handler is not None:
                handler(*args)

    def where(self) -> str:
        return f"Ray node {self.node.get('ip', '?')} ({self.node.get('node_id', '?')[:8]})"

    def _node(self, info: dict[str, Any]) -> None:
        self.node = info
        path = self.run_dir / "status.json"
        status = read_json(path) or {}
        now = time.time()
        status.update(status="running", message=f"starting on {self.where()}", pid=os.getpid(),
                      started_at=status.get("started_at") or now, updated_at=now)
        atomic_write_json(path, status)

    def _file(self, rel: str, chunk: bytes, last: bool) -> None:
        path = self.run_dir / rel
        part = path.with_name(f".{path.name}.part")
        with open(part, "ab") as f:
            f.write(chunk)
        if last:
            publish(part, path)

    def _finished(self) -> None:
        self.finished = True

    def _stopped(self, epoch: int) -> None:
        self.seen["stopped_after"] = epoch

    def _on_start(self, info: dict[str, Any]) -> tuple:
        self.seen.update(trainable_params=info["params"].get("trainable"), total_params=info["params"].get("total"))
        return ({**info, "device": f"{info['device']} on {self.where()}"},)

    def _on_epoch(self, record: dict[str, Any], progress: Any) -> tuple:
        best = max([v for v in (self.seen.get("best_val_acc"), record.get("val_acc")) if v is not None], default=None)
        self.seen.update(epochs_done=record["epoch"], val_acc=record.get("val_acc"), best_val_acc=best)
        return record, progress

    def _on_snapshot(self, epoch: int, tensors: dict, stats: dict, metadata: dict[str, str]) -> tuple:
        # The remote ran with its loggers off; the file records the settings the user asked for.
        return epoch, tensors, stats, {**metadata, "train_config": json.dumps(self.config.to_dict())}

    def _on_end(self, summary: dict[str, Any], result: Any = None) -> tuple:
        self.ended = True
        text = json.dumps(summary)
        if self.node.get("dir"):  # paths in the summary (files, error.log) name the local folder
            text = text.replace(json.dumps(self.node["dir"])[1:-1], json.dumps(str(self.run_dir))[1:-1])
        summary = json.loads(text)
        stopped = self.seen.pop("stopped_after", None)
        if stopped is not None and summary["status"] == "cancelled":
            summary["message"] = f"stopped early by the scheduler (ASHA) after epoch {stopped}"
        if summary.get("device"):
            summary["device"] = f"{summary['device']} on {self.where()}"
        return summary, None

    def abandon(self, status: str, message: str, seconds: float) -> None:
        """End a run that stopped without its summary (a scheduler stopped the trial), from what was seen."""
        config = self.config
        summary = {"run_id": self.run_dir.name, "status": status, "message": message, "method": config.method.name,
                   "backbone": config.backbone, "dataset": config.dataset, "val_acc": None, "test_acc": None,
                   "best_val_acc": None, "seconds": round(seconds, 3), "device": None, **self.seen}
        if self.node:
            summary["device"] = self.where()
        self.ended = True
        for cb in self.callbacks:
            handler = getattr(cb, "on_end", None)
            if handler is not None:
                handler(summary, None)


@dataclass
class _Run:
    """A run this driver watches: a Ray task (``ref``) or a Ray Tune trial (``trial``)."""

    run_id: str
    key: str
    config: TrainConfig
    lock: FileLock
    replay: _Replay
    callbacks: tuple = ()
    attempt: int = 1
    ref: Any = None
    trial: str | None = None
    cancel_sent: bool = False
    t0: float = 0.0


class RayBackend:
    """Runs of one runs directory on the Ray cluster this process is connected to (see :func:`connected`).

    A pump thread applies the remote runs' events to their folders every ``poll_s`` seconds.

    Args:
        runs_dir: the runs directory (on this machine).
        options: what each run asks the cluster for, and how often a lost run is tried again.
    """

    def __init__(self, runs_dir: str | Path | None = None, options: RayOptions | None = None,
                 poll_s: float = _POLL_S):
        self.store = RunStore(runs_dir)
        self.options = options or RayOptions()
        self.poll_s = poll_s
        self.mailbox = Mailbox.options(scheduling_strategy=_on_this_node()).remote()
        self.retries: dict[str, str | None] = {}  # interrupted run -> the run that retried it (None: none left)
        self.nodes: dict[str, str] = {}  # run -> id of the Ray node that trained it
        self.trial_runs: dict[str, list[str]] = {}  # Tune trial id -> its run folders
        self._runs: dict[str, _Run] = {}  # by mailbox key
        self._closed: set[str] = set()
        self._ended_trials: list[tuple[str, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="karst-ray", daemon=True)
        self._thread.start()

    # -- submitting ------------------------------------------------------------------------------------
    def resources(self, config: TrainConfig) -> dict[str, float]:
        """What a run of ``config`` asks Ray for (a GPU when it would train on one)."""
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        if config.device == "mps":
            raise ConfigError("device=mps cannot be asked of a Ray cluster; use auto, cuda or cpu.", field="device")
        if config.device == "cuda" and not has_gpu:
            raise ConfigError("device=cuda, but the Ray cluster has no GPU; use --device auto or cpu, or add GPU "
                              "nodes.", field="device")
        gpu = config.device == "cuda" or (config.device == "auto" and has_gpu)
        return {"num_cpus": self.options.cpus, "num_gpus": self.options.gpus if gpu else 0}

    def submit(self, config: TrainConfig, callbacks: Iterable[Any] = (), attempt: int = 1) -> str:
        """Create a run folder here and send the run to the cluster; returns its id.

        Args:
            callbacks: more event receivers on this side (a progress bar), as ``karst.train`` takes.
        """
        resources = self.resources(config)  # a bad request fails before the folder exists
        run_id, lock = self.store.create_claimed(config)
        self._start(run_id, lock, config, tuple(callbacks), attempt, resources)
        return run_id

    def adopt(self, run_id: str, lock: FileLock) -> None:
        """Send a queued run this process has claimed (``karst worker --ray``) to the cluster.

        A run queued to resume (``resume_from`` in its status) takes its newest training state along.
        """
        run_dir = self.store.path(run_id)
        try:
            config = self.store.read_config(run_id)
            resources = self.resources(config)
        except KarstError as e:
            _end_unstarted(run_dir, "failed", str(e))
            lock.release()
            return
        state = None
        if (read_json(run_dir / "status.json") or {}).get("resume_from") is not None:
            epochs = saved_epochs(run_dir, "state")
            if epochs:
                name = f"state_{epochs[-1]:03d}.pt"
                state = (name, (run_dir / "snapshots" / name).read_bytes())
        self._start(run_id, lock, config, (), 1, resources, state)

    def _start(self, run_id: str, lock: FileLock, config: TrainConfig, callbacks: tuple, attempt: int,
               resources: dict[str, float], state: tuple[str, bytes] | None = None) -> None:
        run_dir = self.store.root / run_id
        asked = f"{resources['num_gpus']:g} GPU" if resources["num_gpus"] else f"{resources['num_cpus']:g} CPU"
        self.store.write_status(run_id, pid=os.getpid(), message=f"waiting for a Ray node with {asked} free")
        run = _Run(run_id, run_id, config, lock, _Replay(run_dir, config, callbacks), callbacks, attempt,
                   t0=time.monotonic())
        with self._lock:
            self._runs[run.key] = run
        # SPREAD: runs go to different nodes while some are free (training is memory-bound; packing one
        # node leaves others idle). max_retries=0: a lost run is retried here, as a new run (_interrupted).
        run.ref = run_task.options(**resources, max_retries=0, scheduling_strategy="SPREAD",
                                   name=f"karst {run_id}").remote(
            config.to_dict(), run_id, run.key, self.mailbox, state)

    # -- control ---------------------------------------------------------------------------------------
    def cancel(self, run_id: str) -> dict[str, Any]:
        """Ask a run to stop (within one step); returns its status, as ``RunStore.request_cancel``."""
        status = self.store.request_cancel(run_id)
        run = self._find(run_id)
        if run is not None:
            self.mailbox.cancel.remote(run.key)
        return status

    def active(self) -> list[str]:
        """Ids of the runs this driver is still watching."""
        with self._lock:
            return [r.run_id for r in self._runs.values()]

    def wait(self, run_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Wait for a run to end, following its retries; the summary of the last attempt.

        Raises:
            RunError: the driver lost the cluster, or ``timeout_s`` passed.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                closed = run_id in self._closed
            if closed and self.retries.get(run_id):
                run_id = self.retries[run_id]
                continue
            if closed:
                break
            if not self._thread.is_alive():
                raise RunError(f"lost the Ray cluster while run {run_id} was going; it is marked interrupted.")
            if deadline is not None and time.monotonic() > deadline:
                raise RunError(f"run {run_id} did not end within {timeout_s:g} s.")
            time.sleep(self.poll_s)
        status = self.store.read_status(run_id)
        return self.store.read_summary(run_id) or {"run_id": run_id, "status": status["status"],
                                                   "message": status.get("message", "")}

    def trial_ended(self, trial_id: str, failed: bool) -> None:
        """A Tune trial is over (from a Tune callback); its run ends at the next poll."""
        with self._lock:
            self._ended_trials.append((trial_id, failed))

    def close(self, cancel: bool = True, timeout_s: float = 30.0) -> None:
        """Stop watching: cancel what still runs (it ends within a step), wait, then let go of the rest."""
        if cancel:
            for run_id in self.active():
                self.cancel(run_id)
        deadline = time.monotonic() + timeout_s
        while self.active() and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(self.poll_s)
        self._stop.set()
        self._thread.join(timeout=10)
        self._lose_all("the driver stopped before the remote run ended")
        try:
            ray.kill(self.mailbox)
        except RayError:  # the cluster is gone already
            pass

    # -- the pump --------------------------------------------------------------------------------------
    def _pump(self) -> None:
        unavailable_since = None
        while not self._stop.is_set():
            try:
                self._tick()
                unavailable_since = None
            except ActorUnavailableError as e:  # a network blip: Ray says the mailbox may come back
                unavailable_since = unavailable_since or time.monotonic()
                if time.monotonic() - unavailable_since > _UNAVAILABLE_S:
                    self._lose_all(f"the driver lost its mailbox on the Ray cluster for {_UNAVAILABLE_S:g} s")
                    return
                log.warning("the mailbox is unavailable for now: %s", e)
            except RayError as e:  # the mailbox or the cluster is gone: nothing more will arrive
                log.error("lost the Ray cluster: %s", e)
                self._lose_all(f"the driver lost the Ray cluster ({type(e).__name__})")
                return
            except Exception:  # a bug here must not leave runs `running` forever: say it, keep going
                log.error("karst ray pump:\n%s", traceback.format_exc())
            self._stop.wait(self.poll_s)

    def _tick(self) -> None:
        with self._lock:
            ended, self._ended_trials = self._ended_trials, []
            runs = list(self._runs.values())
        refs = [r.ref for r in runs if r.ref is not None]
        done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        # After ray.wait: a task seen done has put all its events, so this take holds them.
        for key, events in ray.get(self.mailbox.take.remote()).items():
            for event in events:
                self._deliver(key, event)
        for run in runs:
            if run.ref is not None and run.ref in done and run.key in self._runs:
                self._settle(run)
        for trial_id, failed in ended:
            self._settle_trial(trial_id, failed)
        self._forward_cancels()

    def _deliver(self, key: str, event: tuple) -> None:
        if event[0] == "open":
            self._open_trial(key, event[1])
            return
        run = self._runs.get(key)
        if run is None:
            return  # a run already ended (events after its end are not expected)
        run.replay.apply(*event)
        if event[0] == "node":
            self.nodes[run.run_id] = event[1]["node_id"]
        if run.replay.finished:
            self._close(run)

    def _settle(self, run: _Run) -> None:
        """The task of ``run`` returned or failed before it said it finished."""
        try:
            ray.get(run.ref)
        except TaskCancelledError:
            if not run.replay.ended:
                run.replay.apply("on_end", unstarted(run.run_id, "cancelled", "cancelled before it started"))
        except RayTaskError as e:  # raised by our code on the node before training (e.g. another karst there)
            if not run.replay.ended:
                cause = " ".join(str(e.cause if e.cause is not None else e).split())[:300]
                run.replay.abandon("failed", f"the run failed on {run.replay.where()} before training ({cause}); "
                                   "every node needs the same karst and its dependencies", time.monotonic() - run.t0)
        except RayError as e:  # its worker or node died, or Ray lost it
            if not run.replay.ended:
                node = run.replay.where() if run.replay.node else "the Ray node it was sent to"
                self._interrupted(run, f"{node} stopped ({type(e).__name__})")
                return
        if not run.replay.ended:
            run.replay.abandon("failed", "the remote run ended without its summary; see the Ray logs of "
                               f"{run.replay.where()}", time.monotonic() - run.t0)
        self._close(run)

    def _interrupted(self, run: _Run, why: str) -> None:
        retry = None
        if run.trial is None and run.attempt <= self.options.max_retries:
            try:
                retry = self.submit(run.config, run.callbacks, attempt=run.attempt + 1)
            except KarstError as e:
                log.error("could not retry run %s: %s", run.run_id, e)
        last = saved_epochs(run.replay.run_dir, "epoch")
        kept = f"the last snapshot (epoch {last[-1]}) is kept" if last else "no snapshot was saved"
        if retry:
            then = f"retried as run {retry} (attempt {run.attempt + 1} of {self.options.max_retries + 1})"
        else:
            then = "not retried" if run.trial else f"no retry left (--ray-retries {self.options.max_retries})"
        message = f"{why}; {kept}; {then}."
        self.store.write_status(run.run_id, status="interrupted", message=message, eta_s=None, finished_at=time.time())
        self.retries[run.run_id] = retry
        self._close(run)

    def _close(self, run: _Run) -> None:
        with self._lock:
            self._runs.pop(run.key, None)
            self._closed.add(run.run_id)
        run.lock.release()

    def _lose_all(self, why: str) -> None:
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            self.store.write_status(run.run_id, status="interrupted", message=f"{why}.", eta_s=None,
                                    finished_at=time.time())
            self._close(run)

    def _forward_cancels(self) -> None:
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if not run.cancel_sent and (run.replay.run_dir / "cancel").exists():
                run.cancel_sent = True
                self.mailbox.cancel.remote(run.key)
                if run.ref is not None and not run.replay.node:  # still waiting for a node: drop it
                    ray.cancel(run.ref)

    # -- Ray Tune trials -------------------------------------------------------------------------------
    def _open_trial(self, key: str, config_data: dict[str, Any]) -> None:
        config = TrainConfig.from_dict(config_data)
        run_id, lock = self.store.create_claimed(config)
        trial = key.partition(":")[0]
        run = _Run(run_id, key, config, lock, _Replay(self.store.root / run_id, config), trial=trial,
                   t0=time.monotonic())
        with self._lock:
            self._runs[key] = run
            self.trial_runs.setdefault(trial, []).append(run_id)
        self.mailbox.name.remote(key, run_id)

    def _settle_trial(self, trial_id: str, failed: bool) -> None:
        with self._lock:
            runs = [r for r in self._runs.values() if r.trial == trial_id]
        for run in runs:
            if failed and not run.replay.ended:
                self._interrupted(run, f"the Ray Tune trial on {run.replay.where()} failed or its node stopped")
                continue
            if not run.replay.ended:
                done = run.replay.seen.pop("stopped_after", run.replay.seen["epochs_done"])
                run.replay.abandon("cancelled", f"stopped early by the scheduler (ASHA) after epoch {done}",
                                   time.monotonic() - run.t0)
            self._close(run)

    def _find(self, run_id: str) -> _Run | None:
        with self._lock:
            return next((r for r in self._runs.values() if r.run_id == run_id), None)


def _end_unstarted(run_dir: Path, status: str, message: str) -> None:
    atomic_write_json(run_dir / "summary.json", unstarted(run_dir.name, status, message))
    current = read_json(run_dir / "status.json") or {}
    now = time.time()
    atomic_write_json(run_dir / "status.json", {**current, "status": status, "message": message, "eta_s": None,
                                                "updated_at": now, "finished_at": now})


# -------------------------------------------------------------------------------------------- entry points
def run_on_ray(config: TrainConfig, address: str, runs_dir: str | Path | None = None,
               options: RayOptions | None = None, callbacks: Iterable[Any] = ()) -> dict[str, Any]:
    """``karst train --ray``: one run on the cluster, recorded here; returns its summary (after retries).

    Ctrl-C cancels it (it ends ``cancelled`` within a step, its weights kept).
    """
    with connected(address):
        backend = RayBackend(runs_dir, options)
        try:
            run_id = backend.submit(config, callbacks)
            try:
                return backend.wait(run_id)
            except KeyboardInterrupt:
                backend.cancel(run_id)
                return backend.wait(run_id, timeout_s=60)
        finally:
            backend.close()


def _claim_queued(store: RunStore) -> list[tuple[str, FileLock]]:
    """Queued runs nobody owns yet, claimed for this process (as the local worker claims them)."""
    out = []
    for run_id in store.queued():
        lock = store.claim(run_id)
        if lock is None:
            continue
        status = read_json(store.root / run_id / "status.json") or {}
        if status.get("status") == "queued" and not status.get("pid"):  # a pid: a foreground `karst train`
            out.append((run_id, lock))
        else:
            lock.release()
    return out


def dispatch(store: RunStore, address: str, options: RayOptions | None, lock: FileLock, stopping: threading.Event,
             poll_s: float = 0.2, idle_exit_s: float | None = None) -> None:
    """``karst worker --ray`` once it holds the worker lock: send queued runs to the cluster until stopped.

    All queued runs go at once; Ray starts as many as the cluster holds and queues the rest. When
    stopped, the runs still going are cancelled (each ends within a step).
    """
    with connected(address):
        backend = RayBackend(store.root, options)
        info = read_json(store.root / ".worker.json") or {}
        atomic_write_json(store.root / ".worker.json", {**info, "ready": True})
        print(f"karst worker {os.getpid()} sends the runs of {store.root.resolve()} to Ray at {address}",
              file=sys.stderr, flush=True)
        busy_at = time.monotonic()
        try:
            while not stopping.is_set() and lock.still_at_path():
                for run_id, run_lock in _claim_queued(store):
                    print(f"sending {run_id}", file=sys.stderr, flush=True)
                    backend.adopt(run_id, run_lock)
                if backend.active():
                    busy_at = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - busy_at > idle_exit_s:
                    return
                stopping.wait(poll_s)
        finally:
            backend.close()
