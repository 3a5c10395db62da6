"""Steps, time and warnings before a launch (karst.estimate)."""

from __future__ import annotations

import pytest

from karst.config import TrainConfig
from karst.estimate import estimate_run

SIZES = {"train": 800, "val": 200, "test": 1000}


def _history(seconds: float = 100.0, images: int = 800, epochs: int = 2, backbone: str = "karst-vit-micro",
             device: str = "cpu") -> list[dict]:
    return [{"run_id": "20250101-000000-karst-beef", "config": {"backbone": backbone},
             "summary": {"status": "completed", "train_images": images, "epochs_done": epochs,
                         "train_seconds": seconds, "device": device}}]


def test_steps_and_time_from_an_earlier_run() -> None:
    est = estimate_run(TrainConfig(epochs=6, batch_size=32), SIZES, _history(), "cpu")
    assert (est.train_images, est.steps_per_epoch, est.total_steps) == (800, 25, 150)
    # 100 s for 1,600 images seen → 4,800 images take 300 s.
    assert est.seconds == pytest.approx(300.0) and "16 images/s" in est.basis
    assert est.warnings == []


@pytest.mark.parametrize("history", [[], _history(backbone="vit_base_patch16_224"), _history(device="cuda:0")])
def test_no_time_without_a_comparable_run(history) -> None:
    est = estimate_run(TrainConfig(), SIZES, history, "cpu")
    assert est.seconds is None and "no finished run" in est.basis and est.total_steps == 150


def test_unknown_dataset_size_uses_the_image_limit() -> None:
    assert estimate_run(TrainConfig(), None).total_steps is None
    est = estimate_run(TrainConfig(max_train_samples=100, batch_size=32, epochs=2), None)
    assert (est.train_images, est.steps_per_epoch, est.total_steps) == (100, 4, 8)


def test_warnings_for_typos() -> None:
    lr = estimate_run(TrainConfig(lr=0.5), SIZES).warnings
    assert len(lr) == 1 and "50× the karst default 0.01" in lr[0]
    batch = estimate_run(TrainConfig(batch_size=1024), SIZES).warnings
    assert len(batch) == 1 and "larger than the 800 training images" in batch[0]
    long = estimate_run(TrainConfig(epochs=1000), SIZES, _history(), "cpu").warnings
    assert len(long) == 1 and "13.9 h" in long[0] and "shared queue" in long[0]
    assert "1000 epochs is a lot" in estimate_run(TrainConfig(epochs=1000), SIZES).warnings[0]
