"""Measure every method on every embedded task and print the README's markdown table.

For each embedded task: linear probe, LoRA, LoKr, KARST without re-scaling, KARST, full
fine-tuning, and KARST from a randomly initialised backbone, all through the engine
(``karst.train.train``) with the default TrainConfig (epochs, batch size, seed) unless told
otherwise. Each method uses one learning rate, printed in the table (a linear probe and full
fine-tuning need a larger and a smaller one than the adapters).

Usage::

    python scripts/embedded_table.py                         # all tasks, all rows
    python scripts/embedded_table.py --tasks synth-objects --epochs 3 --json table.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from karst.backbones import EMBEDDED_BACKBONE, load_backbone  # noqa: E402
from karst.config import TrainConfig  # noqa: E402
from karst.data.synthetic import TASKS  # noqa: E402
from karst.train import train  # noqa: E402

# (row label, TrainConfig overrides). lr: the PETL literature's usual choices per family.
ROWS: list[tuple[str, dict]] = [
    ("linear probe", {"method": "probe", "lr": 1e-2}),
    ("LoRA (r=8)", {"method": "lora"}),
    ("LoKr (r=8)", {"method": "lokr"}),
    ("KARST, no re-scaling", {"method": "karst", "rescale": "none"}),
    ("KARST (N=2, m=8, r=8)", {"method": "karst"}),
    ("full fine-tuning", {"method": "full", "lr": 2e-4}),
    ("KARST, random backbone", {"method": "karst", "backbone": "@random"}),
]


def _random_backbone_file(folder: Path) -> str:
    """The embedded architecture, randomly initialised (seed 0), saved as a local weight file."""
    torch.manual_seed(0)
    bb = load_backbone(EMBEDDED_BACKBONE, 1, pretrained=False)
    path = folder / "karst-vit-micro-random.safetensors"
    state = {k: v.contiguous() for k, v in bb.model.state_dict().items() if not k.startswith("head.")}
    save_file(state, str(path), metadata={"arch": json.dumps(bb.arch), "data_config": json.dumps(bb.data_config)})
    return str(path)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="*", default=list(TASKS))
    p.add_argument("--rows", nargs="*", default=None, help="row labels to run (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        random_file = _random_backbone_file(Path(tmp))
        for task in args.tasks:
            for label, overrides in ROWS:
                if args.rows and label not in args.rows:
                    continue
                kw = {"dataset": task, "device": "cpu", **overrides}
                if kw.get("backbone") == "@random":
                    kw["backbone"] = random_file
                if args.epochs is not None:
                    kw["epochs"] = args.epochs
                cfg = TrainConfig(**kw)
                t0 = time.perf_counter()
                s = train(cfg)
                row = {
                    "task": task,
                    "row": label,
                    "lr": cfg.lr,
                    "test_acc": s.get("test_acc"),
                    "best_val_acc": s.get("best_val_acc"),
                    "trainable_params": s.get("trainable_params"),
                    "seconds": round(time.perf_counter() - t0, 1),
                    "status": s.get("status"),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1) + "\n")

    print()
    print("| task | method | lr | test acc | trainable params | seconds |")
    print("|---|---|---|---|---|---|")
    for r in results:
        acc = f"{100 * r['test_acc']:.1f}%" if r["test_acc"] is not None else r["status"]
        print(f"| {r['task']} | {r['row']} | {r['lr']:g} | {acc} | {r['trainable_params']:,} | {r['seconds']:.0f} |")
    return results


if __name__ == "__main__":
    main()
