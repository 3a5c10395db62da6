"""Pre-train the embedded backbone ``karst-vit-micro`` on the procedural corpus.

The backbone is a plain timm ``VisionTransformer`` (so every KARST code path is the same as for a
hub model), trained from a fixed seed on :func:`karst.data.synthetic.pretrain_batch`: one image
shows a primitive shape on a textured background and carries five labels (shape, colour,
texture, position, scale). A single linear layer on the class token predicts all five heads at
once (their logits are concatenated); an auxiliary linear layer on every patch token predicts the
background texture and the shape's coverage of that patch. Both are dropped when saving, because
every downstream task makes its own head.

Usage::

    python scripts/pretrain_embedded.py                 # writes assets/backbones/karst-vit-micro.*
    python scripts/pretrain_embedded.py --steps 50 --out /tmp/bb   # a quick smoke run

The result is a pure function of ``--seed`` and the number of CPU threads (floating-point
reductions depend on it); the card records both, with the seconds the run took.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from karst.backbones import EMBEDDED_ARCH, EMBEDDED_BACKBONE  # noqa: E402
from karst.data.synthetic import IMAGE_SIZE, PRETRAIN_HEADS, pretrain_batch  # noqa: E402

NAME = EMBEDDED_BACKBONE
ARCH = EMBEDDED_ARCH


def _normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W), normalised like timm's transform does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[:, None, None]


def _split_logits(logits: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(logits, [len(v) for v in PRETRAIN_HEADS.values()], dim=1))


def _multi_head_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Equal weight per head: each factor is a separate, equally useful thing to see.
    return sum(F.cross_entropy(lg, labels[:, j]) for j, lg in enumerate(_split_logits(logits))) / len(PRETRAIN_HEADS)


def _dense_loss(dense: torch.nn.Linear, tokens: torch.Tensor, labels: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """Per-patch supervision: every patch token predicts the background texture and how much of
    the labelled shape it covers. A ViT trained from scratch on one label per image learns global
    colour statistics long before local structure; 64 targets per image speed that up a lot.

    tokens: (B, P, D) patch tokens after the final norm; mask: (B, S, S) shape coverage.
    """
    out = dense(tokens)  # (B, P, n_textures + 1)
    n_tex = len(PRETRAIN_HEADS["texture"])
    b, p = out.shape[:2]
    side = int(round(p**0.5))
    cover = torch.from_numpy(mask).reshape(b, side, mask.shape[1] // side, side, mask.shape[2] // side).mean((2, 4))
    texture = labels[:, 2].repeat_interleave(p)
    tex_loss = F.cross_entropy(out[..., :n_tex].reshape(b * p, n_tex), texture)
    fg_loss = F.binary_cross_entropy_with_logits(out[..., n_tex], cover.reshape(b, p))
    return tex_loss + fg_loss


@torch.no_grad()
def _evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    model.eval()
    logits = torch.cat([model(images[i : i + 256]) for i in range(0, len(images), 256)])
    model.train()
    acc = {
        head: float((lg.argmax(1) == labels[:, j]).float().mean())
        for j, (head, lg) in enumerate(zip(PRETRAIN_HEADS, _split_logits(logits)))
    }
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


def main(argv: list[str] | None = None) -> dict:
    """Run the pre-training and write the weights and the card; returns the card."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=40)
    p.add_argument("--dense-weight", type=float, default=0.5, help="weight of the per-patch auxiliary loss")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "backbones")
    args = p.parse_args(argv)

    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 1])
    eval_rng = np.random.default_rng([args.seed, 2])

    # Normalisation statistics of the corpus itself, from a fixed sample.
    sample, _ = pretrain_batch(np.random.default_rng([args.seed, 3]), 4096)
    pix = sample.reshape(-1, 3).astype(np.float64) / 255.0
    mean = pix.mean(0).astype(np.float32)
    std = pix.std(0).astype(np.float32)

    n_logits = sum(len(v) for v in PRETRAIN_HEADS.values())
    model = timm.create_model(ARCH["model_name"], pretrained=False, num_classes=n_logits, **ARCH["kwargs"])
    dense = torch.nn.Linear(model.embed_dim, len(PRETRAIN_HEADS["texture"]) + 1)  # auxiliary, not saved
    params = [*model.parameters(), *dense.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999))

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 1% of the peak
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        t = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
        return args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))

    ev_x, ev_y = pretrain_batch(eval_rng, 2000)
    ev_x, ev_y = _normalise(ev_x, mean, std), torch.from_numpy(ev_y)

    model.train()
    for step in range(args.steps):
        x, y, mask = pretrain_batch(rng, args.batch_size, with_mask=True)
        y = torch.from_numpy(y)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        feats = model.forward_features(_normalise(x, mean, std))  # (B, 1 + P, D)
        loss = _multi_head_loss(model.forward_head(feats), y)
        loss = loss + args.dense_weight * _dense_loss(dense, feats[:, model.num_prefix_tokens :], y, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step):.2e}  {time.time() - t0:6.1f}s", flush=True)

    acc = _evaluate(model, ev_x, ev_y)
    seconds = time.time() - t0
    print("held-out accuracy:", json.dumps({k: round(v, 4) for k, v in acc.items()}), f"({seconds:.0f}s)")

    # The head is task-specific: drop it, every downstream task creates its own.
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out / f"{NAME}.safetensors"), metadata={"name": NAME, "arch": json.dumps(ARCH)})
    card = {
        "name": NAME,
        "description": "Tiny ViT (4 blocks, width 128, 32 px, patch 4) pre-trained on procedural shapes, "
        "strokes, textures, colours, positions and scales",
        "arch": ARCH,
        "image_size": IMAGE_SIZE,
        "data_config": {
            "input_size": [3, IMAGE_SIZE, IMAGE_SIZE],
            "mean": [round(float(v), 4) for v in mean],
            "std": [round(float(v), 4) for v in std],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
        },
        "num_params": int(sum(v.numel() for v in state.values())),
        "recipe": {
            "corpus": "karst.data.synthetic.pretrain_batch (fresh images every step)",
            "heads": {k: list(v) for k, v in PRETRAIN_HEADS.items()},
            "loss": "mean cross-entropy over the heads (class token) + dense_weight x per-patch loss "
            "(texture cross-entropy + shape-coverage BCE on every patch token; that head is not saved)",
            "dense_weight": args.dense_weight,
            "optimizer": "AdamW",
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "schedule": f"linear warm-up {args.warmup_steps} steps, cosine to 1%",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "images_seen": args.steps * args.batch_size,
            "grad_clip": 1.0,
            "threads": args.threads,
        },
        "seed": args.seed,
        "pretrain_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "pretrain_eval": "2,000 held-out corpus images, accuracy per head and their mean",
        "seconds": round(seconds, 1),
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "machine": f"{platform.machine()}, {args.threads} CPU threads",
    }
    (args.out / f"{NAME}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


if __name__ == "__main__":
    main()
