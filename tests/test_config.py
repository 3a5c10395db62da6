"""Settings are declared once (karst.config): checks, JSON round trip, old run folders, flags and form."""

from __future__ import annotations

import json

import pytest

from karst import ConfigError, KarstConfig, TrainConfig
from karst.config import DEFAULT_LR, MethodConfig, config_from_values, field_spec, field_specs, parse_value


def test_train_config_round_trip():
    cfg = TrainConfig(method=MethodConfig(name="lora", adapter=KarstConfig(rank=4)), epochs=3, grad_clip=1.0)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.method.name == "lora" and again.method.adapter.rank == 4


def test_flat_config_json_of_older_runs_still_loads():
    # The layout every run folder had before the method spec was nested.
    old = {"backbone": "karst-vit-micro", "dataset": "synth-count", "method": "lora", "n_kernels": 3,
           "stack_dim": 4, "rank": 2, "rescale": "none", "lora_alpha": 8.0, "target_modules": ["qkv", "fc2"],
           "epochs": 4, "lr": 0.002, "warmup_epochs": 1}
    cfg = TrainConfig.from_dict(old)
    assert cfg.method.name == "lora" and cfg.method.lora_alpha == 8.0
    assert (cfg.adapter.n_kernels, cfg.adapter.stack_dim, cfg.adapter.rank, cfg.adapter.rescale) == (3, 4, 2, "none")
    assert cfg.adapter.target_modules == ("qkv", "fc2") and cfg.lr == 0.002
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # and it is written back nested


@pytest.mark.parametrize(
    "kwargs,match,field",
    [
        (dict(method="adapter"), r"method='adapter' is not a valid choice; allowed: 'karst', 'lora'", "name"),
        (dict(epochs=0), r"epochs=0 must be an integer >= 1 \(training epochs\); the default is 6", "epochs"),
        (dict(lr=-1), r"lr=-1 must be a finite number > 0", "lr"),
        (dict(lr=float("nan")), r"lr=nan", "lr"),
        (dict(batch_size=2.5), r"batch_size=2.5 must be an integer", "batch_size"),
        (dict(device="tpu"), r"device='tpu'", "device"),
        (dict(label_smoothing=1.0), r"label_smoothing=1.0 must be a finite number >= 0 and < 1", "label_smoothing"),
        (dict(epochs=5, warmup_epochs=5), r"warmup_epochs=5 must be smaller than epochs=5", "warmup_epochs"),
        (dict(epochs=1, warmup_epochs=5), r"warmup_epochs=5 must be smaller than epochs=1", "warmup_epochs"),
        (dict(backbone=""), r"backbone='' must be a non-empty", "backbone"),
        (dict(method={"adapter": {"target_modules": []}}), r"target_modules=\[\] must be a non-empty list",
         "target_modules"),
        (dict(method={"adapter": {"n_kernels": 0}}), r"n_kernels=0 must be an integer >= 1 \(N", "n_kernels"),
    ],
)
def test_errors_are_one_line_and_name_the_field(kwargs, match, field):
    with pytest.raises(ConfigError, match=match) as info:
        TrainConfig(**kwargs)
    assert "\n" not in str(info.value) and info.value.field == field


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field\(s\) epoch, lrate"):
        TrainConfig.from_dict({"epoch": 3, "lrate": 0.1})
    with pytest.raises(ConfigError, match=r"unknown KarstConfig field\(s\) rnak"):
        TrainConfig.from_dict({"method": {"adapter": {"rnak": 3}}})
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


def test_warmup_default_follows_the_epoch_count():
    assert TrainConfig().warmup_epochs == 1
    assert TrainConfig(epochs=1).warmup_epochs == 0
    assert TrainConfig(epochs=1, warmup_epochs=0).warmup_epochs == 0


def test_every_field_is_declared_with_help_and_reachable_by_path():
    specs = field_specs()
    paths = [s.path for s in specs]
    assert len(paths) == len(set(paths))
    assert {"method.name", "method.adapter.rank", "method.adapter.init_std_A", "method.adapter.recompute_output",
            "method.lora_alpha", "lr", "tensorboard", "mlflow"} <= set(paths)
    for spec in specs:
        assert spec.help and spec.label, spec.path
    # Every field, flag or not, can be set by its path: the JSON file and --set reach all of them.
    cfg = config_from_values({"method.adapter.init_std_A": "0.05", "method.adapter.recompute_output": "proj,fc2",
                              "grad_clip": "1.5", "tensorboard": "true"})
    assert cfg.adapter.init_std_A == 0.05 and cfg.adapter.recompute_output == ("proj", "fc2")
    assert cfg.grad_clip == 1.5 and cfg.tensorboard is True
    with pytest.raises(ConfigError, match="unknown setting 'method.adapter.nope'"):
        config_from_values({"method.adapter.nope": 1})


@pytest.mark.parametrize("path,raw,value", [
    ("epochs", 3.0, 3), ("epochs", "4", 4), ("lr", "1e-3", 1e-3), ("lr", "", None), ("max_train_samples", None, None),
    ("pretrained", "false", False), ("method.adapter.target_modules", "qkv, fc1", ("qkv", "fc1")),
])
def test_parse_value_turns_form_and_flag_text_into_typed_values(path, raw, value):
    assert parse_value(field_spec(path), raw) == value


@pytest.mark.parametrize("path,raw,match", [
    ("method.adapter.n_kernels", 2.5, "N kernels=2.5 must be a whole number"),
    ("epochs", None, "Epochs is empty"),
    ("lr", "fast", "must be a number"),
])
def test_parse_value_refuses_wrong_types_by_label(path, raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_value(field_spec(path), raw)
    assert info.value.field == path
