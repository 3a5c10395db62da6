"""The fused KARST path (karst/_kron.py): values and gradients equal autograd's for every layout,
dtype, grouping and GEMM order, and backward keeps only what it needs."""

from __future__ import annotations

import pytest
import torch
from helpers import perturbed_layer

from karst import KarstLinear
from karst._kron import KronRescaleFunction, _mix_group, kron_apply, kron_delta
from karst.bench import saved_tensor_bytes


def _layer(rescale: str, dtype: torch.dtype, d_in: int = 24, d_out: int = 36, bias: bool = True) -> KarstLinear:
    """A small layer with N=2, m=4, r=3: every block size differs."""
    return perturbed_layer(d_in, d_out, rescale, dtype, bias=bias, std=0.5, n_kernels=2, stack_dim=4, rank=3)


def _grads(layer: KarstLinear, x: torch.Tensor, fused: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x) if fused else layer._forward_autograd(x)
    weight = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view(out.shape)
    (out * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    grads["x"] = x.grad.clone()
    return out.detach(), grads


@pytest.mark.parametrize("rescale", ["channel", "scalar", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead", [(5,), (2, 3), (2, 3, 4)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_fused_path_matches_autograd(rescale, dtype, lead, contiguous):
    layer = _layer(rescale, dtype)
    torch.manual_seed(1)
    if contiguous:
        x = torch.randn(*lead, 24, dtype=dtype)
    else:  # a transposed view, as attention outputs are before their reshape
        x = torch.randn(24, *lead, dtype=dtype).movedim(0, -1)
        assert not x.is_contiguous()
    out_f, grads_f = _grads(layer, x, fused=True)
    out_a, grads_a = _grads(layer, x, fused=False)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_f, out_a, **tol)
    assert grads_f.keys() == grads_a.keys()
    for name in grads_a:
        assert grads_f[name].shape == grads_a[name].shape, name
        torch.testing.assert_close(grads_f[name], grads_a[name], **tol, msg=name)


def test_fused_path_without_bias_and_frozen_input():
    layer = _layer("channel", torch.float64, bias=False)
    x = torch.randn(3, 24, dtype=torch.float64)  # no grad wanted for x: only parameters get one
    out = layer(x)
    out.sum().backward()
    assert all(p.grad is not None for n, p in layer.named_parameters() if not n.startswith("base."))
    torch.testing.assert_close(out, layer._forward_autograd(x))


@pytest.mark.parametrize("rescale", ["channel", "none"])
def test_fused_path_saves_only_input_and_output(rescale):
    layer = _layer(rescale, torch.float32, d_in=64, d_out=128)
    x = torch.randn(50, 64, requires_grad=True)
    params = list(layer.parameters())
    saved, out = saved_tensor_bytes(lambda: layer(x), exclude=params)
    expected = x.numel() * 4 + (out.numel() * 4 if rescale != "none" else 0)
    assert saved == expected
    saved_autograd, _ = saved_tensor_bytes(lambda: layer._forward_autograd(x), exclude=params)
    assert saved_autograd > saved


@pytest.mark.parametrize("rescale", ["channel", "scalar"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_path_recompute_output(rescale, dtype):
    # The opt-in mode keeps only x and recomputes z in backward: same gradients, less saved.
    layer = _layer(rescale, dtype, d_in=24, d_out=36)
    torch.manual_seed(1)
    x = torch.randn(2, 5, 24, dtype=dtype)
    _, grads_a = _grads(layer, x, fused=False)
    params = [layer.C, layer.A, layer.B, layer.s1, layer.s2]
    xg = x.clone().requires_grad_(True)
    base = layer.base
    saved, out = saved_tensor_bytes(
        lambda: KronRescaleFunction.apply(xg, base.weight, base.bias, *params[:3], *params[3:], True),
        exclude=list(layer.parameters()),
    )
    assert saved == x.numel() * x.element_size()
    weight = torch.linspace(-1.0, 1.0, out.numel(), dtype=dtype).view(out.shape)
    grads = torch.autograd.grad((out * weight).sum(), [xg, *params])
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for name, grad in zip(["x", "C", "A", "B", "s1", "s2"], grads):
        torch.testing.assert_close(grad, grads_a[name], **tol, msg=name)


@pytest.mark.parametrize("rescale", ["channel", "none"])
def test_fused_path_under_bf16_autocast(rescale):
    # CUDA runs train under bf16 autocast; CPU autocast exercises the same mixed-dtype paths
    # (in-place GEMMs are not autocast, so the fused function must cast their operands itself).
    layer = _layer(rescale, torch.float32)
    x = torch.randn(2, 5, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, grads_f = _grads(layer, x, fused=True)
        out_a, grads_a = _grads(layer, x, fused=False)
    torch.testing.assert_close(out_f.float(), out_a.float(), rtol=0.05, atol=0.1)
    for name in grads_a:
        assert grads_f[name].dtype == grads_a[name].dtype, name
        torch.testing.assert_close(grads_f[name].float(), grads_a[name].float(), rtol=0.05, atol=0.2, msg=name)


@pytest.mark.parametrize("rescale,alpha", [("channel", None), ("scalar", None), ("none", None), ("channel", 2.0)])
@pytest.mark.parametrize("shape", [(6, 32), (2, 3, 32), (2, 2, 2, 32)])
def test_fused_backward_equals_autograd(rescale, alpha, shape):
    layer = perturbed_layer(rescale=rescale, alpha=alpha)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = [p for p in (layer.C, layer.A, layer.B, layer.s1, layer.s2) if p is not None]
    g = torch.randn(*shape[:-1], 48, dtype=torch.float64)
    fused = torch.autograd.grad(layer(x), [x, *params], g)
    plain = torch.autograd.grad(layer._forward_autograd(x), [x, *params], g)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_fused_path_passes_gradcheck():
    layer = perturbed_layer(d_in=16, d_out=16, stack_dim=4, rank=2, n_kernels=2)
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)

    def f(x, C, A, B, s1, s2):
        return KronRescaleFunction.apply(x, layer.base.weight, layer.base.bias, C, A, B, s1, s2)

    assert torch.autograd.gradcheck(f, (x, layer.C, layer.A, layer.B, layer.s1, layer.s2))


def test_fused_path_with_frozen_scale():
    # Only s1 frozen: no ∂L/∂s1 product is formed, g·(1+s1) gets its own buffer.
    layer = perturbed_layer()
    layer.s1.requires_grad_(False)
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    params = [x, layer.C, layer.A, layer.B, layer.s2]
    g = torch.randn(2, 5, 48, dtype=torch.float64)
    fused = torch.autograd.grad(layer(x), params, g)
    plain = torch.autograd.grad(layer._forward_autograd(x), params, g)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def _assert_fused_equals_autograd(layer, x: torch.Tensor, recompute: bool) -> None:
    """The fused function gives autograd's output and gradients (float64, tight tolerances)."""
    params = [layer.C, layer.A, layer.B, layer.s1, layer.s2]
    base = layer.base
    out = KronRescaleFunction.apply(x, base.weight, base.bias, *params, recompute)
    expected = layer._forward_autograd(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [x, *params], g), torch.autograd.grad(expected, [x, *params], g)):
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
    t = 1
    for d in lead:
        t *= d
    assert _mix_group(m, r * t) == s
    layer = perturbed_layer(stack_dim=m, rank=r)
    x = torch.randn(*lead, 32, dtype=torch.float64, requires_grad=True)
    _assert_fused_equals_autograd(layer, x, recompute)


@pytest.mark.parametrize("order_min", [1, 10**9])
@pytest.mark.parametrize("recompute", [False, True])
def test_fused_gemm_order_equals_autograd(monkeypatch, order_min, recompute):
    # small @ bigᵀ runs as (big @ smallᵀ)ᵀ for wide operands (_T_ORDER_MIN): both orders give
    # autograd's values and gradients, for the down-projection and for ∂L/∂Vᵀ.
    monkeypatch.setattr("karst._kron._T_ORDER_MIN", order_min)
    layer = perturbed_layer()
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    _assert_fused_equals_autograd(layer, x, recompute)


def test_kron_helpers_agree():
    torch.manual_seed(0)
    C, A, B = torch.randn(2, 4, 4), torch.randn(2, 6, 3), torch.randn(2, 3, 5)
    x = torch.randn(7, 20)
    torch.testing.assert_close(kron_apply(x, C, A, B), x @ kron_delta(C, A, B).T, rtol=1e-5, atol=1e-5)
