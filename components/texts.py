"""Teaching text shown next to each view: short, with the formulas of the paper (arXiv 2502.06779).

All strings are Markdown; LaTeX between ``$$ … $$`` (display) or ``$ … $`` (inline) is rendered by
KaTeX through ``LATEX_DELIMITERS``. Keeping the prose here keeps the panel modules about layout.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

__all__ = [
    "LATEX_DELIMITERS",
    "TITLE",
    "method_formula",
    "WATCH",
    "KERNELS",
    "ALIGNMENT",
    "COMPARE",
    "PREDICT",
    "METHOD_NOTES",
]

# `$` inline is safe here: no text in this app uses a dollar sign for money.
LATEX_DELIMITERS: list[dict[str, str | bool]] = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
]

TITLE = """# KARST Studio
Parameter-efficient fine-tuning of Vision Transformers with **Kronecker adapters and re-scaling**
(KARST, [arXiv 2502.06779](https://arxiv.org/abs/2502.06779)). Pick a backbone and a task, launch,
then watch the run, look inside the adapter, compare methods and try the model."""

# ---------------------------------------------------------------------------- Setup: the chosen method
# The Setup tab's right column: the chosen method's update and parameter count, with the form's
# numbers put in. A number the user is still typing (empty, 0, 2.5) shows as its symbol instead.
_ALPHA = r"\alpha"
_SUM_DIMS = r"(d_{in}+d_{out})"


def _whole(value: Any) -> int | None:
    """A form value as a positive whole number, or None while it is not one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number >= 1 and number.is_integer() else None


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _tex(value: float | None, symbol: str = "") -> str:
    """The number in LaTeX (1{,}024: KaTeX spaces a bare comma), or the symbol while it is unknown."""
    if value is None:
        return symbol
    text = f"{value:,}" if isinstance(value, int) else f"{value:,g}"  # g would write 1.6384e+06 for an int
    return text.replace(",", "{,}")


def _times(coef: Fraction, term: str) -> str:
    """``coef·term`` as a reader writes it (in a display formula): no "1·", a fraction as \frac."""
    if coef == 1:
        return term
    number = str(coef.numerator) if coef.denominator == 1 else rf"\frac{{{coef.numerator}}}{{{coef.denominator}}}"
    return rf"{number}\,{term}"


def _scale(alpha: float | None, r: int | None) -> tuple[str, str]:
    """The α/r factor with the numbers put in (empty while both are unknown), and its value as text."""
    if alpha is None and r is None:
        return "", r"$\alpha/r$"
    a, rank = _tex(alpha, _ALPHA), _tex(r, "r")
    value = f" = {alpha / r:g}" if alpha is not None and r is not None else ""
    return rf"\frac{{{a}}}{{{rank}}}", f"$\\alpha/r = {a}/{rank}{value}$"


def _rank_word(r: int | None) -> str:
    return "**r**" if r is None else f"**r** = {r}"


# re-scaling → (the layer's output, what s1 and s2 are, their count per layer)
_RESCALE: dict[str, tuple[str, str, str | None]] = {
    "channel": (r"y = (1 + s_1) \odot (W_0 x + b_0 + \Delta W x) + s_2",
                r"with $s_1, s_2 \in \mathbb{R}^{d_{out}}$: a scale and a shift per output channel (the paper's "
                "re-scaling transmission).", r"2\,d_{out}"),
    "scalar": (r"y = (1 + s_1)\,(W_0 x + b_0 + \Delta W x) + s_2",
               r"with scalars $s_1, s_2 \in \mathbb{R}$: one scale and one shift for the whole layer.", "2"),
    "none": (r"y = W_0 x + b_0 + \Delta W x",
             "with no re-scaling (the ablation): the adapted output goes on as it is.", None),
}


def _karst_count(n: int | None, m: int | None, r: int | None, extra: str | None) -> str:
    """Trainable numbers of one adapted layer: the formula and, once N, m, r are known, its value on a
    second line (one line would not fit a phone's width)."""
    tail = f" + {extra}" if extra else ""
    general = rf"$$ N\,(m^2 + r\,\frac{{d_{{in}}+d_{{out}}}}{{m}}){tail} $$"
    if n is None or m is None or r is None:
        return general
    value = rf"$$ = {_tex(n * m * m)} + {_times(Fraction(n * r, m), _SUM_DIMS)}{tail} $$"
    return general + "\n" + value


def _karst(n: int | None, m: int | None, r: int | None, rescale: str, alpha: float | None) -> str:
    output, rescale_text, extra = _RESCALE.get(rescale, _RESCALE["channel"])
    big_n, big_m, big_r = _tex(n, "N"), _tex(m, "m"), _tex(r, "r")
    factor, scale_text = _scale(alpha, r) if alpha is not None else ("", "")
    scaled = f" The sum is scaled by {scale_text}." if alpha is not None else ""
    reach = "" if n is None or m is None or r is None else f" = {_tex(n * m * r)}"
    zeros = "$B_i$, $s_1$, $s_2$ start" if extra else "$B_i$ starts"
    kernels = "**N**" if n is None else f"**N = {n}**"
    return rf"""### What gets trained: KARST
Every adapted linear layer keeps its pre-trained weight $W_0$ frozen and learns a sum of
{kernels} Kronecker products

$$\Delta W = {factor}\sum_{{i=1}}^{{{big_n}}} C_i \otimes (A_i B_i)$$

with $C_i \in \mathbb{{R}}^{{{big_m}\times {big_m}}}$,
$A_i \in \mathbb{{R}}^{{(d_{{out}}/{big_m})\times {big_r}}}$,
$B_i \in \mathbb{{R}}^{{{big_r}\times (d_{{in}}/{big_m})}}$.{scaled} The layer computes

$$ {output} $$

{rescale_text}

- **N** kernels are summed; **m** is the side of each $C_i$ and must divide both $d_{{in}}$ and $d_{{out}}$;
  **r** is the rank of each block $A_i B_i$.
- Trainable numbers per layer, far fewer than $d_{{in}} d_{{out}}$, yet $\operatorname{{rank}}(\Delta W)$ can
  reach $N m r{reach}$ (at most $\min(d_{{in}}, d_{{out}})$):

{_karst_count(n, m, r, extra)}

- {zeros} at zero, so training starts exactly from the pre-trained model. The classification
  head trains too, as in every method.
"""


def _lora(r: int | None, alpha: float | None) -> str:
    factor, scale_text = _scale(alpha, r)
    big_r = _tex(r, "r")
    put_in = rf" = {factor}\,B A" if factor else ""
    value = rf" = {alpha / r:g}\,B A" if alpha is not None and r is not None and alpha != r else ""
    count = "" if r is None else f" = {_times(Fraction(r), _SUM_DIMS)}"
    return rf"""### What gets trained: LoRA
Every adapted linear layer keeps its pre-trained weight $W_0$ frozen and learns one low-rank product

$$\Delta W = \frac{{\alpha}}{{r}}\,B A{put_in}{value}$$

with $B \in \mathbb{{R}}^{{d_{{out}}\times {big_r}}}$, $A \in \mathbb{{R}}^{{{big_r}\times d_{{in}}}}$, and no
re-scaling: $y = W_0 x + b_0 + \Delta W x$.

- {_rank_word(r)} is the rank of $\Delta W$; the update is scaled by {scale_text} (**LoRA α** in the form),
  so changing r alone changes the scale too.
- Trainable numbers per layer: $r\,{_SUM_DIMS}{count}$.
- $B$ starts at zero, so training starts exactly from the pre-trained model. The classification head
  trains too, as in every method.
"""


def _lokr(r: int | None, alpha: float | None) -> str:
    factor, scale_text = _scale(alpha, r)
    big_r = _tex(r, "r")
    put_in = rf" = {factor}\,C \otimes (A B)" if factor else ""
    return rf"""### What gets trained: LoKr
Every adapted linear layer keeps its pre-trained weight $W_0$ frozen and learns **one** Kronecker product
(peft's LoKr)

$$\Delta W = \frac{{\alpha}}{{r}}\,C \otimes (A B){put_in}$$

with $C \in \mathbb{{R}}^{{p\times q}}$, $A \in \mathbb{{R}}^{{(d_{{out}}/p)\times {big_r}}}$,
$B \in \mathbb{{R}}^{{{big_r}\times (d_{{in}}/q)}}$; $p$ and $q$ are the factors of $d_{{out}}$ and
$d_{{in}}$ nearest their square roots (a 768×768 layer gets a 24×24 $C$). There is no re-scaling:
$y = W_0 x + b_0 + \Delta W x$.

- {_rank_word(r)} is the rank of $AB$ (a full block instead once r reaches half its larger side); the
  update is scaled by {scale_text} (**LoRA α** in the form).
- Trainable numbers per layer: $p\,q + r\,(d_{{out}}/p + d_{{in}}/q)$.
- $C$ starts at zero, so training starts exactly from the pre-trained model. KARST differs by summing
  N such products of m×m kernels and by re-scaling the output.
"""


_FULL = r"""### What gets trained: full fine-tuning
Every weight of the backbone trains, starting from the pre-trained ones; there is no adapter. In each
linear layer the update is the whole difference

$$\Delta W = W - W_0 \in \mathbb{R}^{d_{out}\times d_{in}}$$

a full-size matrix of any rank up to $\min(d_{in}, d_{out})$.

- Trainable numbers per layer: $d_{out}\,d_{in} + d_{out}$ (weight and bias), plus the norms, the
  embeddings and the classification head: every number of the model.
- The upper bound in cost: each task keeps a full copy of the model.
"""

_PROBE = r"""### What gets trained: linear probe
Only the classification head trains. The backbone stays frozen, so there is **no update at all: no
$\Delta W$**. Every layer computes $y = W_0 x + b_0$ as it was pre-trained, and the head learns to read
the pre-trained features.

- Trainable numbers: $K\,(d + 1)$ for $K$ classes and features of width $d$: the head alone.
- The lower bound in cost, and the baseline an adapter has to beat.
"""


def method_formula(method: str, *, n_kernels: Any = None, stack_dim: Any = None, rank: Any = None,
                   rescale: str = "channel", alpha: Any = None, lora_alpha: Any = None) -> str:
    """What the chosen method trains: its update and its parameter count, with the numbers put in.

    Args:
        method: karst | lora | lokr | full | probe.
        n_kernels, stack_dim, rank, rescale: the form's values (raw: floats, None, text while typed).
        alpha: KARST's α (``method.adapter.alpha``); None: ΔW is not scaled.
        lora_alpha: LoRA's and LoKr's α (``method.lora_alpha``).
    """
    n, m, r = _whole(n_kernels), _whole(stack_dim), _whole(rank)
    if method == "karst":
        return _karst(n, m, r, rescale, _positive(alpha))
    if method in ("lora", "lokr"):
        return (_lora if method == "lora" else _lokr)(r, _positive(lora_alpha))
    return {"full": _FULL, "probe": _PROBE}[method]


METHOD_NOTES: dict[str, str] = {
    "karst": "KARST: sum of N Kronecker products plus channel re-scaling (the paper's method).",
    "lora": r"LoRA: $\Delta W = \frac{\alpha}{r} B A$, a single low-rank product (baseline).",
    "lokr": r"LoKr: $\Delta W = C \otimes (A B)$, one Kronecker product, no re-scaling (baseline).",
    "full": "Full fine-tuning: every weight trains (the upper bound in cost).",
    "probe": "Linear probe: only the classification head trains (the lower bound in cost).",
}

WATCH = r"""### Reading the curves
- **Training loss** is the cross-entropy of each mini-batch; it is noisy, look at its trend.
- **Validation accuracy** is measured after every epoch on held-out images.
- **Learning rate** rises linearly during the run's **warm-up epochs** (a Setup setting: 1 by default,
  none for a one-epoch run or when set to 0), then follows the cosine decay
  $\eta_t \approx \tfrac12\eta_0\,(1+\cos(\pi t/T))$, with $t$ the step and $T$ the run's steps
  (it ends at $\eta_0/1000$).

The run lives in a worker outside this page: closing or refreshing the tab loses nothing, and the
page re-attaches to the run on return.
"""

KERNELS = r"""### Inside one adapted layer
For the chosen layer and kernel $i$ the views show $C_i$ ($m\times m$), the block $A_i B_i$
($\frac{d_{out}}{m}\times\frac{d_{in}}{m}$), their Kronecker product $C_i \otimes A_i B_i$ and the
whole update $\Delta W$ ($d_{out}\times d_{in}$).

$C_i \otimes D$ places a copy of $D$ scaled by $c_{jk}$ in block $(j,k)$, so the block pattern of
$C_i$ shows up in $\Delta W$. The singular values show why a Kronecker sum is expressive:
$\operatorname{rank}(C\otimes D)=\operatorname{rank}(C)\operatorname{rank}(D)$, so $\Delta W$ can have
rank up to $N m r$, while a LoRA with the same number of parameters has rank
$r' \approx\frac{\text{budget}}{d_{in}+d_{out}}$. The dashed "LoRA, equal budget" line is the
truncated SVD of this $\Delta W$ at rank $r'$ (the most of it such a LoRA could hold), not a
trained LoRA; a trained LoRA run of the same task, if there is one, is drawn dotted.

Grid lines mark the $m\times m$ blocks; axes show the true row and column indices.
$C_i$ starts random and moves little, so tick **Same colour scale** and **Show the change since
epoch 0**, then **Play** (or the arrow keys on the slider) to watch the update grow.
"""

ALIGNMENT = r"""### Re-scaling transmission (RST)
KARST's re-scaling $y = (1+s_1)\odot(\cdot) + s_2$ is meant to align adapted features with the
distribution that the **following pre-trained layers expect**. This tab measures that claim.

**Reference**: the frozen model's per-channel mean $\mu^{ref}_c$ and std $\sigma^{ref}_c$ of this
layer's output on the data it was pre-trained on (for `karst-vit-micro`, images of its own
pre-training generator). For a backbone whose pre-training data is not at hand, the reference is
the frozen model on this task's probe images, and the text says so.

Each output channel $c$ is compared with it on a fixed probe batch:

$$d_c = \frac{|\mu_c-\mu^{ref}_c| + |\sigma_c-\sigma^{ref}_c|}{\overline{\sigma^{ref}}}$$

0 is the reference's distribution; 1 is off by one typical std. The **gap** is the mean of $d_c$.

- **Sorted change per channel**: $d_c$ after re-scaling minus before it (green: moved closer),
  and the adapted output minus the frozen model on this task.
- **Gap over epochs**: every run of this backbone and dataset, so KARST with and without
  re-scaling and LoRA can be compared; dotted: before re-scaling.
- The sentences above the plots are computed from these numbers.
"""

COMPARE = r"""### Accuracy against cost
Tick runs to overlay their curves. The scatter places each run by its **trainable parameters**
(log scale) and its **accuracy** — the paper's headline picture: a good adapter sits top-left.
"""

PREDICT = r"""### Use the model
The **merged** model folds the adapter into plain weights,
$W' = \operatorname{diag}(1+s_1)(W_0+\Delta W)$ and $b' = (1+s_1)\odot b_0 + s_2$, so it loads into a
plain `timm` model without this package:

```python
import json, timm
from safetensors.torch import load_file
cfg = json.load(open("merged.json"))
model = timm.create_model(cfg["arch"]["model_name"], pretrained=False,
                          num_classes=cfg["num_classes"], **cfg["arch"]["kwargs"])
model.load_state_dict(load_file("merged.safetensors"), strict=True)
```

The adapter-only file holds just the trained tensors (a few kB to MB).
Predict with this run's model, or upload a merged `.safetensors` together with its `.json`.
"""
