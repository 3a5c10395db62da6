"""Model surgery on real (tiny) timm ViT, DeiT and Swin: apply, freeze, merge, save/load, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
from helpers import TINY_MODELS, make_tiny, randomise_adapters, tiny_input

from karst import (
    ConfigError,
    KarstConfig,
    KarstLinear,
    RunError,
    apply_karst,
    count_parameters,
    karst_layers,
    load_adapter,
    merge_karst,
    save_adapter,
)

CFG = KarstConfig(n_kernels=2, stack_dim=8, rank=4)


def test_zero_init_equivalence(arch):
    model = make_tiny(arch).eval()
    x = tiny_input(arch)
    before = model(x)
    apply_karst(model, CFG)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_targets_and_patch_embed_untouched(arch):
    model = apply_karst(make_tiny(arch), CFG)
    names = list(karst_layers(model))
    depth = sum(1 for n in names if n.endswith("attn.qkv"))
    assert depth == 2 and len(names) == 4 * depth
    assert {n.rsplit(".", 1)[-1] for n in names} == {"qkv", "proj", "fc1", "fc2"}
    assert isinstance(model.patch_embed.proj, torch.nn.Conv2d)
    assert not any(n.startswith("patch_embed") for n in names)


def test_only_adapter_and_head_get_gradients(arch):
    model = apply_karst(make_tiny(arch), CFG)
    randomise_adapters(model, seed=3)
    model(tiny_input(arch)).logsumexp(-1).sum().backward()
    head = {n for n, _ in model.named_parameters() if n.startswith("head")}
    for name, p in model.named_parameters():
        is_adapter = any(name.endswith("." + k) for k in ("C", "A", "B", "s1", "s2"))
        if is_adapter or name in head:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_parameter_accounting(arch):
    model = make_tiny(arch)
    total_before = sum(p.numel() for p in model.parameters())
    apply_karst(model, CFG)
    counts = count_parameters(model)
    expected = sum(
        CFG.n_kernels * (CFG.stack_dim**2 + CFG.rank * (l.out_features + l.in_features) // CFG.stack_dim)
        + 2 * l.out_features
        for l in karst_layers(model).values()
    )
    head = sum(p.numel() for p in model.get_classifier().parameters())
    assert counts.adapter == expected
    assert counts.head == head
    assert counts.frozen == total_before - head
    assert counts.total == total_before + expected


@pytest.mark.parametrize("rescale,alpha,init", [("channel", None, "unit-gain"), ("scalar", None, "unit-gain"),
                                                ("none", None, "unit-gain"), ("channel", 8.0, "kaiming")])
def test_merge_is_exact_and_loads_strict_into_plain_timm(arch, rescale, alpha, init):
    # The last case is the paper recipe's adapter: ΔW scaled by α/r, Kaiming-uniform C and A.
    config = KarstConfig(stack_dim=8, rank=4, rescale=rescale, alpha=alpha, init=init)
    model = apply_karst(make_tiny(arch), config).eval()
    randomise_adapters(model, seed=3)
    x = tiny_input(arch)
    adapted = model(x)
    merged = merge_karst(copy.deepcopy(model))
    assert not karst_layers(merged)
    name, kwargs = TINY_MODELS[arch]
    fresh = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
    assert set(fresh.state_dict()) == set(merged.state_dict())
    fresh.load_state_dict(merged.state_dict(), strict=True)
    out = fresh(x)
    rel = (out - adapted).abs().max() / adapted.abs().max()
    assert rel < 1e-4
    assert (adapted - make_tiny(arch).eval()(x)).abs().max() > 1e-3  # the adapters really changed something


def test_save_load_round_trip(arch, tmp_path):
    model = apply_karst(make_tiny(arch), CFG).eval()
    randomise_adapters(model, seed=3)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    fresh = make_tiny(arch).eval()  # same seed: same frozen weights
    load_adapter(fresh, path)
    x = tiny_input(arch)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert fresh.karst_config == CFG


def test_load_adapter_refuses_wrong_model(tmp_path):
    model = apply_karst(make_tiny("vit", num_classes=5), CFG)
    path = save_adapter(model, tmp_path / "a.safetensors")
    other = apply_karst(make_tiny("vit", num_classes=7), CFG)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(RunError, match=r"adapter tensor head\.bias has shape \(5,\), the model expects \(7,\)"):
        load_adapter(other, path)
    # All-or-nothing: the shapes are checked before any tensor is copied.
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(RunError, match="not a readable safetensors"):
        load_adapter(make_tiny("vit"), tmp_path / "junk.safetensors")
    with pytest.raises(RunError, match="does not exist"):
        load_adapter(make_tiny("vit"), tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    "config,match",
    [
        (KarstConfig(stack_dim=7), r"m=7 does not divide blocks\.0\.attn\.qkv .*fit every targeted layer: 1, 2, 4, 8"),
        (KarstConfig(rank=64), r"rank r=64 is larger than the Kronecker block of .* use r <= 8"),
        (KarstConfig(target_modules=("query",)), r"match no nn\.Linear .* fc1, fc2, head, proj, qkv"),
    ],
)
def test_apply_errors(config, match):
    model = make_tiny("vit")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=match):
        apply_karst(model, config)
    assert not karst_layers(model)  # nothing was half-applied
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs", [dict(n_kernels=0), dict(stack_dim=0), dict(rank=-1), dict(rescale="layer")])
def test_config_errors(kwargs):
    with pytest.raises(ConfigError):
        KarstConfig(**kwargs)


def test_apply_twice_is_refused():
    model = apply_karst(make_tiny("vit"), CFG)
    with pytest.raises(ConfigError, match="already has KARST"):
        apply_karst(model, CFG)


def test_family_reading_weight_directly_is_refused():
    # timm's BEiT builds qkv with F.linear(x, self.qkv.weight, ...): an adapter there would never run.
    sizes = {**TINY_MODELS["vit"][1], "depth": 1}  # the tiny ViT's sizes, one block
    model = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=3, **sizes)
    with pytest.raises(ConfigError, match=r"reads blocks\.0\.attn\.qkv\.weight directly.*remove 'qkv'"):
        apply_karst(model, CFG)
    apply_karst(model, KarstConfig(stack_dim=8, rank=4, target_modules=("proj", "fc1", "fc2")))
    assert len(karst_layers(model)) == 3


def test_bias_free_layer_merges_only_without_shift():
    model = make_tiny("vit", num_classes=3, depth=1, qkv_bias=False)
    with pytest.warns(UserWarning, match="no bias"):
        apply_karst(model, CFG)
    randomise_adapters(model, seed=3)
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn\.qkv: .*no bias in the plain architecture"):
        merge_karst(copy.deepcopy(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model2 = apply_karst(
            make_tiny("vit", num_classes=3, depth=1, qkv_bias=False), KarstConfig(stack_dim=8, rank=4, rescale="none")
        )
    merged = merge_karst(model2)
    assert "blocks.0.attn.qkv.bias" not in merged.state_dict()


def test_karst_layer_types(arch):
    model = apply_karst(make_tiny(arch), CFG)
    assert all(isinstance(m, KarstLinear) for m in karst_layers(model).values())
