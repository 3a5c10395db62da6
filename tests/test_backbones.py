"""Backbones: the embedded pre-trained ViT, local weight files, timm hub names (offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from karst.backbones import ASSETS_DIR, EMBEDDED_BACKBONE, HUB_BACKBONES, list_backbones, load_backbone
from karst.data.synthetic import make_task
from karst.errors import BackboneError

WEIGHTS = ASSETS_DIR / f"{EMBEDDED_BACKBONE}.safetensors"
CARD = ASSETS_DIR / f"{EMBEDDED_BACKBONE}.json"


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_card_describes_a_reproducible_pretraining():
    card = json.loads(CARD.read_text())
    for key in ("arch", "image_size", "data_config", "recipe", "seed", "pretrain_accuracy", "seconds", "versions"):
        assert key in card
    assert card["arch"]["model_name"] in timm.list_models()
    assert {"torch", "timm"} <= set(card["versions"])
    assert WEIGHTS.stat().st_size < 8 * 1024**2  # "a few MB"


def test_embedded_loads_every_body_weight_strictly():
    bb = load_backbone(EMBEDDED_BACKBONE, 7)
    stored = load_file(str(WEIGHTS))
    own = bb.model.state_dict()
    assert set(own) - set(stored) == {"head.weight", "head.bias"}
    assert set(stored) <= set(own)
    for k, v in stored.items():
        assert torch.equal(own[k], v), k
    assert bb.model.get_classifier().out_features == 7
    assert bb.card is not None and bb.data_config["input_size"] == (3, 32, 32)
    # The arch dict is enough for a plain-timm user to rebuild the same module tree.
    rebuilt = timm.create_model(bb.arch["model_name"], pretrained=False, num_classes=7, **bb.arch["kwargs"])
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in own.items()}


def test_random_backbone_has_same_architecture_other_weights():
    pre = load_backbone(EMBEDDED_BACKBONE, 3).model.state_dict()
    rnd = load_backbone(EMBEDDED_BACKBONE, 3, pretrained=False).model.state_dict()
    assert {k: v.shape for k, v in pre.items()} == {k: v.shape for k, v in rnd.items()}
    assert not torch.equal(pre["blocks.0.attn.qkv.weight"], rnd["blocks.0.attn.qkv.weight"])


def test_transform_matches_card_statistics_and_converts_modes():
    bb = load_backbone(EMBEDDED_BACKBONE, 2, pretrained=False)
    tf = bb.transform()
    img = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    x = tf(img)
    mean, std = bb.data_config["mean"], bb.data_config["std"]
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(mean, std)])
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, 16, 16], expected, atol=1e-4)
    for mode in ("L", "P", "RGBA", "LA"):
        assert tf(img.convert(mode)).shape == (3, 32, 32)
    assert tf(Image.new("RGB", (50, 40))).shape == (3, 32, 32)  # other sizes are resized


def _features(bb, images: np.ndarray) -> torch.Tensor:
    # Same arithmetic as bb.transform() for 32 px images (checked above), without PIL per image.
    mean = torch.tensor(bb.data_config["mean"])[:, None, None]
    std = torch.tensor(bb.data_config["std"])[:, None, None]
    x = (torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        return bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)


def _ridge_probe_accuracy(f_tr, y_tr, f_te, y_te, k: int, lam: float = 1.0) -> float:
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    a, b = (f_tr - mu) / sd, (f_te - mu) / sd
    a = torch.cat([a, torch.ones(len(a), 1)], 1)
    b = torch.cat([b, torch.ones(len(b), 1)], 1)
    targets = torch.nn.functional.one_hot(torch.as_tensor(np.array(y_tr)), k).float()
    w = torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1]), a.T @ targets)
    return float(((b @ w).argmax(1) == torch.as_tensor(np.array(y_te))).float().mean())


def test_pretrained_features_beat_random_initialisation():
    """A ridge probe on frozen features of an embedded task (400 train / 400 test images)."""
    task = make_task("synth-textures", 0)
    (xtr, ytr), (xte, yte) = task.splits["train"], task.splits["test"]
    xtr, ytr, xte, yte = xtr[:400], ytr[:400], xte[:400], yte[:400]
    acc = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        bb = load_backbone(EMBEDDED_BACKBONE, 10, pretrained=pretrained)
        bb.model.eval()
        acc[pretrained] = _ridge_probe_accuracy(_features(bb, xtr), ytr, _features(bb, xte), yte, 10)
    # Measured with the committed asset: about 0.5 against 0.2 (chance is 0.1).
    assert acc[True] > acc[False] + 0.2, acc


# ----------------------------------------------------------------------------------------------
# Local weight files


def test_local_safetensors_with_arch_and_from_metadata(tmp_path):
    stored = load_file(str(WEIGHTS))
    plain = tmp_path / "plain.safetensors"
    save_file(stored, str(plain))  # no metadata
    with pytest.raises(BackboneError) as err:
        load_backbone(plain, 4)
    assert "arch=" in one_line(err)
    bb = load_backbone(plain, 4, arch=EMBEDDED_BACKBONE)
    assert torch.equal(bb.model.state_dict()["blocks.1.mlp.fc1.weight"], stored["blocks.1.mlp.fc1.weight"])
    assert bb.data_config["input_size"] == (3, 32, 32)
    # The embedded asset records its architecture in the metadata: no arch= needed.
    assert load_backbone(WEIGHTS, 4).arch == bb.arch


def test_local_file_head_is_kept_when_it_fits_else_recreated(tmp_path):
    bb = load_backbone(EMBEDDED_BACKBONE, 5)
    path = tmp_path / "full.safetensors"
    save_file(bb.model.state_dict(), str(path))
    same = load_backbone(path, 5, arch=EMBEDDED_BACKBONE)
    assert torch.equal(same.model.head.weight, bb.model.head.weight) and not same.notes
    other = load_backbone(path, 3, arch=EMBEDDED_BACKBONE)
    assert other.model.head.out_features == 3 and other.notes


def test_torch_file_is_loaded_with_weights_only(tmp_path):
    stored = load_file(str(WEIGHTS))
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in stored.items()}}, path)
    bb = load_backbone(path, 2, arch=EMBEDDED_BACKBONE)
    assert torch.equal(bb.model.state_dict()["cls_token"], stored["cls_token"])


class _Payload:
    """Unpickling this would run code with a full pickle; weights_only must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(BackboneError) as err:
        load_backbone(path, 2, arch=EMBEDDED_BACKBONE)
    assert "weights_only" in one_line(err)


def test_wrong_architecture_names_the_mismatch(tmp_path):
    stored = load_file(str(WEIGHTS))
    path = tmp_path / "w.safetensors"
    save_file(stored, str(path))
    small = {
        "model_name": "vit_tiny_patch16_224",
        "kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4},
    }
    with pytest.raises(BackboneError) as err:
        load_backbone(path, 2, arch=small)
    assert "shape mismatch" in one_line(err) and "arch=" in one_line(err)
    shallow = {"model_name": "vit_tiny_patch16_224", "kwargs": {**small["kwargs"], "embed_dim": 128, "depth": 2}}
    with pytest.raises(BackboneError) as err:
        load_backbone(path, 2, arch=shallow)
    assert "unexpected key" in one_line(err) and "blocks.2" in one_line(err)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("missing.safetensors", "not an existing weight file"),
        ("notes.txt", "suffix"),
        ("broken.safetensors", "Could not read"),
    ],
)
def test_bad_local_files(tmp_path, spec, needle):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(BackboneError) as err:
        load_backbone(tmp_path / spec, 2, arch=EMBEDDED_BACKBONE)
    assert needle in one_line(err)


# ----------------------------------------------------------------------------------------------
# Hub names


def test_unknown_timm_name_lists_close_matches():
    with pytest.raises(BackboneError) as err:
        load_backbone("vit_bsae_patch16_224", 3)
    assert "vit_base_patch16_224" in one_line(err)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "hf-hub:timm/deit_tiny_patch16_224.fb_in1k"])
def test_hub_weights_offline_and_not_cached_is_actionable(tmp_path, monkeypatch, name):
    import huggingface_hub.constants as hf

    # What HF_HUB_OFFLINE=1 with an empty cache means, set where huggingface_hub reads it per call.
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BackboneError) as err:
        load_backbone(name, 3)
    msg = one_line(err)
    assert name in msg and "cache" in msg and "karst-vit-micro" in msg


def test_hub_architecture_without_weights_builds_offline():
    bb = load_backbone("deit_tiny_patch16_224", 3, pretrained=False, drop_path_rate=0.1)
    assert bb.model.get_classifier().out_features == 3
    assert bb.data_config["input_size"] == (3, 224, 224) and bb.arch["model_name"] == "deit_tiny_patch16_224"


def test_bad_num_classes():
    with pytest.raises(BackboneError, match="num_classes"):
        load_backbone(EMBEDDED_BACKBONE, 0)


def test_list_backbones_embedded_first_then_curated():
    items = list_backbones()
    assert items[0]["name"] == EMBEDDED_BACKBONE and items[0]["embedded"] and items[0]["available"]
    names = [b["name"] for b in items]
    assert set(HUB_BACKBONES) <= set(names)
    assert {
        "vit_base_patch16_224.augreg_in21k",
        "vit_base_patch16_224.orig_in21k",
        "swin_base_patch4_window7_224",
    } <= set(names)
    assert all({"name", "embedded", "description"} <= set(b) for b in items)
    assert not any(b["embedded"] for b in items[1:])
