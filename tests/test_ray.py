"""Runs, sweeps and faults on a real two-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``).

One cluster serves the whole module: a head and a worker node of one CPU each, so that two runs
asking one CPU each must land on two nodes. Nothing is mocked: the runs train the tiny ViT for real,
their events travel through Ray, and the folders they leave are checked against a local run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray reads it on import: loopback only
ray = pytest.importorskip("ray")

from helpers import REPO, env, fast_form, make_png, tiny_config, trained_run, wait_for  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from karst import inspect as kinspect  # noqa: E402
from karst.cli import main  # noqa: E402
from karst.data.benchmarks import make_demo  # noqa: E402
from karst.errors import ConfigError  # noqa: E402
from karst.export import Predictor  # noqa: E402
from karst.ray_backend import RayBackend  # noqa: E402
from karst.runs import RunStore, read_json, read_jsonl, saved_epochs  # noqa: E402
from karst.runview import MetricsTail, compare_rows  # noqa: E402
from karst.sweep import SweepSpec, list_sweeps, load_space, run_sweep  # noqa: E402
from karst.workspace import Workspace  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Ray2:
    """The module's cluster, this process connected to it as a driver, and a backend on a runs directory."""

    cluster: Cluster
    worker_node: Any
    head_id: str
    backend: RayBackend
    root: Path

    @property
    def address(self) -> str:
        return self.cluster.address


@pytest.fixture(scope="module")
def ray2(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ray")
    saved = dict(os.environ)
    os.environ.update(env())  # the nodes' workers inherit it: this checkout importable, one thread
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        # Connect before the second node exists: both nodes have the address 127.0.0.1, and the driver
        # must sit on the head, the node that is never removed.
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        backend = RayBackend(root / "runs")
        head = ray.get_runtime_context().get_node_id()
        assert head == cluster.head_node.node_id != worker.node_id
        yield Ray2(cluster, worker, head, backend, root)
        backend.close(timeout_s=10)
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def _steps(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl")[0] if r["type"] == "step"]


def _state(store: RunStore, run_id: str) -> str:
    return store.read_status(run_id)["status"]


def _schema(run_dir: Path) -> dict[str, Any]:
    """What must match a local run: the files, and the keys of every JSON file and metrics record."""
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    keys = {name: sorted(read_json(run_dir / name)) for name in ("config.json", "status.json", "summary.json",
                                                                   "merged.json", "snapshots/gaps.json")}
    keys["stats"] = sorted(read_json(run_dir / "snapshots" / "stats_001.json"))
    records: dict[str, set] = {}
    for record in read_jsonl(run_dir / "metrics.jsonl")[0]:
        records.setdefault(record["type"], set()).update(record)
    return {"files": files, "keys": keys, "records": {k: sorted(v) for k, v in records.items()}}


# ------------------------------------------------------------------------------- without a cluster
def test_unreachable_cluster_is_one_line_exit_2_nothing_queued_and_ray_not_imported(tmp_path, capsys,
                                                                                    monkeypatch) -> None:
    runs = tmp_path / "runs"
    # In a fresh process: the CLI gives up before importing Ray (and without --ray never imports it).
    code = "import sys; from karst.cli import main; rc = main(sys.argv[1:]); print('ray' in sys.modules, rc)"
    out = subprocess.run([sys.executable, "-c", code, "train", "--ray", "127.0.0.1:1", "--epochs", "1",
                          "--runs-dir", str(runs)], env=env(), capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "2"], out.stderr
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("karst: error: --ray 127.0.0.1:1: no Ray cluster answers there")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a bare --ray reads it
    (tmp_path / "space.json").write_text('{"lr": [0.001, 0.01]}')
    assert main(["sweep", "--space", str(tmp_path / "space.json"), "--ray", "--runs-dir", str(runs)]) == 2
    assert main(["worker", "--ray", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.count("no Ray cluster answers there") == 2
    with pytest.raises(ConfigError, match="no Ray cluster answers"):  # what `python app.py --ray …` gets
        Workspace(runs, tmp_path / "uploads", ray="127.0.0.1:1")
    assert not runs.exists(), "something was created for an unreachable cluster"


# --------------------------------------------------------------------------------- on the cluster
def test_two_runs_on_two_nodes_in_parallel_leave_local_run_folders(ray2: Ray2, capsys) -> None:
    store = ray2.backend.store
    config = tiny_config(ray2.root)
    flags = ["--backbone", config.backbone, "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "32",
             "--max-train-samples", "64", "--probe-size", "16", "--lr", "3e-3", "--device", "cpu", "--rank", "4"]
    codes: list[int] = []
    # One run through `karst train --ray ADDRESS` (it reuses this process's connection), one through the API.
    cli = threading.Thread(target=lambda: codes.append(main(["train", "--ray", ray2.address, *flags, "--json",
                                                              "--runs-dir", str(store.root)])))
    cli.start()
    other = ray2.backend.submit(config)
    summary = ray2.backend.wait(other, timeout_s=150)
    cli.join(timeout=150)
    assert codes == [0] and summary["status"] == "completed", summary
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    cli_node = read_json(store.path(first) / "status.json")["device"]
    assert ray2.backend.nodes[other][:8] not in cli_node, "both runs landed on one node"
    a, b = (store.read_status(i) for i in (first, other))
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"], "the runs did not overlap"

    local = trained_run(ray2.root / "local")
    same = ("backbone",)  # the same tiny weights, in another folder
    assert ({k: v for k, v in read_json(store.path(other) / "config.json").items() if k not in same}
            == {k: v for k, v in read_json(local / "config.json").items() if k not in same})
    for run_id in (first, other):
        assert _schema(store.path(run_id)) == _schema(local)
    # Every reader works on them as on a local run.
    view = MetricsTail(store).view(other)
    assert view.status["status"] == "completed" and len(view.steps) == 4 and len(view.epochs) == 2
    assert {r["run"] for r in compare_rows(store)} >= {first, other}
    layer = kinspect.layers(store.path(other))[0]
    assert kinspect.kernel_view(store.path(other), layer, 1, 2)["epoch"] == 2
    assert kinspect.alignment_view(store.path(other), layer, 2)
    top = Predictor.from_source(store.path(other)).predict([make_png(ray2.root / "x.png")], top_k=2)[0]
    assert len(top) == 2
    assert main(["export", other, "--out", str(ray2.root / "m.safetensors"), "--runs-dir", str(store.root)]) == 0


def test_stop_reaches_a_remote_run_within_one_step(ray2: Ray2) -> None:
    store = ray2.backend.store
    t0 = time.time()
    run_id = ray2.backend.submit(tiny_config(ray2.root, epochs=3, max_train_samples=512, batch_size=16))
    wait_for(lambda: _steps(store.path(run_id)), timeout=90, every=0.02, what="a first curve point")
    print(f"\nsubmit -> first curve point of a remote run (warm node): {time.time() - t0:.2f}s")
    wait_for(lambda: len(_steps(store.path(run_id))) >= 3, timeout=60)
    asked = time.time()
    ray2.backend.cancel(run_id)
    summary = ray2.backend.wait(run_id, timeout_s=60)
    assert summary["status"] == "cancelled" and _state(store, run_id) == "cancelled"
    late = [s for s in _steps(store.path(run_id)) if s["t"] > asked]
    assert len(late) <= 1, f"{len(late)} steps ran after the cancel request"
    assert (store.path(run_id) / "adapter.safetensors").is_file()  # the weights at the stop are kept


def test_a_suite_sends_all_its_runs_at_once(ray2: Ray2, capsys) -> None:
    root = ray2.root / "demo"
    make_demo(root, "vtab1k", (20, 10, 20))
    flags = ["--backbone", tiny_config(ray2.root).backbone, "--epochs", "1", "--batch-size", "16",
             "--probe-size", "8", "--device", "cpu"]
    assert main(["suite", "vtab1k", "--data-root", str(root), "--tasks", "synth-objects", "synth-count",
                 "--suite-id", "on-ray", "--ray", ray2.address, "--runs-dir", str(ray2.backend.store.root),
                 *flags]) == 0, capsys.readouterr().err
    doc = read_json(ray2.backend.store.root / "suites" / "on-ray" / "suite.json")
    assert [r["status"] for r in doc["runs"]] == ["completed", "completed"]
    first, second = (ray2.backend.store.read_status(row["run_id"]) for row in doc["runs"])
    assert "Ray node" in first["device"] and "Ray node" in second["device"]
    assert second["queued_at"] < first["finished_at"], "the suite waited for one run before sending the next"


def test_two_trial_sweep_chooses_retrains_on_train_val_and_tests(ray2: Ray2) -> None:
    base = tiny_config(ray2.root, epochs=2)
    space = ray2.root / "space.yaml"
    space.write_text("lr: [0.0003, 0.003]\nr: 4\n", encoding="utf-8")
    spec = SweepSpec(load_space(space, base), asha=True)
    assert spec.trials() == 2
    doc = run_sweep(base, spec, ray2.address, ray2.backend.store.root, sweep_id="two-trials")
    assert doc["status"] == "completed", doc
    trials = doc["trials"]
    assert len(trials) == 2 and {t["settings"]["lr"] for t in trials} == {0.0003, 0.003}
    assert {t["status"] for t in trials} <= {"completed", "cancelled"}  # ASHA may stop the worse one
    done = [t for t in trials if t["status"] == "completed"]
    assert doc["chosen"]["val_acc"] == max(t["val_acc"] for t in done)
    final = doc["final"]
    config = read_json(ray2.backend.store.path(final["run_id"]) / "config.json")
    assert config["train_on_val"] is True and config["lr"] == doc["chosen"]["settings"]["lr"]
    assert final["status"] == "completed" and final["test_acc"] is not None
    for row in (*trials, final):  # every trial is an ordinary run folder
        assert (ray2.backend.store.path(row["run_id"]) / "summary.json").is_file()
    folder = ray2.backend.store.root / "sweeps" / "two-trials"
    assert read_json(folder / "sweep.json")["final"]["run_id"] == final["run_id"]
    assert "**final (train+val)**" in (folder / "sweep.md").read_text(encoding="utf-8")
    assert list_sweeps(ray2.backend.store.root)[0]["sweep_id"] == "two-trials"
    # What the app's Compare tab shows of it.
    table, points = Workspace(ray2.backend.store.root, ray2.root / "up", start_worker=False).sweep_view("two-trials")
    assert table == (folder / "sweep.md").read_text(encoding="utf-8")
    assert len(points) == 3 and points[-1]["acc"] == final["test_acc"] and "test" in points[-1]["label"]


def test_app_launches_go_to_the_cluster_a_killed_driver_leaves_interrupted_and_resume_works(ray2: Ray2) -> None:
    # `python app.py --ray ADDRESS`: the runs directory's worker is a Ray driver (`karst worker --ray`).
    runs, uploads = ray2.root / "app-runs", ray2.root / "uploads"
    uploads.mkdir()
    space = Workspace(runs, uploads, ray=ray2.address)
    try:
        pid = space.jobs.worker_pid()
        assert read_json(runs / ".worker.json")["ray"] == ray2.address
        form = fast_form(backbone_source="file", weights_path=tiny_config(ray2.root).backbone, device="cpu",
                         epochs=6, max_train_samples=256, batch_size=16, rank=4)
        run_id = space.launch(form)
        wait_for(lambda: saved_epochs(runs / run_id, "state"), timeout=120, every=0.01,
                 what="the app's run streaming back its first epoch")
        assert "Ray node" in space.store.read_status(run_id)["device"]
        os.kill(pid, 9)  # the driver dies: Ray stops its task, and the run must not stay `running`
        wait_for(lambda: not space.jobs.worker_alive(), timeout=20)
        assert _state(space.store, run_id) == "interrupted"
        wait_for(lambda: ray.available_resources().get("CPU", 0) >= 2, timeout=60, what="the task stopped")
        # The app's Resume: a new Ray worker takes the run with its training state to a node.
        assert "Resuming" in space.resume(run_id)
        wait_for(lambda: _state(space.store, run_id) == "completed", timeout=150, what="the resumed run")
        summary = space.store.read_summary(run_id)
        assert summary["resumed_from"] >= 1 and summary["epochs_done"] == 6
        epochs = [r["epoch"] for r in read_jsonl(runs / run_id / "metrics.jsonl")[0] if r["type"] == "epoch"]
        assert epochs == list(range(1, 7))  # rewound to the saved epoch, then continued: no duplicates
    finally:
        space.close()
        space.jobs.stop_worker(timeout_s=20)


def test_a_node_that_dies_leaves_interrupted_and_the_retry_completes_on_the_other(ray2: Ray2) -> None:
    store = ray2.backend.store
    # Hold the head's only CPU, so that the run can only go to the worker node.
    def hold_cpu() -> None:  # defined here: Ray ships it by value (the nodes cannot import this module)
        time.sleep(600)

    hold = ray.remote(num_cpus=1)(hold_cpu).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray2.head_id, soft=False)).remote()
    victim = ray2.backend.submit(tiny_config(ray2.root, epochs=6, max_train_samples=256, batch_size=16))
    wait_for(lambda: (store.path(victim) / "snapshots" / "epoch_001.safetensors").exists(), timeout=120,
             what="the victim's first epoch")
    assert ray2.backend.nodes[victim] != ray2.head_id
    ray2.cluster.remove_node(ray2.worker_node, allow_graceful=False)
    wait_for(lambda: _state(store, victim) == "interrupted", timeout=60, what="the run marked interrupted")
    retry = wait_for(lambda: ray2.backend.retries.get(victim), timeout=10)
    assert retry in store.read_status(victim)["message"]
    ray.cancel(hold, force=True)  # the head is free: the retry can start there
    summary = ray2.backend.wait(retry, timeout_s=150)
    assert summary["status"] == "completed" and ray2.backend.nodes[retry] == ray2.head_id
    assert _state(store, victim) == "interrupted"  # it stays so; its last snapshot still loads
    assert store.last_checkpoint(victim).parent.name == "snapshots"
    assert Predictor.from_source(store.path(victim)).predict([make_png(ray2.root / "y.png")], top_k=1)


def test_sweep_spaces_are_checked_before_anything_runs(tmp_path) -> None:
    space = tmp_path / "s.json"
    space.write_text(json.dumps({"N": {"choice": [1, 2]}, "m": 8, "lr": {"loguniform": [1e-4, 1e-2]}}))
    base = tiny_config(tmp_path)
    dims = {d.path: d for d in load_space(space, base)}
    assert dims["method.adapter.n_kernels"].kind == "choice" and dims["method.adapter.stack_dim"].kind == "fixed"
    for bad, match in (({"rank": [0]}, "rank=0"), ({"nope": [1]}, "unknown setting 'nope'"),
                       ({"lr": {"loguniform": [0, 1]}}, "low > 0"), ({"seed": 1}, "varies nothing")):
        space.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=match):
            load_space(space, base)
    with pytest.raises(ConfigError, match="--samples 0"):
        SweepSpec(tuple(dims.values()), samples=0)
    assert REPO.joinpath("requirements-ray.txt").read_text().count("ray[tune]>=") == 1
