"""Training state, so that a stopped run can continue after its last epoch as if it had never stopped.

After every epoch the trainer hands its callbacks (``on_train_state``) one dict: the trainable
tensors, the optimiser's and the schedule's state, the step and epoch, the summary figures so far,
and every random generator the loop draws from (Python, NumPy, torch CPU and CUDA, and the
DataLoader's shuffling generator). :class:`StateSaver` writes it to ``snapshots/state_NNN.pt``
with ``torch.save`` and keeps only the newest, so resuming costs one copy of the optimiser state on
disk. :func:`load_state` reads it back with ``weights_only=True``: plain containers and tensors,
never pickled code.

On a CPU a resumed run repeats the uninterrupted one bit for bit (same torch version and thread
count): the frozen weights and the data are rebuilt from the seed, everything else is restored.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .callbacks import Callback
from .errors import RunError
from .runs import publish, saved_epochs

__all__ = ["StateSaver", "train_state", "restore_train_state", "load_state", "STATE_VERSION"]

STATE_VERSION = 1
# Summary figures that carry over epochs (the rest are recomputed by the resumed run).
_SUMMARY_KEYS = ("val_acc", "best_val_acc", "best_test_acc", "epochs_done")


def _capture_rng(loader_generator: torch.Generator | None) -> dict[str, Any]:
    version, keys, gauss = random.getstate()
    name, np_keys, pos, has_gauss, cached = np.random.get_state()
    rng = {
        "python": [version, list(keys), gauss],
        # weights_only loading accepts tensors and plain values, not NumPy arrays.
        "numpy": [name, torch.from_numpy(np_keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _restore_rng(rng: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    version, keys, gauss = rng["python"]
    random.setstate((version, tuple(keys), gauss))
    name, np_keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np_keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if loader_generator is not None and rng.get("loader") is not None:
        loader_generator.set_state(rng["loader"])
    if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def train_state(trainer: Any, epoch: int) -> dict[str, Any]:
    """The state of ``trainer`` (a ``karst.train.Trainer``) at the end of ``epoch``.

    Tensors are not copied: a callback that keeps the dict past its call must copy it.
    """
    return {
        "version": STATE_VERSION,
        "epoch": epoch,
        "step": trainer.step,
        "trainable": {k: v.detach() for k, v in trainer.method.adapter_state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "rng": _capture_rng(trainer.loader.generator),
        "summary": {k: trainer.summary[k] for k in _SUMMARY_KEYS if k in trainer.summary},
    }


def restore_train_state(trainer: Any, state: dict[str, Any]) -> None:
    """Put ``state`` (from :func:`train_state`) back into a freshly built ``trainer``."""
    trainer.method.load_adapter_state_dict(state["trainable"])  # copied in place, onto the model's device
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    _restore_rng(state["rng"], trainer.loader.generator)
    trainer.step = state["step"]
    trainer.summary.update(state["summary"])


def load_state(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest training state saved in ``run_dir``, or None if there is none."""
    epochs = saved_epochs(run_dir, "state")
    if not epochs:
        return None
    path = Path(run_dir) / "snapshots" / f"state_{epochs[-1]:03d}.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged or foreign file
        raise RunError(f"{path.name} of run {Path(run_dir).name} cannot be read ({type(e).__name__}); "
                       "launch a new run with the same settings.") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise RunError(f"{path.name} of run {Path(run_dir).name} is not a training state of this version of "
                       "karst; launch a new run with the same settings.")
    return state


class StateSaver(Callback):
    """Trainer callback: write each epoch's training state to ``<run>/snapshots/state_NNN.pt``.

    Args:
        run_dir: the run folder.
    """

    def __init__(self, run_dir: str | Path):
        self.folder = Path(run_dir) / "snapshots"

    def on_train_state(self, epoch: int, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".state_{epoch:03d}.pt.tmp"
        torch.save(state, tmp)
        publish(tmp, self.folder / f"state_{epoch:03d}.pt")
        for old in saved_epochs(self.folder.parent, "state"):  # only the newest is needed to resume
            if old != epoch:
                (self.folder / f"state_{old:03d}.pt").unlink(missing_ok=True)
