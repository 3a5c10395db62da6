"""KarstLinear: the formula, zero init, merge exactness and errors (its fused path: test_kron.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import perturbed_layer, randomise_adapters

from karst import ConfigError, KarstConfig, KarstLinear, RunError


def test_zero_init_is_identity():
    base = torch.nn.Linear(32, 48)
    layer = KarstLinear(base, KarstConfig(rank=4))
    x = torch.randn(4, 7, 32)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.delta_weight()) == 0
    assert layer.C.abs().sum() > 0 and layer.A.abs().sum() > 0  # Gaussian, not zero


@pytest.mark.parametrize("rescale,alpha", [("channel", None), ("scalar", None), ("none", None), ("channel", 8.0)])
def test_forward_matches_paper_formula(rescale, alpha):
    layer = perturbed_layer(rescale=rescale, alpha=alpha)
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    # Build ΔW literally with torch.kron, independent of the fast path; α/r scales it (α=8, r=4: 2).
    scale = 1.0 if alpha is None else alpha / layer.rank
    delta = scale * sum(torch.kron(layer.C[i], layer.A[i] @ layer.B[i]) for i in range(layer.n_kernels))
    z = x @ (layer.base.weight + delta).T + layer.base.bias
    expected = z if rescale == "none" else (1 + layer.s1) * z + layer.s2
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.delta_weight(), delta, rtol=1e-12, atol=1e-12)
    base, pre, out = layer.forward_parts(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(pre, z)
    torch.testing.assert_close(base, layer.base(x))


def test_base_stays_frozen_and_gets_no_grad():
    layer = perturbed_layer(dtype=torch.float32)
    layer(torch.randn(4, 32)).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert all(p.grad is not None for p in (layer.C, layer.A, layer.B, layer.s1, layer.s2))


@pytest.mark.parametrize("rescale,alpha", [("channel", None), ("scalar", None), ("none", None), ("channel", 16.0)])
def test_merged_linear_is_exact(rescale, alpha):
    layer = perturbed_layer(rescale=rescale, dtype=torch.float32, alpha=alpha)
    x = torch.randn(10, 32)
    merged = layer.merged_linear()
    assert type(merged) is torch.nn.Linear
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-4, atol=1e-5)


def test_merge_refuses_non_finite():
    layer = perturbed_layer(dtype=torch.float32)
    with torch.no_grad():
        layer.A[0, 0, 0] = float("nan")
    with pytest.raises(RunError, match="NaN or Inf"):
        layer.merged_linear()


def test_merge_refuses_shift_without_bias():
    layer = perturbed_layer(dtype=torch.float32, bias=False)
    with pytest.raises(ConfigError, match="no bias"):
        layer.merged_linear()
    with torch.no_grad():
        layer.s2.zero_()
    merged = layer.merged_linear()
    x = torch.randn(3, 32)
    assert merged.bias is None
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n,m,r,rescale", [(2, 8, 8, "channel"), (1, 4, 2, "scalar"), (3, 2, 4, "none")])
def test_parameter_formula(n, m, r, rescale):
    d_in, d_out = 64, 192
    layer = KarstLinear(torch.nn.Linear(d_in, d_out), KarstConfig(n_kernels=n, stack_dim=m, rank=r, rescale=rescale))
    rescale_params = {"channel": 2 * d_out, "scalar": 2, "none": 0}[rescale]
    assert layer.num_adapter_params() == n * (m * m + r * (d_out + d_in) // m) + rescale_params
    assert layer.C.shape == (n, m, m) and layer.A.shape == (n, d_out // m, r) and layer.B.shape == (n, r, d_in // m)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(stack_dim=7), r"m=7 does not divide .*try m in 1, 2, 4, 8"),
        (dict(rank=5), r"rank r=5 exceeds .* use r <= 4"),
    ],
)
def test_layer_errors_name_the_fix(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        KarstLinear(torch.nn.Linear(32, 48), KarstConfig(**kwargs), name="blocks.0.attn.qkv")


def test_recompute_output_only_where_configured_and_exact():
    cfg = KarstConfig(rank=4)  # default: recompute proj's output in backward, keep the others'
    proj = KarstLinear(torch.nn.Linear(32, 48).double(), cfg, name="blocks.0.attn.proj")
    qkv = KarstLinear(torch.nn.Linear(32, 48).double(), cfg, name="blocks.0.attn.qkv")
    assert proj.recompute_output and not qkv.recompute_output
    randomise_adapters(proj, std=0.3)
    x = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)
    params = [x, proj.C, proj.A, proj.B, proj.s1, proj.s2]
    g = torch.randn(5, 48, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(proj(x), params, g), torch.autograd.grad(proj._forward_autograd(x), params, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
