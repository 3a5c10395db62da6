"""KarstLinear: a frozen linear layer plus a sum of Kronecker products and channel re-scaling.

KARST (Kronecker Adaptation with Re-scaling Transmission), arXiv 2502.06779 (ICASSP 2025):

    ΔW = (α/r) Σ_{i=1..N} C_i ⊗ (A_i B_i)   C_i: m×m   A_i: (d_out/m)×r   B_i: r×(d_in/m)
    y  = (1 + s1) ⊙ (W0 x + b0 + ΔW x) + s2

The scale α/r is 1 unless ``KarstConfig.alpha`` is set (the authors' code scales ΔW like LoRA).

``B``, ``s1`` and ``s2`` start at zero, so a freshly adapted model computes exactly what the
pre-trained one did. After training, ``merge()`` folds everything into a plain ``nn.Linear``:
``W' = diag(1+s1)(W0 + ΔW)``, ``b' = (1+s1) ⊙ b0 + s2``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._kron import KronRescaleFunction, kron_apply, kron_delta
from .config import KarstConfig
from .errors import ConfigError, RunError

__all__ = ["KarstLinear", "valid_stack_dims"]


def valid_stack_dims(*dims: int, limit: int = 64) -> list[int]:
    """Values of m up to ``limit`` that divide every dimension in ``dims``."""
    return [m for m in range(1, limit + 1) if all(d % m == 0 for d in dims)]


class KarstLinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` (``base``) with the KARST update.

    Attributes (paper notation):
        base: the frozen pre-trained layer (W0, b0).
        C: (N, m, m) Kronecker "stacking" kernels.
        A: (N, d_out/m, r) and B: (N, r, d_in/m): the low-rank factors of each block D_i = A_i B_i.
        s1, s2: re-scaling and shift, (d_out,) for ``rescale="channel"``, (1,) for ``"scalar"``,
            ``None`` for ``"none"``.
    """

    def __init__(self, base: nn.Linear, config: KarstConfig, name: str = "layer"):
        super().__init__()
        d_out, d_in = base.out_features, base.in_features
        n, m, r = config.n_kernels, config.stack_dim, config.rank
        if d_in % m or d_out % m:
            fits = ", ".join(map(str, valid_stack_dims(d_in, d_out)))
            raise ConfigError(
                f"stack_dim m={m} does not divide {name} (d_out={d_out}, d_in={d_in}); try m in {fits}."
            )
        max_rank = min(d_out, d_in) // m
        if r > max_rank:
            raise ConfigError(
                f"rank r={r} exceeds the Kronecker block of {name} ({d_out // m}×{d_in // m} for m={m}); "
                f"use r <= {max_rank}."
            )
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.config = config
        self.n_kernels, self.stack_dim, self.rank = n, m, r
        self.scale = 1.0 if config.alpha is None else config.alpha / r
        self.recompute_output = any(name == t or name.endswith("." + t) for t in config.recompute_output)
        self.in_features, self.out_features = d_in, d_out
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.C = nn.Parameter(torch.empty(n, m, m, **factory))
        self.A = nn.Parameter(torch.empty(n, d_out // m, r, **factory))
        self.B = nn.Parameter(torch.empty(n, r, d_in // m, **factory))
        if config.rescale == "none":
            self.register_parameter("s1", None)
            self.register_parameter("s2", None)
        else:
            size = d_out if config.rescale == "channel" else 1
            self.s1 = nn.Parameter(torch.zeros(size, **factory))
            self.s2 = nn.Parameter(torch.zeros(size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian C and A, zero B (and zero s1, s2) so that ΔW = 0 and the output is unchanged.

        Scales: with B = 0 only B learns at first, through the fixed "up" map V ↦ Σ_i (C_i ⊗ A_i) V.
        We make that map unit-gain on average (E‖out‖² = ‖in‖²) so that the learning rate means the
        same thing whatever N, m, r and d_out are: entries of C_i have variance 1/m (a random m×m
        matrix that preserves norms on average) and entries of A_i have variance m/(N·d_out)
        (d_out/m rows per block, N kernels summed). ``init_std_C`` scales the first choice and
        ``init_std_A`` overrides the second.

        ``init="kaiming"`` is the authors' choice instead (their modules/kronecker_adaption.py):
        Kaiming-uniform (a = √5, as ``nn.Linear``) for each C_i and each A_i, fan-in being their
        second dimension (m for C_i, r for A_i), so the recipes can be compared by measurement.
        """
        cfg = self.config
        with torch.no_grad():
            if cfg.init == "kaiming":
                for i in range(self.n_kernels):
                    nn.init.kaiming_uniform_(self.C[i], a=math.sqrt(5))
                    nn.init.kaiming_uniform_(self.A[i], a=math.sqrt(5))
            else:
                std_c = cfg.init_std_C / math.sqrt(self.stack_dim)
                std_a = cfg.init_std_A or math.sqrt(self.stack_dim / (self.n_kernels * self.out_features))
                self.C.normal_(0.0, std_c)
                self.A.normal_(0.0, std_a)
            self.B.zero_()
            if self.s1 is not None:
                self.s1.zero_()
                self.s2.zero_()

    # -- the layer contract -------------------------------------------------------------------
    def _scaled_A(self) -> torch.Tensor:
        # Scaling A scales every Kronecker term, so ΔW's scale costs one parameter-sized product.
        return self.A if self.scale == 1.0 else self.A * self.scale

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) Σ_i C_i ⊗ (A_i B_i), shape (d_out, d_in)."""
        return kron_delta(self.C, self._scaled_A(), self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.base.weight, self.base.bias
        if weight.requires_grad or (bias is not None and bias.requires_grad):
            # Someone unfroze W0: the fused path does not return its gradient, so use autograd.
            return self._forward_autograd(x)
        return KronRescaleFunction.apply(
            x, weight, bias, self.C, self._scaled_A(), self.B, self.s1, self.s2, self.recompute_output
        )

    def _forward_autograd(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(x)[2]

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W0x + b0, W0x + b0 + ΔWx, after re-scaling) — the three views the inspector compares."""
        base_out = F.linear(x, self.base.weight, self.base.bias)
        pre = base_out + kron_apply(x, self.C, self._scaled_A(), self.B)
        out = pre if self.s1 is None else pre * (1.0 + self.s1) + self.s2
        return base_out, pre, out

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing exactly this layer (float64 accumulation for exactness).

        Raises:
            RunError: the trained tensors hold NaN or Inf (a diverged run).
            ConfigError: the shift ``s2`` has no bias to fold into (a setting that does not fit the layer).
        """
        params = {"C": self.C, "A": self.A, "B": self.B}
        if self.s1 is not None:
            params.update(s1=self.s1, s2=self.s2)
        bad = [k for k, v in params.items() if not torch.isfinite(v).all()]
        if bad:
            raise RunError(
                f"cannot merge: {', '.join(bad)} contain NaN or Inf values; the run diverged — "
                "retrain with a lower learning rate."
            )
        w0 = self.base.weight.double()
        b0 = None if self.base.bias is None else self.base.bias.double()
        weight = w0 + kron_delta(self.C.double(), self.A.double() * self.scale, self.B.double())
        if self.s1 is not None:
            scale = 1.0 + self.s1.double()
            shift = self.s2.double()
            weight = weight * scale.unsqueeze(1) if scale.numel() > 1 else weight * scale
            if b0 is None:
                if torch.any(shift != 0):
                    raise ConfigError(
                        "cannot merge: the layer has no bias in the plain architecture, so the shift s2 "
                        "cannot be folded into it; build the backbone with a bias on this layer "
                        "(e.g. qkv_bias=True) or train with rescale='none'."
                    )
                bias = None
            else:
                bias = b0 * scale + shift
        else:
            bias = b0
        merged = nn.Linear(self.in_features, self.out_features, bias=bias is not None)
        merged.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        merged.weight.copy_(weight.to(merged.weight.dtype))
        if bias is not None:
            merged.bias.copy_(bias.to(merged.bias.dtype))
        merged.weight.requires_grad_(self.base.weight.requires_grad)
        return merged

    def num_adapter_params(self) -> int:
        """N·(m² + r·(d_out+d_in)/m) + (2·d_out | 2 | 0)."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith("base."))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, N={self.n_kernels}, "
            f"m={self.stack_dim}, r={self.rank}, scale={self.scale:g}, rescale={self.config.rescale!r}"
        )
