"""Fused autograd function for the KARST training path.

``y = (1 + s1) ⊙ (W0 x + b0 + ΔW x) + s2`` with ``ΔW = Σ_i C_i ⊗ (A_i B_i)`` is computed without
ever building ΔW (d_out × d_in). Viewing a token ``x`` (d_in) as ``X`` (m × k, k = d_in/m, row-major),
``(C ⊗ D) x = vec(C X Dᵀ)``; with ``D = A B`` and the N kernels stacked along the rank axis:

    U = X Bᵀ        (m × N·r)    "down": each row of X through every B_i
    V = C · U       (m × N·r)    mix the m rows, kernel by kernel
    Y = V Aᵀ        (m × d_out/m) "up": summing over the stacked rank axis sums the kernels

The code holds U and V transposed, all T tokens at once: (N·r, T·m), see ``_down_mix_t`` for why.

Why a hand-written backward: autograd would keep U, V and the pre-scaling output z for the
backward pass. U and V are cheap to recompute from X (a few % of the layer's FLOPs), and z can be
recovered from the output y as z = (y - s2) / (1 + s1). So the backward only needs the layer input x
(which LoRA keeps too: a frozen ``F.linear`` keeps nothing, the adapter needs x for ∂L/∂B) and the
output y, which the next op keeps anyway after qkv (attention's q, k, v) and fc1 (GELU). After proj
and fc2 (residual adds) y is the one extra, which keeps peak memory close to LoRA's (figures in
benchmarks/RESULTS.md); ``recompute_output`` trades it for FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["KronRescaleFunction", "kron_delta", "kron_apply"]


def _flat_A(A: torch.Tensor) -> torch.Tensor:
    # (N, p, r) -> (N·r, p): one matmul for all kernels' up-projections, summing over kernels.
    # A copy, but of the parameter (N·p·r values), not of activations.
    n, p, r = A.shape
    return A.permute(0, 2, 1).reshape(n * r, p)


# CPU BLAS runs a tall GEMM with 8 or fewer columns several times slower than one with 16 (figures in
# benchmarks/RESULTS.md), so the mixing by C_i takes s consecutive m-blocks per GEMM row, with
# s·m >= _MIX_WIDTH (see _mix_group).
_MIX_WIDTH = 16


def _mix_group(m: int, rows: int) -> int:
    """s: how many m-blocks one mixing row holds, the smallest with s·m >= _MIX_WIDTH that divides ``rows``
    (the number of m-blocks per kernel, r·T); 1 if none does."""
    s = max(1, -(-_MIX_WIDTH // m))
    while rows % s:
        s -= 1
    return s


def _mix_matrix(C: torch.Tensor, s: int) -> torch.Tensor:
    """(N, s·m, s·m) = I_s ⊗ C_iᵀ: right-multiplying a row of s m-blocks mixes each block by C_i."""
    n, m, _ = C.shape
    if s == 1:
        return C.transpose(1, 2)
    mix = C.new_zeros(n, s, m, s, m)
    mix.diagonal(dim1=1, dim2=3).copy_(C.transpose(1, 2).unsqueeze(-1))  # block (u, u) = C_iᵀ
    return mix.view(n, s * m, s * m)


# CPU BLAS runs the GEMM small (R, c) @ big (T·m, c)ᵀ, R = N·r, slower than big @ smallᵀ plus a
# transpose once c is this wide, and faster below it (figures in benchmarks/RESULTS.md). Used for the
# down-projection (c = d_in/m) and ∂L/∂Vᵀ (c = d_out/m).
_T_ORDER_MIN = 192


def _mm_t(small: torch.Tensor, big: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """small @ bigᵀ as a contiguous (R, T·m) tensor (written into ``out`` if given)."""
    if big.shape[1] < _T_ORDER_MIN:
        return torch.mm(small, big.t(), out=out)
    prod = big @ small.t()  # (T·m, R)
    if out is None:
        return prod.t().contiguous()
    return out.copy_(prod.t())


def _down_mix_t(x2: torch.Tensor, mix: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uᵀ and Vᵀ for tokens x2 (T, d_in), both (N·r, T·m), rows (kernel, rank), columns (token, row of X).

    Why transposed: with the m rows of every token in the *last* axis, mixing them with C_i is one
    batched GEMM over the N kernels, (r·T, m) @ C_iᵀ (s blocks at a time: (r·T/s, s·m) @ (I_s ⊗ C_iᵀ)),
    and every other product in forward and backward is a plain GEMM whose operands are views (GEMMs
    take transposed operands without copying; for wide d_in/m the down-projection is the one
    exception, see ``_mm_t``). With U laid out (T, m, N, r), as the GEMM X Bᵀ
    produces it, the mixing needs permute copies of U and V (and of ∂V, ∂U in backward).
    ``mix`` is ``_mix_matrix(C, s)``.
    """
    n, w, _ = mix.shape
    k = B.shape[2]
    Ut = _mm_t(B.reshape(-1, k), x2.reshape(-1, k))  # (N·r, T·m): B is (N, r, k), a view
    Vt = torch.bmm(Ut.view(n, -1, w), mix)  # V_i = C_i U_i, per kernel: (N, r·T/s, s·m)
    return Ut, Vt.view(Ut.shape)


def kron_apply(x: torch.Tensor, C: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """ΔW x for any leading shape of ``x`` (..., d_in), differentiable by plain autograd.

    Written independently of the fused path (einsum in the paper's index order), so that the tests
    comparing the two check one against the other.
    """
    n, m, _ = C.shape
    p, k = A.shape[1], B.shape[2]
    X = x.reshape(*x.shape[:-1], m, k)  # (..., m, k)
    U = torch.einsum("...bq,njq->...bnj", X, B)  # (..., m, N, r)
    V = torch.einsum("nab,...bnj->...anj", C, U)  # (..., m, N, r)
    Y = torch.einsum("...anj,npj->...ap", V, A)  # (..., m, d_out/m)
    return Y.reshape(*x.shape[:-1], m * p)


def kron_delta(C: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """ΔW = Σ_i C_i ⊗ (A_i B_i) as a dense (d_out × d_in) matrix (for merge and inspection)."""
    n, m, _ = C.shape
    D = A @ B  # (N, p, k)
    p, k = D.shape[1], D.shape[2]
    return torch.einsum("nab,npq->apbq", C, D).reshape(m * p, m * k)


def _pre_rescale(x2: torch.Tensor, weight, bias, Vt: torch.Tensor, A_flat: torch.Tensor) -> torch.Tensor:
    """z = W0 x + b0 + ΔW x for tokens x2 (T, d_in) and their Vᵀ, as a fresh (T, d_out) tensor."""
    z = F.linear(x2, weight, bias)
    # ΔW x accumulates into z inside the up-projection GEMM (no (T, d_out) temporary):
    # z viewed (T·m, d_out/m) += V (T·m, N·r) @ A_flat. In-place ops are not autocast: cast to z's
    # dtype (bf16 under autocast) as matmul would; .to() is free when the dtypes already match.
    z.view(-1, A_flat.shape[1]).addmm_(Vt.t().to(z.dtype), A_flat.to(z.dtype))
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
        mix = _mix_matrix(C, _mix_group(C.shape[1], B.shape[1] * x2.shape[0]))
        A_flat = _flat_A(A)
        z = _pre_rescale(x2, weight, bias, _down_mix_t(x2, mix, B)[1], A_flat)
        # Built once per step and kept (N·(s·m)² + N·r·d_out/m values) rather than rebuilt in backward.
        ctx.mix, ctx.A_flat = mix, A_flat
        # Save x itself, not x2: if x2 is a copy of a non-contiguous x, saving it would keep a
        # second (T, d_in) tensor alive next to the one the caller holds.
        ctx.recompute = bool(recompute_output) and s1 is not None
        if s1 is not None:
            # In place: z is a fresh tensor nothing else holds (a new (T, d_out) buffer costs page
            # faults on the CPU, more than the pass itself).
            y = torch.addcmul(s2.to(z.dtype), z, (1.0 + s1).to(z.dtype), out=z)
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
        x2 = x.reshape(t, m * k)
        # Recompute the cheap low-rank intermediates (N·r, T·m) rather than storing them, once, with
        # the forward's own ops (so that a recomputed z is exactly the one the forward scaled).
        mix, A_flat = ctx.mix, ctx.A_flat
        s = mix.shape[1] // m
        Ut, Vt = _down_mix_t(x2, mix, B)
        grad_s1 = grad_s2 = None
        if s1 is not None:
            scale = 1.0 + s1
            tmp = None
            if ctx.needs_input_grad[6]:
                # ∂L/∂s1 = Σ_t g ⊙ z. Either recompute z exactly as the forward did, or recover it
                # from the saved output, z = (y - s2) / (1 + s1), with the division moved after the
                # sum over tokens (one (d_out,) division instead of T·d_out). Products run in place
                # in one (T, d_out) temporary, which then takes g·(1 + s1) below.
                if ctx.recompute:
                    tmp = _pre_rescale(x2, weight, bias, Vt, A_flat)
                    tmp = tmp.to(torch.promote_types(tmp.dtype, s1.dtype))
                    gz = tmp.mul_(g).sum(0)
                    gz = gz.sum().reshape(1) if s1.numel() == 1 else gz
                    grad_s1 = gz
                else:
                    tmp = torch.sub(y, s2)
                    gz = tmp.mul_(g).sum(0)
                    gz = gz.sum().reshape(1) if s1.numel() == 1 else gz
                    grad_s1 = gz / scale
            if ctx.needs_input_grad[7]:
                grad_s2 = g.sum(0)
                grad_s2 = grad_s2.sum().reshape(1) if s2.numel() == 1 else grad_s2
            if tmp is not None and tmp.dtype == torch.result_type(g, scale):
                g = torch.mul(g, scale, out=tmp)  # reuse: a fresh (T, d_out) buffer costs page faults
            else:
                g = g * scale
        # Everything below is in g's dtype; .to() returns the tensor itself when it already is.
        dt = g.dtype
        x2, Ut, Vt, B_ = x2.to(dt), Ut.to(dt), Vt.to(dt), B.to(dt)
        gY = g.reshape(t * m, p)  # (T·m, d_out/m)
        grad_A = None
        if ctx.needs_input_grad[4]:
            grad_A = (Vt @ gY).view(n, r, p).transpose(1, 2)  # (N, d_out/m, r)
        # ∂L/∂Vᵀ and ∂L/∂Uᵀ (N·r, T·m) go into the buffers of Vᵀ and Uᵀ once these are used: like a
        # fresh (T, d_out) buffer, a fresh one here would cost page faults on the CPU.
        gVt = _mm_t(A_flat.to(dt), gY, out=Vt)
        grad_C = None
        if ctx.needs_input_grad[3]:
            # G = ∂L/∂(I_s ⊗ C_i), (N, s·m, s·m): C_i's gradient is the sum of its s diagonal blocks.
            G = torch.bmm(gVt.view(n, -1, s * m).transpose(1, 2), Ut.view(n, -1, s * m))
            grad_C = G.view(n, s, m, s, m).diagonal(dim1=1, dim2=3).sum(-1) if s > 1 else G
        gUt = torch.bmm(gVt.view(n, -1, s * m), mix.to(dt).transpose(1, 2), out=Ut.view(n, -1, s * m))
        gUt = gUt.view(Ut.shape)
        grad_B = (gUt @ x2.reshape(t * m, k)).view(n, r, k) if ctx.needs_input_grad[5] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            # W0ᵀ g and the adapter's Bᵀ gU accumulate into one buffer (no (T, d_in) temporary).
            grad_x = g @ weight.to(dt)
            grad_x.view(t * m, k).addmm_(gUt.t().to(grad_x.dtype), B_.reshape(n * r, k).to(grad_x.dtype))
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
