"""scripts/pretrain_embedded.py: a few real steps, reproducible from the seed, loadable as a backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_script
from safetensors.torch import load_file

from karst.backbones import load_backbone


@pytest.fixture(scope="module")
def pretrain():
    return load_script("pretrain_embedded.py").main


def _run(pretrain, out: Path, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    card = pretrain(["--steps", "2", "--batch-size", "8", "--warmup-steps", "1", "--threads", "1",
                     "--seed", str(seed), "--out", str(out)])
    return card, load_file(str(out / "karst-vit-micro.safetensors"))


def test_same_seed_same_weights_other_seed_differs_and_the_file_loads(pretrain, tmp_path, one_thread):
    card, a = _run(pretrain, tmp_path / "a", 0)
    _, b = _run(pretrain, tmp_path / "b", 0)
    _, c = _run(pretrain, tmp_path / "c", 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert not any(k.startswith("head.") for k in a)  # the task head is not part of the backbone

    # The card says how the weights were made and how to rebuild and feed the model.
    on_disk = json.loads((tmp_path / "a" / "karst-vit-micro.json").read_text())
    assert on_disk == json.loads(json.dumps(card))
    assert card["seed"] == 0 and card["recipe"]["steps"] == 2 and card["recipe"]["images_seen"] == 16
    assert set(card["pretrain_accuracy"]) >= {"shape", "colour", "texture", "position", "scale", "mean"}
    assert card["data_config"]["input_size"] == [3, 32, 32] and card["seconds"] > 0
    assert card["num_params"] == sum(v.numel() for v in a.values())

    # The weight file records its architecture: it loads as a local backbone without arch=.
    bb = load_backbone(tmp_path / "a" / "karst-vit-micro.safetensors", 4)
    assert torch.equal(bb.model.state_dict()["blocks.0.attn.qkv.weight"], a["blocks.0.attn.qkv.weight"])
