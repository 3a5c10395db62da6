"""scripts/gpu_check.py works end to end: its --smoke mode on the CPU (the GPU run itself needs a device)."""

from __future__ import annotations

import json

import pytest
from helpers import load_script

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gpu_check_smoke_on_cpu_writes_every_part(tmp_path, capsys):
    gpu_check = load_script("gpu_check.py")
    assert gpu_check.main(["--device", "cpu", "--smoke", "--out-dir", str(tmp_path)]) == 0
    (result_file,) = tmp_path.glob("*_gpu_check_cpu_smoke.json")
    result = json.loads(result_file.read_text())
    fused = result["fused_vs_autograd"]
    assert {r["dtype"] for r in fused} == {"float32", "bfloat16"}
    # The fused path computes the same output and gradients as autograd, to each dtype's precision.
    assert all(r["max_rel_err"] < (1e-5 if r["dtype"] == "float32" else 3e-2) for r in fused)
    assert {(r["method"], r["batch"]) for r in result["bench"]} >= {("karst", 2), ("lora", 4), ("floor", 4)}
    assert result["recipe_epoch"]["status"] == "completed" and result["recipe_epoch"]["median_img_per_s"] > 0


def test_gpu_check_without_cuda_says_how_to_run_it(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal path does not apply")
    assert load_script("gpu_check.py").main(["--device", "cuda"]) == 2
    assert "--device cpu --smoke" in capsys.readouterr().err
