"""The Setup form's settings (karst.preflight): defaults, one-line errors, Gradio's numbers, sources."""

from __future__ import annotations

import pytest

from karst.config import DEFAULT_LR, MethodConfig
from karst.errors import BackboneError, ConfigError, DataError, KarstError
from karst.preflight import FORM_SETTINGS, Preflight, SetupForm, backbone_spec, dataset_allowed, dataset_spec, form_key


def test_default_form_is_the_embedded_default():
    cfg = SetupForm().to_train_config()
    assert (cfg.backbone, cfg.dataset, cfg.method.name) == ("karst-vit-micro", "synth-objects", "karst")


def test_setup_form_empty_learning_rate_means_the_method_default():
    assert SetupForm(method="lora", lr=None).to_train_config().lr == DEFAULT_LR["lora"]
    assert SetupForm(method="lora", lr="").to_train_config().lr == DEFAULT_LR["lora"]
    assert SetupForm(method="lora", lr=0.02).to_train_config().lr == 0.02


@pytest.mark.parametrize("changes,fragment", [
    ({"n_kernels": 2.5}, "whole number"),
    ({"stack_dim": None}, "empty"),
    ({"lr": "fast"}, "number"),
    ({"epochs": 0}, "epochs"),
    ({"backbone": "  "}, "backbone is empty"),
])
def test_form_errors_are_one_line_karst_errors(changes, fragment):
    form = SetupForm(**changes)
    with pytest.raises(KarstError) as e:
        form.to_train_config()
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_numbers_from_gradio_floats_are_accepted():
    cfg = SetupForm(n_kernels=4.0, stack_dim=4.0, rank=2.0, epochs=3.0, max_train_samples=64.0).to_train_config()
    adapter = cfg.method.adapter
    assert (adapter.n_kernels, adapter.stack_dim, adapter.rank, cfg.max_train_samples) == (4, 4, 2, 64)
    assert isinstance(adapter.n_kernels, int)


def test_dataset_spec_per_source(tmp_path):
    assert dataset_spec("embedded", "synth-count", "", None, "") == "synth-count"
    assert dataset_spec("folder", "", str(tmp_path), None, "") == str(tmp_path)
    assert dataset_spec("zip", "", "", "/up/x.zip", "") == "/up/x.zip"
    assert dataset_spec("torchvision", "", "", None, "CIFAR10") == "torchvision:CIFAR10"
    assert dataset_spec("torchvision", "", "", None, "torchvision:CIFAR10") == "torchvision:CIFAR10"
    with pytest.raises(DataError):
        dataset_spec("folder", "", str(tmp_path / "missing"), None, "")
    with pytest.raises(ConfigError):
        dataset_spec("zip", "", "", None, "")


def test_backbone_spec_local_file(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    assert backbone_spec("file", "", str(f), "vit_tiny_patch16_224") == (str(f), "vit_tiny_patch16_224")
    assert backbone_spec("catalogue", " karst-vit-micro ", "", "") == ("karst-vit-micro", None)
    with pytest.raises(BackboneError, match="does not exist"):
        backbone_spec("file", "", str(tmp_path / "nope.pth"), "")


def test_server_paths_only_under_the_roots_with_one_answer(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert dataset_spec("folder", "", str(root / "data"), None, "", roots=[root]) == str((root / "data").resolve())
    messages = set()
    for path in (outside, root / "link", root / ".." / "outside", root / "missing", tmp_path / "missing", "x" * 5000):
        with pytest.raises(DataError) as err:
            dataset_spec("folder", "", str(path), None, "", roots=[root])
        messages.add(str(err.value).replace(repr(str(path)[:200]), "PATH"))
    assert len(messages) == 1, messages  # missing or refused, symlink or "..": the same answer
    assert dataset_spec("folder", "", str(outside), None, "") == str(outside)  # no roots (the CLI): any folder
    with pytest.raises(DataError, match="not an embedded task"):
        dataset_spec("embedded", str(outside), "", None, "", roots=[root])
    assert dataset_spec("embedded", "synth-count@2", "", None, "", roots=[]) == "synth-count@2"
    with pytest.raises(BackboneError, match="data roots"):
        backbone_spec("catalogue", str(outside / "w.safetensors"), "", "", roots=[root])
    assert dataset_allowed("synth-objects", []) and not dataset_allowed(str(outside), [root])
    assert dataset_allowed(str(root / "data"), [root])


@pytest.mark.parametrize("changes,warmup", [
    ({}, 1),  # empty: 1 warm-up epoch ...
    ({"epochs": 1}, 0),  # ... or none for a one-epoch run
    ({"warmup_epochs": ""}, 1),  # an emptied text box is the default too
    ({"warmup_epochs": "3", "epochs": 10}, 3),
    ({"warmup_epochs": 0.0}, 0),
])
def test_form_warmup_epochs_reach_the_config(changes, warmup):
    assert SetupForm().warmup_epochs is None
    assert SetupForm(**changes).to_train_config().warmup_epochs == warmup


@pytest.mark.parametrize("changes,fragment", [
    ({"warmup_epochs": 6, "epochs": 6}, "must be smaller than epochs=6"),
    ({"warmup_epochs": "-1"}, "warmup_epochs=-1 must be an integer >= 0"),
    ({"warmup_epochs": "1.5"}, "Warm-up epochs='1.5' must be a whole number"),
])
def test_form_warmup_errors_name_the_warmup_field(changes, fragment):
    with pytest.raises(ConfigError) as err:
        SetupForm(**changes).to_train_config()
    assert fragment in str(err.value) and err.value.field == "warmup_epochs"
    report = Preflight().check(SetupForm(**changes))
    assert not report.ok and form_key(report.field) == "warmup_epochs"  # the form marks this field


def test_form_lora_alpha_is_the_runs_alpha():
    assert SetupForm().lora_alpha == MethodConfig().lora_alpha
    assert SetupForm(method="lora", lora_alpha=32.0).to_train_config().method.lora_alpha == 32.0
    assert {"method.lora_alpha", "warmup_epochs"} <= set(FORM_SETTINGS)
    with pytest.raises(ConfigError, match="lora_alpha"):
        SetupForm(method="lora", lora_alpha=0).to_train_config()
