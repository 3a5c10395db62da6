"""What sending runs to Ray costs: 4 embedded runs through the local worker and through ``--ray local``.

Each mode gets a fresh runs directory and its worker (``karst worker``, or ``karst worker --ray
local`` with its own Ray instance on 127.0.0.1), started and made ready before the clock starts;
then 4 runs of the embedded default (``--epochs`` 1 unless given) are queued at once, as the app
queues them, and the script waits for all 4. Modes:

- ``local``: the local worker, one run at a time, ``--threads`` torch threads;
- ``ray-seq``: Ray, each run asking for all the machine's CPUs: one at a time, the same threads;
- ``ray-par``: Ray, each run asking for one CPU: as many at a time as there are CPUs.

It prints, per mode, the wall time of the 4 runs, each run's time from launch to its first curve
point (the first step in ``metrics.jsonl``) and the time its training took inside the trainer;
``ray-seq`` minus ``local``, over 4, is Ray's overhead per run.

    python benchmarks/ray_overhead.py [--epochs 1] [--modes local ray-seq ray-par] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from karst.config import TrainConfig  # noqa: E402
from karst.jobs import JobManager  # noqa: E402
from karst.runs import FINAL_STATES, read_json, read_jsonl  # noqa: E402


def _first_step(run_dir: Path) -> float | None:
    steps = [r for r in read_jsonl(run_dir / "metrics.jsonl")[0] if r.get("type") == "step"]
    return steps[0]["t"] if steps else None


def run_mode(mode: str, root: Path, epochs: int, threads: int, n: int = 4) -> dict:
    cpus = os.cpu_count() or 1
    args = {"local": ["--threads", str(threads)], "ray-seq": ["--ray", "local", "--ray-cpus", str(cpus)],
            "ray-par": ["--ray", "local", "--ray-cpus", "1"]}[mode]
    manager = JobManager(root / mode, worker_args=args)
    t_ready = time.monotonic()
    manager.ensure_worker(wait_s=300, wait_ready=True)
    ready_s = time.monotonic() - t_ready
    try:
        config = TrainConfig(epochs=epochs)
        t0 = time.time()
        ids = [manager.submit(config, start_worker=False) for _ in range(n)]
        first: dict[str, float] = {}
        while True:
            for run_id in ids:
                if run_id not in first and (t := _first_step(manager.root / run_id)) is not None:
                    first[run_id] = t - read_json(manager.root / run_id / "status.json")["queued_at"]
            states = [manager.store.read_status(i)["status"] for i in ids]
            if all(s in FINAL_STATES for s in states):
                break
            time.sleep(0.05)
        wall = time.time() - t0
        summaries = [manager.store.read_summary(i) or {} for i in ids]
    finally:
        manager.stop_worker(timeout_s=60)
    return {"mode": mode, "worker_args": args, "worker_ready_s": round(ready_s, 2), "wall_s": round(wall, 2),
            "states": states, "first_point_s": [round(first.get(i, float("nan")), 2) for i in ids],
            "train_seconds": [s.get("train_seconds") for s in summaries],
            "run_seconds": [s.get("seconds") for s in summaries], "devices": [s.get("device") for s in summaries]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run (local)")
    parser.add_argument("--modes", nargs="+", default=["local", "ray-seq", "ray-par"])
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="karst-ray-bench-") as tmp:
        for mode in args.modes:
            row = run_mode(mode, Path(tmp), args.epochs, args.threads)
            row["load_avg_1min"] = os.getloadavg()[0]
            rows.append(row)
            print(json.dumps(row), flush=True)
    by = {r["mode"]: r for r in rows}
    if "local" in by and "ray-seq" in by:
        per_run = (by["ray-seq"]["wall_s"] - by["local"]["wall_s"]) / 4
        print(f"Ray's overhead per run (ray-seq - local) / 4: {per_run:.1f} s")
    if args.out:
        args.out.write_text(json.dumps({"epochs": args.epochs, "cpus": os.cpu_count(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
