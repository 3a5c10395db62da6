"""Teaching text shown next to each view: short, with the formulas of the paper (arXiv 2502.06779).

All strings are Markdown; LaTeX between ``$$ … $$`` (display) or ``$ … $`` (inline) is rendered by
KaTeX through ``LATEX_DELIMITERS``. Keeping the prose here keeps the panel modules about layout.
"""

from __future__ import annotations

__all__ = [
    "LATEX_DELIMITERS",
    "TITLE",
    "SETUP",
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

SETUP = r"""### What gets trained
Every adapted linear layer keeps its pre-trained weight $W_0$ frozen and learns

$$\Delta W = \sum_{i=1}^{N} C_i \otimes (A_i B_i)$$

with $C_i \in \mathbb{R}^{m\times m}$, $A_i \in \mathbb{R}^{\frac{d_{out}}{m}\times r}$,
$B_i \in \mathbb{R}^{r\times\frac{d_{in}}{m}}$, and

$$y = (1 + s_1) \odot (W_0 x + b_0 + \Delta W x) + s_2$$

- **N** kernels are summed; **m** is the side of each $C_i$ and must divide both $d_{in}$ and $d_{out}$;
  **r** is the rank of each block $A_i B_i$.
- Trainable numbers per layer: $N\,(m^2 + r\,\frac{d_{in}+d_{out}}{m}) + 2\,d_{out}$ — far fewer than
  $d_{in} d_{out}$, yet $\operatorname{rank}(\Delta W)$ can reach $N\,m\,r$.
- $B_i$, $s_1$, $s_2$ start at zero, so training starts exactly from the pre-trained model.
"""

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
- **Learning rate** follows a linear warm-up then a cosine decay,
  $\eta_t = \tfrac12\eta_0\,(1+\cos(\pi t/T))$.

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
