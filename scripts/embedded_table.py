"""Measure every method on every embedded task and print the README's markdown table.

For each embedded task: linear probe, LoRA, LoKr, KARST without re-scaling, KARST, full
fine-tuning, and KARST from a randomly initialised backbone, all through the engine
(``karst.train.train``) with the default TrainConfig (epochs, batch size, seed) unless told
otherwise, each method at its default learning rate (``karst.config.DEFAULT_LR``).

Usage::

    python scripts/embedded_table.py                         # all tasks, all rows
    python scripts/embedded_table.py --tasks synth-objects --epochs 3 --json table.json
    # two halves on two cores, then one table from both result files:
    python scripts/embedded_table.py --threads 1 --tasks synth-objects synth-textures --json a.json &
    python scripts/embedded_table.py --threads 1 --tasks synth-count synth-orientation --json b.json
    python scripts/embedded_table.py --from-json a.json b.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from karst.config import TrainConfig  # noqa: E402
from karst.data.synthetic import TASKS  # noqa: E402
from karst.train import train  # noqa: E402

# (row label, TrainConfig data overrides, as in config.json). Every row trains at its method's default learning rate
# (karst.config.DEFAULT_LR, printed in the table).
ROWS: list[tuple[str, dict]] = [
    ("linear probe", {"method": "probe"}),
    ("LoRA (r=8)", {"method": "lora"}),
    ("LoKr (r=8)", {"method": "lokr"}),
    ("KARST, no re-scaling", {"method": {"name": "karst", "adapter": {"rescale": "none"}}}),
    ("KARST (N=2, m=8, r=8)", {"method": "karst"}),
    ("full fine-tuning", {"method": "full"}),
    ("KARST, random backbone", {"method": "karst", "pretrained": False}),
]
BASELINE, RANDOM = "linear probe", "KARST, random backbone"


def run_rows(tasks: list[str], rows: list[str] | None, epochs: int | None, json_path: Path | None) -> list[dict]:
    """Train every (task, row) pair in order, printing one JSON line per finished run."""
    results = []
    for task in tasks:
        for label, overrides in ROWS:
            if rows and label not in rows:
                continue
            kw = {"dataset": task, "device": "cpu", **overrides}
            if epochs is not None:
                kw["epochs"] = epochs
            cfg = TrainConfig.from_dict(kw)
            t0 = time.perf_counter()
            s = train(cfg)
            row = {
                "task": task,
                "row": label,
                "lr": cfg.lr,
                "epochs": cfg.epochs,
                "test_acc": s.get("test_acc"),
                "best_val_acc": s.get("best_val_acc"),
                "trainable_params": s.get("trainable_params"),
                "seconds": round(time.perf_counter() - t0, 1),
                "status": s.get("status"),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            if json_path:
                json_path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def markdown(results: list[dict]) -> str:
    """Methods × tasks test accuracy (best per task in bold), trainable params and mean seconds."""
    tasks = list(dict.fromkeys(r["task"] for r in results))
    by = {(r["task"], r["row"]): r for r in results}
    labels = [label for label, _ in ROWS if any((t, label) in by for t in tasks)]
    best = {}
    for t in tasks:
        accs = [by[t, lab]["test_acc"] for lab in labels if (t, lab) in by and lab != RANDOM]
        best[t] = max((a for a in accs if a is not None), default=None)

    def cell(t: str, lab: str) -> str:
        r = by.get((t, lab))
        if r is None:
            return "–"
        if r["test_acc"] is None:
            return r["status"]
        text = f"{100 * r['test_acc']:.1f}"
        return f"**{text}**" if lab != RANDOM and r["test_acc"] == best[t] else text

    head = "| method | lr | trainable params | " + " | ".join(tasks) + " | mean | s / run |"
    lines = [head, "|" + "---|" * (len(tasks) + 5)]
    for lab in labels:
        rs = [by[t, lab] for t in tasks if (t, lab) in by]
        accs = [r["test_acc"] for r in rs if r["test_acc"] is not None]
        mean = f"{100 * sum(accs) / len(accs):.1f}" if len(accs) == len(tasks) else "–"
        params = sorted({r["trainable_params"] for r in rs if r["trainable_params"] is not None})
        p = f"{params[0]:,}" if len(params) == 1 else f"{params[0]:,}–{params[-1]:,}"
        secs = sum(r["seconds"] for r in rs) / len(rs)
        cells = " | ".join(cell(t, lab) for t in tasks)
        lines.append(f"| {lab} | {rs[0]['lr']:g} | {p} | {cells} | {mean} | {secs:.0f} |")
    gaps = []
    for t in tasks:
        if (t, BASELINE) in by and best[t] is not None and by[t, BASELINE]["test_acc"] is not None:
            gaps.append(f"{t} {100 * (best[t] - by[t, BASELINE]['test_acc']):+.1f}")
    if gaps:
        lines.append("")
        lines.append("Best method minus linear probe (points): " + ", ".join(gaps) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="*", default=list(TASKS))
    p.add_argument("--rows", nargs="*", default=None, help="row labels to run (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--from-json", type=Path, nargs="+", default=None, help="print the table from result files")
    args = p.parse_args(argv)
    if args.from_json:
        results = [r for f in args.from_json for r in json.loads(f.read_text())]
    else:
        torch.set_num_threads(args.threads)
        results = run_rows(args.tasks, args.rows, args.epochs, args.json)
    print()
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
