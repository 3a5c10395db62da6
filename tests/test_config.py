"""Configuration dataclasses validate at construction and round-trip through JSON."""

from __future__ import annotations

import json

import pytest

from karst import ConfigError, KarstConfig, TrainConfig
from karst.config import DEFAULT_LR


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


@pytest.mark.parametrize("method", ["karst", "lora", "lokr", "full", "probe"])
def test_learning_rate_defaults_per_method_and_is_recorded(method):
    cfg = TrainConfig(method=method)
    assert cfg.lr == DEFAULT_LR[method]
    assert TrainConfig.from_dict(cfg.to_dict()).lr == DEFAULT_LR[method]  # config.json holds the number
    assert TrainConfig(method=method, lr=0.5).lr == 0.5  # an explicit choice always wins


def test_setup_form_empty_learning_rate_means_the_method_default():
    from components.runner import SetupForm

    assert SetupForm(method="lora", lr=None).to_train_config().lr == DEFAULT_LR["lora"]
    assert SetupForm(method="lora", lr="").to_train_config().lr == DEFAULT_LR["lora"]
    assert SetupForm(method="lora", lr=0.02).to_train_config().lr == 0.02
