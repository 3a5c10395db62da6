"""The GPU check: what needs an accelerator, in one short run whose results land in benchmarks/results/.

1. The fused KARST path against plain autograd on ViT-B/16-sized layers, in fp32 and bf16: the
   largest relative error of the output and of every gradient, and forward+backward time of both.
2. ``karst bench`` for ViT-B/16 (KARST, LoRA, LoKr, full fine-tuning, floor) at batch 32 and 64.
3. One epoch of the paper recipe (karst.recipes) on ViT-B/16 with random weights (no download) on an
   embedded task squash-resized to 224 px: images/s and peak memory.

``--smoke`` shrinks every part (tiny layers, the embedded micro backbone, a few steps) so the script
can be shown to work on a CPU: ``python scripts/gpu_check.py --device cpu --smoke``. Used by
``scripts/gpu_check.sh``, which bounds the whole run to 8 minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from karst import KarstConfig, KarstLinear  # noqa: E402
from karst.bench import BenchConfig, format_table, run_benchmark  # noqa: E402
from karst.config import TrainConfig  # noqa: E402
from karst.recipes import apply_recipe  # noqa: E402
from karst.train import train  # noqa: E402

# ViT-B/16's adapted layers, (d_in, d_out): qkv, proj, fc1, fc2; tokens = 197 per image.
VIT_B_LAYERS = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}
SMOKE_LAYERS = {"qkv": (64, 192), "fc2": (256, 64)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fwd_bwd(layer: KarstLinear, x: torch.Tensor, g: torch.Tensor, fused: bool) -> list[torch.Tensor]:
    out = layer(x) if fused else layer._forward_autograd(x)
    params = [p for p in (layer.C, layer.A, layer.B, layer.s1, layer.s2) if p is not None]
    return [out.detach(), *torch.autograd.grad(out, [x, *params], g)]


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernels, autotuning)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats * 1e3


def fused_check(device: torch.device, smoke: bool) -> list[dict]:
    """Fused path vs autograd per layer and dtype: max relative error and ms per forward+backward."""
    rows = []
    tokens = 4 * 197 if smoke else 32 * 197
    for dtype in (torch.float32, torch.bfloat16):
        for name, (d_in, d_out) in (SMOKE_LAYERS if smoke else VIT_B_LAYERS).items():
            torch.manual_seed(0)
            base = torch.nn.Linear(d_in, d_out).to(device, dtype)
            layer = KarstLinear(base, KarstConfig(rank=8), name=name).to(device, dtype)
            with torch.no_grad():
                layer.B.normal_(0, 0.05)
                layer.s1.normal_(0, 0.1)
                layer.s2.normal_(0, 0.1)
            x = torch.randn(tokens, d_in, device=device, dtype=dtype, requires_grad=True)
            g = torch.randn(tokens, d_out, device=device, dtype=dtype)
            fused, plain = _fwd_bwd(layer, x, g, True), _fwd_bwd(layer, x, g, False)
            err = max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()
                      for a, b in zip(fused, plain))
            repeats = 3 if smoke else 20
            rows.append({"layer": name, "dtype": str(dtype).removeprefix("torch."), "tokens": tokens,
                         "max_rel_err": err,
                         "fused_ms": _timed(functools.partial(_fwd_bwd, layer, x, g, True), device, repeats),
                         "autograd_ms": _timed(functools.partial(_fwd_bwd, layer, x, g, False), device, repeats)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_check(device: str, smoke: bool) -> list[dict]:
    """``karst bench`` rows (KARST, LoRA, LoKr, full, floor) at two batch sizes."""
    rows = []
    for batch in (2, 4) if smoke else (32, 64):
        config = BenchConfig(models=("karst-vit-micro",) if smoke else ("vit_base_patch16_224",),
                             methods=("karst", "lora", "lokr", "full", "floor"), device=device, batch_size=batch,
                             steps=2 if smoke else 8, warmup=1 if smoke else 3, inference=not smoke)
        batch_rows = run_benchmark(config)
        print(format_table(batch_rows), flush=True)
        rows += [{**row, "batch": batch} for row in batch_rows]
    return rows


def recipe_epoch(device: str, smoke: bool, runs_dir: Path) -> dict:
    """One epoch of the paper recipe, random weights, on an embedded task at the backbone's input size."""
    overrides = {"dataset": "synth-objects", "pretrained": False, "epochs": 1, "warmup_epochs": 0, "eval_every": 1,
                 "device": device, "probe_size": 16}
    if smoke:
        overrides.update(backbone="karst-vit-micro", max_train_samples=64)
    config = TrainConfig.from_dict(apply_recipe("paper", overrides))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_dir = runs_dir / f"recipe-epoch-{dt.datetime.now():%H%M%S}"
    t0 = time.perf_counter()
    summary = train(config, run_dir)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = sorted(r["img_per_s"] for r in steps if r["type"] == "step")
    out = {"backbone": config.backbone, "status": summary["status"], "seconds": round(time.perf_counter() - t0, 1),
           "train_seconds": summary.get("train_seconds"), "median_img_per_s": speeds[len(speeds) // 2],
           "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
           "test_acc": summary.get("test_acc"), "trainable_params": summary.get("trainable_params")}
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: shows the script works (e.g. on a CPU)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it with --device cpu --smoke to check the script.", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today()}_gpu_check_{args.device}{'_smoke' if args.smoke else ''}"
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "smoke": args.smoke,
              "torch": torch.__version__, "started": dt.datetime.now().isoformat(timespec="seconds")}
    for name, part in (("fused_vs_autograd", lambda: fused_check(device, args.smoke)),
                       ("bench", lambda: bench_check(args.device, args.smoke)),
                       ("recipe_epoch", lambda: recipe_epoch(args.device, args.smoke, args.out_dir / "runs"))):
        t0 = time.perf_counter()
        result[name] = part()
        result[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        # Written after every part, so a run stopped by its time limit keeps what it finished.
        (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out_dir / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
