"""Fused autograd function for the KARST training path.

``y = (1 + s1) ⊙ (W0 x + b0 + ΔW x) + s2`` with ``ΔW = Σ_i C_i ⊗ (A_i B_i)`` is computed without
ever building ΔW (d_out × d_in). Viewing a token ``x`` (d_in) as ``X`` (m × k, k = d_in/m, row-major),
``(C ⊗ D) x = vec(C X Dᵀ)``; with ``D = A B`` and the N kernels stacked along the rank axis:

    U = X Bᵀ        (m × N·r)    "down": each row of X through every B_i
    V = C · U       (m × N·r)    mix the m rows, kernel by kernel
    Y = V Aᵀ        (m × d_out/m) "up": summing over the stacked rank axis sums the kernels

Why a hand-written backward: autograd would keep U, V and the pre-scaling output z for the
backward pass. U and V are cheap to recompute from X (a few % of the layer's FLOPs), and z can be
recovered from the output y as z = (y - s2) / (1 + s1). So the backward only needs the layer input x
(which LoRA keeps too: a frozen ``F.linear`` keeps nothing, the adapter needs x for ∂L/∂B) and the
output y, which the next op keeps anyway after qkv (attention's q, k, v) and fc1 (GELU). After proj
and fc2 (residual adds) y is the one extra: measured on vit_small, 1.06× LoRA's peak memory with
channel re-scaling, 0.97× without (benchmarks/RESULTS.md); ``recompute_output`` trades it for FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["KronRescaleFunction", "kron_delta", "kron_apply"]


def _flat_B(B: torch.Tensor) -> torch.Tensor:
    # (N, r, k) -> (k, N·r): one matmul for all kernels' down-projections.
    n, r, k = B.shape
    return B.permute(2, 0, 1).reshape(k, n * r)


def _flat_A(A: torch.Tensor) -> torch.Tensor:
    # (N, p, r) -> (N·r, p): one matmul for all kernels' up-projections, summing over kernels.
    n, p, r = A.shape
    return A.permute(0, 2, 1).reshape(n * r, p)


def _down_mix(x2: torch.Tensor, C: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U = X Bᵀ and V = C U for flattened tokens x2 (T, d_in). Returns U, V as (T, m, N, r)."""
    n, m, _ = C.shape
    r, k = B.shape[1], B.shape[2]
    t = x2.shape[0]
    U = (x2.reshape(t * m, k) @ _flat_B(B)).view(t, m, n, r)
    V = torch.einsum("nab,tbnj->tanj", C, U)
    return U, V


def kron_apply(x: torch.Tensor, C: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """ΔW x for any leading shape of ``x`` (..., d_in), differentiable by plain autograd."""
    n, m, _ = C.shape
    p = A.shape[1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    _, V = _down_mix(x2, C, B)
    Y = V.reshape(-1, n * A.shape[2]) @ _flat_A(A)  # (T·m, p)
    return Y.view(*lead, m * p)


def kron_delta(C: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """ΔW = Σ_i C_i ⊗ (A_i B_i) as a dense (d_out × d_in) matrix (for merge and inspection)."""
    n, m, _ = C.shape
    D = A @ B  # (N, p, k)
    p, k = D.shape[1], D.shape[2]
    return torch.einsum("nab,npq->apbq", C, D).reshape(m * p, m * k)


def _pre_rescale(x2: torch.Tensor, weight, bias, C: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """z = W0 x + b0 + ΔW x for tokens x2 (T, d_in), as a fresh (T, d_out) tensor."""
    n, r = A.shape[0], A.shape[2]
    _, V = _down_mix(x2, C, B)
    z = F.linear(x2, weight, bias)
    # ΔW x accumulates into z inside the up-projection GEMM (no (T, d_out) temporary).
    # In-place ops are not autocast: cast to z's dtype (bf16 under autocast) as matmul would.
    z.view(-1, A.shape[1]).addmm_(V.reshape(-1, n * r).to(z.dtype), _flat_A(A).to(z.dtype))
    return z


class KronRescaleFunction(torch.autograd.Function):
    """y = scale ⊙ (x W0ᵀ + b0 + ΔW x) + shift, saving only x and y for the backward pass.

    ``s1``/``s2`` may be None (no re-scaling), shape (1,) (scalar) or (d_out,) (channel-wise).
    W0 and b0 must be frozen (no gradient is returned for them).

    What is kept for backward, per token: x (d_in) — also what LoRA keeps — and, with re-scaling,
    y (d_out), from which z = (y - s2) / (1 + s1) gives ∂L/∂s1. y costs nothing extra when the
    next op saves it too (GELU after fc1, attention's q/k/v after qkv); after proj and fc2 (a
    residual add, which saves nothing) it is the price of training s1. A frozen ``F.linear`` saves
    no activation at all, so x is kept only for the adapter (∂L/∂B). The low-rank intermediates
    U, V (m·N·r per token) are recomputed from x in backward: a few % of the layer's FLOPs.

    ``recompute_output=True`` (optional last argument) keeps only x and recomputes z in backward
    with the forward's own ops (the very values the forward scaled): one more frozen GEMM
    for this layer in exchange for d_out values per token. Worth it only where nothing downstream
    saves y anyway (proj and fc2 in a ViT block, whose outputs go into a residual add).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, C, A, B, s1, s2, recompute_output=False):  # noqa: D401
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # (T, d_in): a view unless x is non-contiguous
        z = _pre_rescale(x2, weight, bias, C, A, B)
        # Save x itself, not x2: if x2 is a copy of a non-contiguous x, saving it would keep a
        # second (T, d_in) tensor alive next to the one the caller holds.
        ctx.recompute = bool(recompute_output) and s1 is not None
        if s1 is not None:
            y = torch.addcmul(s2.to(z.dtype), z, (1.0 + s1).to(z.dtype))
            ctx.save_for_backward(x, None if ctx.recompute else y, C, A, B, s1, s2, weight, bias)
        else:
            y = z
            ctx.save_for_backward(x, None, C, A, B, None, None, weight, None)
        return y.view(*lead, y.shape[-1])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x, y, C, A, B, s1, s2, weight, bias = ctx.saved_tensors
        n, m, _ = C.shape
        p, r = A.shape[1], A.shape[2]
        k = B.shape[2]
        g = grad_out.reshape(-1, grad_out.shape[-1])  # (T, d_out)
        t = g.shape[0]
        grad_s1 = grad_s2 = None
        if s1 is not None:
            scale = 1.0 + s1
            if ctx.needs_input_grad[6]:
                # ∂L/∂s1 = Σ_t g ⊙ z. Either recompute z exactly as the forward did, or recover it
                # from the saved output, z = (y - s2) / (1 + s1), with the division moved after the
                # sum over tokens (one (d_out,) division instead of T·d_out). Products run in place:
                # one (T, d_out) temporary.
                if ctx.recompute:
                    z = _pre_rescale(x.reshape(t, -1), weight, bias, C, A, B)
                    gz = z.to(torch.promote_types(z.dtype, s1.dtype)).mul_(g).sum(0)
                    gz = gz.sum().reshape(1) if s1.numel() == 1 else gz
                    grad_s1 = gz
                else:
                    gz = torch.sub(y, s2).mul_(g).sum(0)
                    gz = gz.sum().reshape(1) if s1.numel() == 1 else gz
                    grad_s1 = gz / scale
            if ctx.needs_input_grad[7]:
                grad_s2 = g.sum(0)
                grad_s2 = grad_s2.sum().reshape(1) if s2.numel() == 1 else grad_s2
            g = g * scale
        dt = g.dtype
        x2 = x.reshape(t, m * k).to(dt)
        C_, A_, B_ = C.to(dt), A.to(dt), B.to(dt)
        # Recompute the cheap low-rank intermediates (T·m, N·r) rather than storing them.
        U, V = _down_mix(x2, C_, B_)
        gY = g.reshape(t * m, p)  # (T·m, d_out/m)
        grad_A = None
        if ctx.needs_input_grad[4]:
            grad_A = (V.reshape(t * m, n * r).t() @ gY).view(n, r, p).transpose(1, 2)
        gV = (gY @ _flat_A(A_).t()).view(t, m, n, r)
        grad_C = torch.einsum("tanj,tbnj->nab", gV, U) if ctx.needs_input_grad[3] else None
        gU = torch.einsum("nab,tanj->tbnj", C_, gV).reshape(t * m, n * r)
        grad_B = (gU.t() @ x2.reshape(t * m, k)).view(n, r, k) if ctx.needs_input_grad[5] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            # W0ᵀ g and the adapter's Bᵀ gU accumulate into one buffer (no (T, d_in) temporary).
            grad_x = g @ weight.to(dt)
            grad_x.view(t * m, k).addmm_(gU.to(grad_x.dtype), _flat_B(B_).t().to(grad_x.dtype))
            grad_x = grad_x.view(x.shape)

        def cast(grad, ref):
            return None if grad is None else grad.to(ref.dtype)

        return (
            grad_x,
            None,
            None,
            cast(grad_C, C),
            cast(grad_A, A),
            cast(grad_B, B),
            cast(grad_s1, s1) if s1 is not None else None,
            cast(grad_s2, s2) if s2 is not None else None,
            None,
        )
