"""KarstLinear: the formula, zero init, the fused backward and merge exactness."""

from __future__ import annotations

import pytest
import torch

from karst import ConfigError, KarstConfig, KarstLinear
from karst._kron import kron_apply, kron_delta


def _perturbed(d_in=32, d_out=48, rescale="channel", dtype=torch.float64, seed=0, bias=True, **kw):
    kw.setdefault("rank", 4)  # the 48×32 layer's Kronecker block is 6×4 for m=8
    torch.manual_seed(seed)
    layer = KarstLinear(torch.nn.Linear(d_in, d_out, bias=bias).to(dtype), KarstConfig(rescale=rescale, **kw))
    with torch.no_grad():
        for p in (layer.C, layer.A, layer.B, layer.s1, layer.s2):
            if p is not None:
                p.normal_(0, 0.3)
    return layer


def test_zero_init_is_identity():
    base = torch.nn.Linear(32, 48)
    layer = KarstLinear(base, KarstConfig(rank=4))
    x = torch.randn(4, 7, 32)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.delta_weight()) == 0
    assert layer.C.abs().sum() > 0 and layer.A.abs().sum() > 0  # Gaussian, not zero


@pytest.mark.parametrize("rescale", ["channel", "scalar", "none"])
def test_forward_matches_paper_formula(rescale):
    layer = _perturbed(rescale=rescale)
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    # Build ΔW literally with torch.kron, independent of the fast path.
    delta = sum(torch.kron(layer.C[i], layer.A[i] @ layer.B[i]) for i in range(layer.n_kernels))
    z = x @ (layer.base.weight + delta).T + layer.base.bias
    expected = z if rescale == "none" else (1 + layer.s1) * z + layer.s2
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.delta_weight(), delta, rtol=1e-12, atol=1e-12)
    base, pre, out = layer.forward_parts(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(pre, z)
    torch.testing.assert_close(base, layer.base(x))


@pytest.mark.parametrize("rescale", ["channel", "scalar", "none"])
@pytest.mark.parametrize("shape", [(6, 32), (2, 3, 32), (2, 2, 2, 32)])
def test_fused_backward_equals_autograd(rescale, shape):
    layer = _perturbed(rescale=rescale)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = [p for p in (layer.C, layer.A, layer.B, layer.s1, layer.s2) if p is not None]
    g = torch.randn(*shape[:-1], 48, dtype=torch.float64)
    fused = torch.autograd.grad(layer(x), [x, *params], g)
    plain = torch.autograd.grad(layer._forward_autograd(x), [x, *params], g)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_fused_path_passes_gradcheck():
    layer = _perturbed(d_in=16, d_out=16, stack_dim=4, rank=2, n_kernels=2)
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)

    def f(x, C, A, B, s1, s2):
        from karst._kron import KronRescaleFunction

        return KronRescaleFunction.apply(x, layer.base.weight, layer.base.bias, C, A, B, s1, s2)

    assert torch.autograd.gradcheck(f, (x, layer.C, layer.A, layer.B, layer.s1, layer.s2))


def test_base_stays_frozen_and_gets_no_grad():
    layer = _perturbed(dtype=torch.float32)
    layer(torch.randn(4, 32)).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert all(p.grad is not None for p in (layer.C, layer.A, layer.B, layer.s1, layer.s2))


@pytest.mark.parametrize("rescale", ["channel", "scalar", "none"])
def test_merged_linear_is_exact(rescale):
    layer = _perturbed(rescale=rescale, dtype=torch.float32)
    x = torch.randn(10, 32)
    merged = layer.merged_linear()
    assert type(merged) is torch.nn.Linear
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-4, atol=1e-5)


def test_merge_refuses_non_finite():
    layer = _perturbed(dtype=torch.float32)
    with torch.no_grad():
        layer.A[0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN or Inf"):
        layer.merged_linear()


def test_merge_refuses_shift_without_bias():
    layer = _perturbed(dtype=torch.float32, bias=False)
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


def test_kron_helpers_agree():
    torch.manual_seed(0)
    C, A, B = torch.randn(2, 4, 4), torch.randn(2, 6, 3), torch.randn(2, 3, 5)
    x = torch.randn(7, 20)
    torch.testing.assert_close(kron_apply(x, C, A, B), x @ kron_delta(C, A, B).T, rtol=1e-5, atol=1e-5)


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
    with torch.no_grad():
        proj.B.normal_(0, 0.3), proj.s1.normal_(0, 0.3), proj.s2.normal_(0, 0.3)
    x = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)
    params = [x, proj.C, proj.A, proj.B, proj.s1, proj.s2]
    g = torch.randn(5, 48, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(proj(x), params, g), torch.autograd.grad(proj._forward_autograd(x), params, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "m,r,lead,s",
    [
        (16, 2, (3,), 1),  # m >= 16: one m-block per mixing row
        (8, 1, (5,), 1),  # r·T = 5 is odd: no s > 1 divides it
        (8, 4, (2, 3), 2),
        (4, 3, (5,), 3),  # s = 4 would want r·T divisible by 4; 3 divides 15
        (2, 2, (7,), 7),
    ],
)
@pytest.mark.parametrize("recompute", [False, True])
def test_fused_mixing_groups_equal_autograd(m, r, lead, s, recompute):
    # The fused path mixes s m-blocks per GEMM row with I_s ⊗ C_iᵀ (s·m >= 16 where s divides r·T):
    # every grouping gives autograd's values and gradients.
    from karst._kron import KronRescaleFunction, _mix_group

    t = 1
    for d in lead:
        t *= d
    assert _mix_group(m, r * t) == s
    layer = _perturbed(stack_dim=m, rank=r)
    x = torch.randn(*lead, 32, dtype=torch.float64, requires_grad=True)
    params = [layer.C, layer.A, layer.B, layer.s1, layer.s2]
    base = layer.base
    out = KronRescaleFunction.apply(x, base.weight, base.bias, *params, recompute)
    expected = layer._forward_autograd(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [x, *params], g), torch.autograd.grad(expected, [x, *params], g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_fused_path_with_frozen_scale():
    # Only s1 frozen: no ∂L/∂s1 product is formed, g·(1+s1) gets its own buffer.
    layer = _perturbed()
    layer.s1.requires_grad_(False)
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    params = [x, layer.C, layer.A, layer.B, layer.s2]
    g = torch.randn(2, 5, 48, dtype=torch.float64)
    fused = torch.autograd.grad(layer(x), params, g)
    plain = torch.autograd.grad(layer._forward_autograd(x), params, g)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("order_min", [1, 10**9])
@pytest.mark.parametrize("recompute", [False, True])
def test_fused_gemm_order_equals_autograd(monkeypatch, order_min, recompute):
    # small @ bigᵀ runs as (big @ smallᵀ)ᵀ for wide operands (_T_ORDER_MIN): both orders give
    # autograd's values and gradients, for the down-projection and for ∂L/∂Vᵀ.
    import karst._kron as kron

    monkeypatch.setattr(kron, "_T_ORDER_MIN", order_min)
    layer = _perturbed()
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    params = [layer.C, layer.A, layer.B, layer.s1, layer.s2]
    base = layer.base
    out = kron.KronRescaleFunction.apply(x, base.weight, base.bias, *params, recompute)
    expected = layer._forward_autograd(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [x, *params], g), torch.autograd.grad(expected, [x, *params], g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
