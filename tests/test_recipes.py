"""The paper recipe and the protocol settings it uses: preprocessing, train on train+val, periodic evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_backbone, tiny_config
from PIL import Image

from karst.backbones import load_backbone
from karst.cli import _train_config as cli_config
from karst.cli import build_parser
from karst.config import TrainConfig
from karst.errors import ConfigError
from karst.recipes import RECIPE_SOURCES, RECIPES, apply_recipe
from karst.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_recipe_is_a_valid_config_with_a_source_for_each_choice():
    cfg = TrainConfig.from_dict(apply_recipe("paper", {"dataset": "synth-count"}))
    assert (cfg.backbone, cfg.preprocess, cfg.train_on_val) == ("vit_base_patch16_224.orig_in21k", "paper", True)
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.drop_path) == (1e-3, 1e-4, 32, 0.1)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.eval_every) == (100, 10, 10)
    adapter = cfg.method.adapter
    assert (adapter.n_kernels, adapter.stack_dim, adapter.rank, adapter.init) == (2, 8, 8, "kaiming")
    assert adapter.target_modules == ("qkv", "proj", "fc1", "fc2") and cfg.dataset == "synth-count"
    for key in RECIPES["paper"]:
        assert any(k == key or k.startswith(key + ".") for k in RECIPE_SOURCES["paper"]), key


def test_user_settings_and_flags_override_the_recipe():
    argv = ["train", "--recipe", "paper", "--epochs", "30", "--method", "lora", "--dataset", "synth-count"]
    cfg = cli_config(build_parser().parse_args(argv))
    assert cfg.epochs == 30 and cfg.method.name == "lora" and cfg.method.adapter.init == "kaiming"
    assert cfg.warmup_epochs == 10 and cfg.lr == 1e-3  # the recipe's lr, not LoRA's default
    # A short run must shorten the recipe's 10 warm-up epochs too: one line that says how.
    argv[argv.index("30")] = "3"
    with pytest.raises(ConfigError, match="warmup_epochs=10 must be smaller than epochs=3; try warmup_epochs=0"):
        cli_config(build_parser().parse_args(argv))
    with pytest.raises(ConfigError, match="recipe 'nope' is unknown"):
        apply_recipe("nope", {})


def test_paper_preprocessing_squashes_and_uses_half_mean_std(tmp_path):
    bb = load_backbone(str(tiny_backbone(tmp_path)), num_classes=2, pretrained=False)
    bb.use_preprocess("paper")
    # A wide image: a crop would drop its red left edge, squashing keeps it.
    img = np.zeros((32, 96, 3), np.uint8)
    img[:, :8] = (255, 0, 0)
    x = bb.transform()(Image.fromarray(img))
    assert x.shape == (3, 32, 32)
    assert x[0, :, 0].mean() > 0.9 and torch.allclose(x[1, :, -1], torch.full((32,), -1.0))  # (0 - 0.5) / 0.5
    assert bb.data_config["crop_mode"] == "squash" and bb.data_config["mean"] == (0.5, 0.5, 0.5)


def test_train_on_val_evaluates_on_test_every_n_epochs(tmp_path):
    config = tiny_config(tmp_path, epochs=3, eval_every=2, train_on_val=True, preprocess="paper", warmup_epochs=0,
                         max_train_samples=None)
    run_dir = tmp_path / "run"
    summary = train(config, run_dir)
    assert summary["status"] == "completed"
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "epoch"]
    # Evaluated after epoch 2 (every 2) and after the last; never on a validation split.
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e.get("test_acc") is not None for e in epochs] == [False, True, True]
    assert all(e["val_acc"] is None for e in epochs)
    assert summary["best_test_acc"] == max(e["test_acc"] for e in epochs if e.get("test_acc") is not None)
    assert summary["test_acc"] == epochs[-1]["test_acc"] and summary["val_acc"] is None
    snaps = sorted(p.name for p in (run_dir / "snapshots").glob("epoch_*.safetensors"))
    assert snaps == ["epoch_000.safetensors", "epoch_002.safetensors", "epoch_003.safetensors"]
    # 800 + 200 images of synth-objects train: all 1,000, in 32 steps per epoch.
    assert json.loads((run_dir / "status.json").read_text())["total_steps"] == 3 * 32
    merged = json.loads((run_dir / "merged.json").read_text())
    assert merged["preprocessing"]["crop_mode"] == "squash"
