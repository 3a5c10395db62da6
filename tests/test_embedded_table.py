"""scripts/embedded_table.py: the README's comparison table (a real one-row run and the formatting)."""

from __future__ import annotations

import json

import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def table():
    return load_script("embedded_table.py")


def _row(task, row, acc, params=100, seconds=10.0, lr=1e-3):
    return {"task": task, "row": row, "lr": lr, "test_acc": acc, "trainable_params": params,
            "seconds": seconds, "status": "completed"}


def test_markdown_bolds_the_best_real_method_and_reports_the_gap_to_the_probe(table):
    results = [
        _row("a", "linear probe", 0.40), _row("a", "KARST (N=2, m=8, r=8)", 0.60),
        _row("a", "KARST, random backbone", 0.90),  # never "best": it is the control row
        _row("b", "linear probe", 0.50), _row("b", "KARST (N=2, m=8, r=8)", 0.45),
    ]
    md = table.markdown(results)
    lines = md.splitlines()
    karst = next(line for line in lines if line.startswith("| KARST (N=2"))
    probe = next(line for line in lines if line.startswith("| linear probe"))
    random = next(line for line in lines if line.startswith("| KARST, random"))
    assert "**60.0**" in karst and "| 45.0 |" in karst and "52.5" in karst  # mean over both tasks
    assert "**50.0**" in probe
    assert "**" not in random and "–" in random  # random row ran on one task only: no mean
    assert "a +20.0, b +0.0" in md


def test_one_real_row_runs_and_round_trips_through_json(table, tmp_path, capsys, one_thread):
    out = tmp_path / "r.json"
    results = table.main(["--tasks", "synth-count", "--rows", "linear probe", "--epochs", "1", "--threads", "1",
                          "--json", str(out)])
    assert len(results) == 1 and results[0]["status"] == "completed"
    assert 0.0 <= results[0]["test_acc"] <= 1.0 and results[0]["trainable_params"] == 128 * 8 + 8
    assert json.loads(out.read_text()) == results
    table.main(["--from-json", str(out)])
    assert "| linear probe | 0.03 | 1,032 |" in capsys.readouterr().out
