"""Configuration dataclasses validate at construction and round-trip through JSON."""

from __future__ import annotations

import json

import pytest

from karst import ConfigError, KarstConfig, TrainConfig


def test_train_config_round_trip():
    cfg = TrainConfig(method="lora", rank=4, epochs=3, grad_clip=1.0)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.method_config().method == "lora" and again.karst_config().rank == 4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="adapter"), r"method='adapter' is not a valid choice; allowed: 'karst', 'lora'"),
        (dict(epochs=0), r"epochs=0 must be an integer >= 1"),
        (dict(lr=-1), r"lr=-1 must be a finite number > 0"),
        (dict(lr=float("nan")), r"lr=nan"),
        (dict(batch_size=2.5), r"batch_size=2.5 must be an integer"),
        (dict(device="tpu"), r"device='tpu'"),
        (dict(label_smoothing=1.0), r"label_smoothing=1.0 must be below 1"),
        (dict(epochs=5, warmup_epochs=5), r"warmup_epochs=5 must be smaller than epochs=5"),
        (dict(backbone=""), r"backbone='' must be a non-empty"),
        (dict(target_modules=()), r"target_modules=\(\) must be a non-empty list"),
    ],
)
def test_train_config_errors_are_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        TrainConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field\(s\) epoch, lrate"):
        TrainConfig.from_dict({"epoch": 3, "lrate": 0.1})
    with pytest.raises(ConfigError, match="expects a JSON object"):
        KarstConfig.from_dict([1, 2])


def test_karst_config_accepts_single_target_string():
    assert KarstConfig(target_modules="qkv").target_modules == ("qkv",)
