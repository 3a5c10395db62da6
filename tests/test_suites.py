"""Benchmark suites: the demo suite end to end, its numbers checked by hand, resume after a kill, bad roots.

Real runs on the demo suite (``karst suite make-demo``) with the tiny local backbone and a few
images per task; the whole module trains about 20 short runs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import env, tiny_backbone, wait_for

from karst.cli import main
from karst.config import TrainConfig
from karst.data.benchmarks import VTAB1K_TASKS, check_fewshot_root, check_vtab_root, make_demo, read_protocol
from karst.errors import DataError
from karst.runs import RunStore, read_json
from karst.suite_report import mean_ci, t975
from karst.suites import SuiteSpec, list_suites, run_suite, suite_markdown

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = (20, 10, 20)  # train, val, test images per demo task
GROUPS = {"natural": ["synth-objects"], "specialized": ["synth-textures"],
          "structured": ["synth-count", "synth-orientation"]}


def _settings(folder: Path) -> dict:
    return {"backbone": str(tiny_backbone(folder)), "epochs": 2, "batch_size": 16, "probe_size": 8,
            "device": "cpu", "lr": 3e-3}


def _flags(folder: Path) -> list[str]:
    return ["--backbone", str(tiny_backbone(folder)), "--epochs", "2", "--batch-size", "16", "--probe-size", "8",
            "--device", "cpu", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> SimpleNamespace:
    """The demo suite, made and run once: 4 tasks × karst, probe × seeds 0, 1 (16 runs)."""
    base = tmp_path_factory.mktemp("suite")
    root = base / "demo"
    make_demo(root, "vtab1k", SIZES)
    spec = SuiteSpec(protocol="vtab1k", data_root=str(root), methods=["karst", "probe"], seeds=[0, 1],
                     values=_settings(base))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures start before the one_thread fixture of the tests
    try:
        doc = run_suite(spec, base / "runs", suite_id="demo")
    finally:
        torch.set_num_threads(threads)
    return SimpleNamespace(base=base, root=root, runs=base / "runs", doc=doc)


def test_demo_layout_is_vtab1k(demo) -> None:
    protocol = read_protocol("vtab1k", demo.root)
    assert [(t.name, t.group) for t in protocol.tasks] == [(t, g) for g, names in GROUPS.items() for t in names]
    for task in protocol.tasks:
        folder = demo.root / task.name
        lines = {n: (folder / n).read_text().splitlines() for n in ("train800.txt", "val200.txt",
                                                                      "train800val200.txt", "test.txt")}
        assert [len(lines[n]) for n in ("train800.txt", "val200.txt", "test.txt")] == list(SIZES)
        union = [line.rsplit(" ", 1) for line in lines["train800val200.txt"]]
        parts = [line.rsplit(" ", 1) for line in lines["train800.txt"] + lines["val200.txt"]]
        assert [y for _, y in union] == [y for _, y in parts]  # the same images, in their own folder
        assert (folder / union[-1][0]).read_bytes() == (folder / parts[-1][0]).read_bytes()
        assert union[0][0] == "images/train800val200/000000.png" and lines["test.txt"][0].endswith(".png 0")


def test_demo_suite_end_to_end(demo) -> None:
    doc = demo.doc
    assert doc["status"] == "completed" and len(doc["runs"]) == 16
    store = RunStore(demo.runs)
    for run in doc["runs"]:
        assert run["status"] == "completed" and run["attempts"] == []
        config = store.read_config(run["run_id"])  # an ordinary run of the runs dir
        assert config.train_on_val and config.dataset == str(demo.root.resolve() / run["task"])
        assert (config.method.name, config.seed) == (run["method"], run["seed"])
        assert store.read_summary(run["run_id"])["test_acc"] == run["test_acc"]
    assert {r["run_id"] for r in store.list_runs()} == {r["run_id"] for r in doc["runs"]}
    saved = read_json(demo.runs / "suites" / "demo" / "suite.json")
    assert saved["results"] == doc["results"]
    assert (demo.runs / "suites" / "demo" / "suite.md").read_text() == suite_markdown("demo", demo.runs)


def test_group_means_by_hand(demo) -> None:
    acc = {(r["task"], r["method"], r["seed"]): r["test_acc"] for r in demo.doc["runs"]}
    final = demo.doc["results"]["final"]
    table = (demo.runs / "suites" / "demo" / "suite.md").read_text()
    for method in ("karst", "probe"):
        group_means = {}
        for group, tasks in GROUPS.items():
            per_seed = [sum(acc[(t, method, s)] for t in tasks) / len(tasks) for s in (0, 1)]
            group_means[group] = (per_seed[0] + per_seed[1]) / 2
            got = final["groups"][group][method]
            assert got["mean"] == pytest.approx(group_means[group])
            assert got["ci"] == pytest.approx(12.706 * statistics.stdev(per_seed) / math.sqrt(2))
            assert f"{100 * group_means[group]:.1f}" in next(line for line in table.splitlines()
                                                             if line.startswith(f"| **{group} mean**"))
        # The paper's "Mean": the mean of the three group means; the mean of the 4 tasks differs.
        assert final["mean_of_groups"][method]["mean"] == pytest.approx(sum(group_means.values()) / 3)
        tasks = [t for names in GROUPS.values() for t in names]
        by_task = sum(acc[(t, method, s)] for t in tasks for s in (0, 1)) / 8
        assert final["mean_of_tasks"][method]["mean"] == pytest.approx(by_task)
    mean_row = next(line for line in table.splitlines() if line.startswith("| **Mean**"))
    assert "78.1 (ViT-B/16)" in mean_row and "**" in mean_row.split("|")[3] + mean_row.split("|")[5]


def test_mean_ci_and_t_quantiles() -> None:
    assert mean_ci([0.5]) == {"mean": 0.5, "ci": None, "n": 1}
    got = mean_ci([0.6, 0.7, 0.8])
    assert got["mean"] == pytest.approx(0.7) and got["ci"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert t975(30) == 2.042 and t975(31) == pytest.approx(2.040, abs=1e-3) and t975(120) == pytest.approx(1.980,
                                                                                                           abs=1e-3)


def test_resume_after_kill(tmp_path: Path, capsys) -> None:
    root = tmp_path / "demo"
    make_demo(root, "vtab1k", SIZES)
    argv = ["suite", "vtab1k", "--data-root", str(root), "--runs-dir", str(tmp_path / "runs"), "--suite-id", "s1",
            "--tasks", "synth-objects", "synth-count", "synth-orientation", *_flags(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "karst", *argv], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    suite_json = tmp_path / "runs" / "suites" / "s1" / "suite.json"
    try:
        def first_done() -> dict | None:
            doc = read_json(suite_json) if suite_json.is_file() else None
            return doc if doc and any(r["status"] == "completed" for r in doc["runs"]) else None

        before = wait_for(first_done, timeout=180, what="the first run of the suite completed")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the suite's own process group, nothing else
        proc.wait(timeout=30)
    killed = read_json(suite_json)  # as the killed process left it
    done = {r["task"]: r["run_id"] for r in killed["runs"] if r["status"] == "completed"}
    cut = [r["run_id"] for r in killed["runs"] if r["status"] == "running"]  # the run killed mid-way, if any
    assert before["runs"][0]["status"] == "completed" and 0 < len(done) < 3, "killed mid-suite"

    code = main(argv)  # the same command again continues the suite
    assert code == 0, capsys.readouterr().err
    after = read_json(suite_json)
    assert after["status"] == "completed" and all(r["status"] == "completed" for r in after["runs"])
    for run in after["runs"]:
        if run["task"] in done:  # finished before the kill: kept, not repeated
            assert run["run_id"] == done[run["task"]] and run["attempts"] == []
    # The run cut by the kill continued in its own folder (karst resume), not as a new run.
    assert all(any(r["run_id"] == c and r["attempts"] == [] for r in after["runs"]) for c in cut)
    listed = {r["run_id"]: r["status"]["status"] for r in RunStore(tmp_path / "runs").list_runs()}
    assert sorted(listed) == sorted(r["run_id"] for r in after["runs"]) and set(listed.values()) == {"completed"}


def _break(root: Path) -> None:
    """Four problems: a missing task folder, a missing list, an unreadable image, a wrong class count."""
    shutil.rmtree(root / "synth-textures")
    (root / "synth-count" / "test.txt").unlink()
    first = (root / "synth-objects" / "train800.txt").read_text().splitlines()[0].rsplit(" ", 1)[0]
    (root / "synth-objects" / first).write_bytes(b"not an image")
    test = root / "synth-orientation" / "test.txt"
    path = test.read_text().splitlines()[0].rsplit(" ", 1)[0]
    test.write_text(test.read_text() + f"{path} 8\n")  # labels 0..8: 9 classes, the task has 8


def test_invalid_root_is_refused_before_training(tmp_path: Path, capsys) -> None:
    root = tmp_path / "demo"
    make_demo(root, "vtab1k", SIZES)
    _break(root)
    runs = tmp_path / "runs"
    code = main(["suite", "vtab1k", "--data-root", str(root), "--runs-dir", str(runs), *_flags(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and "4 problem(s)" in err
    for problem in ("synth-textures: no folder synth-textures", "synth-count: missing test.txt",
                    "synth-objects: 1 unreadable image(s)", "synth-orientation: the lists use 9 classes"):
        assert problem in err
    assert not runs.exists(), "nothing may be created before the root is valid"


def test_many_problems_are_capped_in_one_line(tmp_path: Path) -> None:
    for task in VTAB1K_TASKS:  # the published 19 tasks, each folder with a broken test.txt only
        (tmp_path / task.folder_names[-1]).mkdir()
        (tmp_path / task.folder_names[-1] / "test.txt").write_text("no label here\n")
    with pytest.raises(DataError) as info:
        check_vtab_root(tmp_path, VTAB1K_TASKS)
    text = str(info.value)
    assert "38 problem(s)" in text and text.endswith("and run again.") and "; and 18 more." in text
    assert "oxford_iiit_pet: missing train800val200.txt" in text  # found under its alias oxford_pet


def test_fewshot_demo_suite(tmp_path: Path) -> None:
    root = tmp_path / "fgfs"
    make_demo(root, "fewshot", SIZES)
    assert (root / "few-shot_split" / "synth-count" / "annotations" / "train_meta.list.num_shot_16.seed_2").is_file()
    with pytest.raises(DataError, match=r"synth-count: missing train_meta.list.num_shot_32.seed_0"):
        check_fewshot_root(root, read_protocol("fewshot", root).select(["synth-count"]), [32], [0])
    spec = SuiteSpec(protocol="fewshot", data_root=str(root), tasks=["synth-count"], methods=["probe"],
                     seeds=[0], shots=[1, 2], values=_settings(tmp_path))
    doc = run_suite(spec, tmp_path / "runs")
    assert doc["status"] == "completed"
    store = RunStore(tmp_path / "runs")
    for run in doc["runs"]:
        config = TrainConfig.from_dict(read_json(store.path(run["run_id"]) / "config.json"))
        assert config.dataset.endswith(f"train_meta.list.num_shot_{run['shot']}.seed_0") and not config.train_on_val
        summary = store.read_summary(run["run_id"])
        assert summary["num_classes"] == 8 and run["test_acc"] == summary["test_acc"]
    average = doc["results"]["final"]["average"]
    assert average["2"]["probe"]["mean"] == pytest.approx(doc["runs"][1]["test_acc"])


def test_cli_show_list_and_conflicting_suite_id(demo, capsys) -> None:
    assert main(["suite", "show", "demo", "--runs-dir", str(demo.runs)]) == 0
    assert "| **Mean** (of the group means)" in capsys.readouterr().out
    assert main(["suite", "list", "--runs-dir", str(demo.runs)]) == 0
    assert "demo" in capsys.readouterr().out and list_suites(demo.runs)[0]["completed"] == 16
    argv = ["suite", "vtab1k", "--data-root", str(demo.root), "--runs-dir", str(demo.runs), "--suite-id", "demo",
            "--methods", "lora", *_flags(demo.base)]
    assert main(argv) == 2
    assert "suite demo was started with other settings (methods" in capsys.readouterr().err
    assert main(["suite", "resume", "nope", "--runs-dir", str(demo.runs)]) == 2
    assert "no suite 'nope'" in capsys.readouterr().err


def test_compare_view_shows_the_suite(demo) -> None:
    pytest.importorskip("gradio")
    from components.compare import suite_choices, suite_table  # local: only this test pays for gradio

    runner = SimpleNamespace(runs_dir=demo.runs)
    assert suite_choices(runner, None).value == "demo"
    markdown = suite_table(runner, "demo")
    assert markdown == suite_markdown("demo", demo.runs) and "| **structured mean** |" in markdown
    assert json.loads((demo.runs / "suites" / "demo" / "suite.json").read_text())["suite_id"] == "demo"
