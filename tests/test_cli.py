"""The ``karst`` command: exit codes, one-line errors, JSON outputs, the train → export → predict path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_backbone, trained_run
from PIL import Image

from karst.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_json(capsys) -> None:
    # (`python -m karst` itself runs in test_jobs: the worker is `python -m karst worker`.)
    code, out, _ = _run(capsys, "list", "--json")
    assert code == 0
    listing = json.loads(out.strip().splitlines()[-1])
    assert listing["backbones"][0]["name"] == "karst-vit-micro" and listing["backbones"][0]["embedded"]
    assert listing["datasets"][0]["embedded"] and "synth-objects" in [d["name"] for d in listing["datasets"]]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--lr", "-1"], "lr=-1.0 must be a finite number > 0"),
        (["train", "--method", "dora"], "method='dora' is not a valid choice"),
        (["train", "--rescale", "both"], "rescale='both'"),
        (["train", "--epochs", "0"], "epochs=0"),
        (["train", "--config", "/nonexistent.json"], "does not exist"),
        (["export", "no-such-run"], "no run 'no-such-run'"),
        (["predict", "missing.safetensors", "x.png"], "does not exist"),
        (["cancel", "../x"], "not a valid run id"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path: Path, argv: list[str], match: str) -> None:
    code, out, err = _run(capsys, *argv, "--runs-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("karst: error: ") and match in err


@pytest.mark.parametrize("argv", [["train", "--bogus"], ["train", "--epochs", "two"], ["nope"], []])
def test_argparse_errors_exit_2(capsys, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip()


def test_config_file_with_unknown_field(capsys, tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochs": 2, "learning_rate": 0.1}))
    code, _, err = _run(capsys, "train", "--config", str(cfg), "--runs-dir", str(tmp_path))
    assert code == 2 and "unknown TrainConfig field(s) learning_rate" in err


def test_settings_that_do_not_fit_the_backbone(capsys, tmp_path: Path) -> None:
    code, _, err = _run(capsys, "train", "--backbone", str(tiny_backbone(tmp_path)), "--stack", "5",
                        "--runs-dir", str(tmp_path / "runs"))
    # Progress lines may precede it; the error is one line, printed once, last.
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("karst: error: m=5 does not divide") and err.count("error") == 1
    # The attempt is on record as a failed run.
    code, out, _ = _run(capsys, "runs", "--json", "--runs-dir", str(tmp_path / "runs"))
    assert [r["status"]["status"] for r in json.loads(out)] == ["failed"]


def test_train_export_predict_runs(capsys, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cfg = tmp_path / "base.json"
    cfg.write_text(json.dumps({"probe_size": 8, "max_train_samples": 64, "warmup_epochs": 0}))
    code, out, err = _run(capsys, "train", "--config", str(cfg), "--backbone", str(tiny_backbone(tmp_path)),
                          "--epochs", "1", "--batch-size", "32", "--rank", "2", "--lr", "0.003", "--seed", "5",
                          "--device", "cpu", "--runs-dir", str(runs), "--json")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    for key in ("run_id", "status", "val_acc", "test_acc", "trainable_params", "seconds", "device"):
        assert key in summary
    assert summary["status"] == "completed" and summary["device"] == "cpu"
    assert "epoch 1/1" in err  # progress lines on stderr (not a terminal: one line per epoch)
    config = json.loads((runs / summary["run_id"] / "config.json").read_text())
    assert config["method"]["adapter"]["rank"] == 2 and config["probe_size"] == 8 and config["seed"] == 5

    code, out, _ = _run(capsys, "runs", "--json", "--runs-dir", str(runs))
    assert code == 0 and json.loads(out)[0]["run_id"] == summary["run_id"]
    code, out, _ = _run(capsys, "runs", "--runs-dir", str(runs))
    assert summary["run_id"] in out and "completed" in out

    merged = tmp_path / "export" / "model.safetensors"
    code, out, _ = _run(capsys, "export", summary["run_id"], "--out", str(merged), "--runs-dir", str(runs))
    assert code == 0 and merged.is_file() and merged.with_suffix(".json").is_file()

    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    code, out, _ = _run(capsys, "predict", str(merged), str(image), "--top-k", "3", "--json")
    result = json.loads(out)
    assert code == 0 and len(result) == 1 and len(result[0]["top_k"]) == 3
    code, out2, _ = _run(capsys, "predict", summary["run_id"], str(image), "--top-k", "3", "--json",
                         "--runs-dir", str(runs))
    assert json.loads(out2)[0]["top_k"][0]["class"] == result[0]["top_k"][0]["class"]

    code, out, _ = _run(capsys, "delete", summary["run_id"], "--runs-dir", str(runs))
    assert code == 0 and not (runs / summary["run_id"]).exists()


def test_cancel_and_delete_of_a_finished_run(capsys, tmp_path_factory) -> None:
    run = trained_run(tmp_path_factory.getbasetemp())
    code, out, _ = _run(capsys, "cancel", run.name, "--runs-dir", str(run.parent))
    assert code == 0 and "completed" in out  # nothing to cancel


def test_bench_is_delegated(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0 and "karst bench" in capsys.readouterr().out


def test_train_help_gives_each_methods_learning_rate(capsys) -> None:
    # The lr default follows --method: the help must not show KARST's as if it were everyone's.
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exc.value.code == 0
    assert "(karst 0.01, lora 0.003, lokr 0.01, full 0.001, probe 0.03)" in out
