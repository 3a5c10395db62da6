"""How the trainer reports: the :class:`Callback` interface and the values it passes.

The run folder (``karst.runs.RunRecorder``), the export at the end (``karst.export.RunExporter``),
the CLI's progress bar and the TensorBoard / MLflow loggers are all callbacks; the trainer knows
none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Callback", "Progress", "TrainResult"]


@dataclass
class Progress:
    """Where the run is; handed to every step/epoch callback."""

    step: int
    total_steps: int
    epoch: int  # epochs finished
    epochs: int
    elapsed_s: float
    eta_s: float | None


@dataclass
class TrainResult:
    """What the run produced, for callbacks that export it (``on_end``)."""

    method: Any  # karst.methods.Method
    backbone: Any  # karst.backbones.Backbone
    class_names: list[str]


class Callback:
    """Receives the run's events; override what you need. All methods are no-ops here."""

    def on_phase(self, message: str) -> None:
        """A setup phase began ("loading backbone", ...)."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Training is about to begin: device, steps, parameter counts, class names."""

    def on_step(self, record: dict[str, Any], progress: Progress) -> None:
        """A ``{"type": "step", ...}`` metrics record after each optimiser step."""

    def on_epoch(self, record: dict[str, Any], progress: Progress) -> None:
        """A ``{"type": "epoch", ...}`` metrics record after each epoch's validation."""

    def on_snapshot(
        self, epoch: int, tensors: dict[str, torch.Tensor], stats: dict[str, Any], metadata: dict[str, str]
    ) -> None:
        """Trainable tensors (CPU copies) and probe-batch feature statistics at ``epoch``."""

    def on_reference(self, reference: dict[str, Any]) -> None:
        """The statistics alignment is measured against (``karst.stats.reference_stats``), once, before
        the epoch-0 snapshot."""

    def on_train_state(self, epoch: int, state: dict[str, Any]) -> None:
        """The state to resume from after ``epoch`` (``karst.checkpoint.train_state``; not copied)."""

    def on_resume(self, epoch: int, step: int) -> None:
        """A resumed run continues after ``epoch`` (``step`` steps done); 0, 0: it starts over."""

    def on_test(self, record: dict[str, Any]) -> None:
        """The ``{"type": "test", ...}`` record."""

    def on_end(self, summary: dict[str, Any], result: TrainResult | None) -> None:
        """The run finished (any status); ``result`` is None if it failed before the model existed."""
