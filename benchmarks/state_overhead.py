"""What saving the training state for resume costs: ``karst train`` with and without it, side by side.

Runs the embedded default (``karst train``, 6 epochs) alternately with the state saved after every
epoch (the default) and with ``--no-save-state``, each in its own process on a fresh runs directory,
and prints the wall time of each run, the time spent writing state files (``state_seconds`` in the
summary) and the ratio of the medians. Extra arguments after ``--`` go to ``karst train``.

    python benchmarks/state_overhead.py --rounds 2 [-- --epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(save_state: bool, runs_dir: Path, extra: list[str]) -> dict:
    """One ``karst train --json`` in a subprocess; its summary plus the wall time of the process."""
    cmd = [sys.executable, "-m", "karst", "train", "--json", "--runs-dir", str(runs_dir), *extra]
    if not save_state:
        cmd.append("--no-save-state")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    wall = time.perf_counter() - t0
    summary = json.loads(out.strip().splitlines()[-1])
    state_file = sorted((runs_dir / summary["run_id"] / "snapshots").glob("state_*.pt"))
    return {**summary, "wall_s": wall, "state_bytes": state_file[-1].stat().st_size if state_file else 0}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (alternating order)")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    rows: dict[bool, list[dict]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="karst-state-bench-") as tmp:
        for r in range(args.rounds):
            # Alternate which goes first, so a machine getting busier does not favour one side.
            for save in ((True, False) if r % 2 == 0 else (False, True)):
                row = run_once(save, Path(tmp) / "runs", extra)
                rows[save].append(row)
                print(f"round {r + 1} save_state={save!s:5}: {row['wall_s']:7.2f}s wall, "
                      f"train {row['train_seconds']:.2f}s, state {row.get('state_seconds', 0):.3f}s "
                      f"({row['state_bytes'] / 1e6:.2f} MB per file), test_acc {row['test_acc']:.4f}", flush=True)
    med = {save: statistics.median(r["wall_s"] for r in rows[save]) for save in rows}
    train = {save: statistics.median(r["train_seconds"] for r in rows[save]) for save in rows}
    state_s = statistics.median(r.get("state_seconds", 0) for r in rows[True])
    print(f"median wall: with state {med[True]:.2f}s, without {med[False]:.2f}s, ratio {med[True] / med[False]:.3f}")
    print(f"median training loop: with {train[True]:.2f}s, without {train[False]:.2f}s, "
          f"ratio {train[True] / train[False]:.3f}")
    print(f"time writing state: {state_s:.3f}s per run = {100 * state_s / train[True]:.2f}% of its training loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
