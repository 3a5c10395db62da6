"""Every method behind one interface: real peft LoRA/LoKr, full fine-tuning, linear probe, KARST."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import TINY_MODELS, make_tiny, randomise_adapters, tiny_input

from karst import ConfigError, KarstConfig, MethodConfig, RunError, build_method, check_settings
from karst.methods import METHODS


@pytest.mark.parametrize("name", METHODS)
def test_merged_model_is_plain_timm_and_equal(arch, name):
    cfg = MethodConfig(name=name, adapter=KarstConfig(stack_dim=8, rank=4))
    method = build_method(make_tiny(arch), cfg)
    randomise_adapters(method.model, seed=5)
    method.model.eval()
    x = tiny_input(arch)
    out = method.model(x)
    merged = method.merged_model().eval()
    model_name, kwargs = TINY_MODELS[arch]
    fresh = timm.create_model(model_name, pretrained=False, num_classes=5, **kwargs).eval()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    assert ((fresh(x) - out).abs().max() / out.abs().max()) < 1e-4
    # The method itself is still usable after producing the merged copy.
    torch.testing.assert_close(method.model(x), out)


@pytest.mark.parametrize("name", METHODS)
def test_parameter_counts(name):
    model = make_tiny("vit")
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.get_classifier().parameters())
    method = build_method(model, MethodConfig(name=name, adapter=KarstConfig(stack_dim=8, rank=4)))
    counts = method.param_count()
    trainable = sum(p.numel() for p in method.model.parameters() if p.requires_grad)
    assert counts.trainable == trainable and counts.head == head
    if name == "probe":
        assert counts.adapter == 0 and counts.frozen == total - head
    elif name == "full":
        assert counts.frozen == 0 and counts.adapter == total - head
    else:
        assert 0 < counts.adapter < total // 5 and counts.frozen == total - head


@pytest.mark.parametrize("name", ["lora", "lokr"])
def test_peft_adapts_the_same_layers_as_karst(name):
    method = build_method(make_tiny("vit"), MethodConfig(name=name, adapter=KarstConfig(rank=4)))
    adapted = set()
    for n, p in method.model.named_parameters():
        if p.requires_grad and "head" not in n:
            parts = n.removeprefix("base_model.model.").split(".")
            adapted.add(".".join(parts[: next(i for i, s in enumerate(parts) if s.startswith(name))]))
    expected = {f"blocks.{b}.{l}" for b in range(2) for l in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert adapted == expected  # never patch_embed.proj


@pytest.mark.parametrize("name", ["karst", "lora", "lokr", "full"])
def test_adapter_state_round_trip(name):
    cfg = MethodConfig(name=name, adapter=KarstConfig(stack_dim=8, rank=4))
    src = build_method(make_tiny("vit"), cfg)
    randomise_adapters(src.model, seed=5)
    state = src.adapter_state_dict()
    dst = build_method(make_tiny("vit"), cfg)
    dst.load_adapter_state_dict(state)
    x = tiny_input("vit")
    src.model.eval(), dst.model.eval()
    torch.testing.assert_close(dst.model(x), src.model(x), rtol=0, atol=0)


def test_adapter_state_refuses_other_method():
    state = build_method(make_tiny("vit"), MethodConfig(name="lora", adapter=KarstConfig(rank=4))).adapter_state_dict()
    karst = build_method(make_tiny("vit"), MethodConfig(name="karst", adapter=KarstConfig(rank=4)))
    with pytest.raises(RunError, match="do not fit this karst model"):
        karst.load_adapter_state_dict(state)


@pytest.mark.parametrize(
    "cfg,match",
    [
        (MethodConfig(name="karst", adapter=KarstConfig(stack_dim=5)), "m=5 does not divide"),
        (MethodConfig(name="karst", adapter=KarstConfig(rank=40)), "rank r=40"),
        (
            MethodConfig(name="lora", adapter=KarstConfig(rank=100)),
            r"rank r=100 exceeds the smallest targeted layer dimension 64",
        ),
        (MethodConfig(name="lora", adapter=KarstConfig(target_modules=("nothing",))), "match no nn.Linear"),
    ],
)
def test_check_settings_errors(cfg, match):
    model = make_tiny("vit")
    with pytest.raises(ConfigError, match=match):
        check_settings(model, cfg)


def test_method_config_validation():
    with pytest.raises(ConfigError, match="method='adapterX'"):
        MethodConfig(name="adapterX")
    with pytest.raises(ConfigError, match="lora_alpha"):
        MethodConfig(lora_alpha=0)
