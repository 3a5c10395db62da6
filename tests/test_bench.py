"""The benchmark machinery (smoke only: no timed assertions); the fused path it measures is tested in
test_kron.py."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
import torch.nn as nn
from helpers import TINY_MODELS

from karst.bench import (
    METHOD_SPECS,
    BenchConfig,
    _build_floor,
    _config,
    _parser,
    format_table,
    main,
    peak_tensor_bytes,
    run_benchmark,
)
from karst.errors import ConfigError

VIT, TINY_VIT = TINY_MODELS["vit"]


def test_peak_tensor_bytes_counts_live_temporaries():
    a = torch.zeros(1000)  # 4000 bytes, listed as persistent

    def step():
        b = a + 1  # +4000 live
        c = b * 2  # +4000 live: peak 12000
        del b, c
        d = torch.ones(500)  # after b and c are freed: 6000 < peak
        return d.sum()

    assert peak_tensor_bytes(step, [a]) == 12000


def test_run_benchmark_smoke():
    methods = list(METHOD_SPECS)
    rows = run_benchmark(
        BenchConfig(
            models=(VIT,),
            methods=methods,
            device="cpu",
            batch_size=2,
            steps=2,
            warmup=1,
            model_kwargs=TINY_VIT,
            clock="cpu",
        )
    )
    assert [r["method"] for r in rows] == methods
    by = {r["method"]: r for r in rows}
    for r in rows:
        assert r["ms_step"] > 0 and r["peak_mb"] > 0 and r["infer_ms"] > 0 and r["trainable_params"] > 0
        assert r["merge_max_abs_err"] < 1e-4, r["method"]  # merged model = adapted model
    assert by["lora"]["ms_step_vs_lora"] == pytest.approx(1.0) and by["lora"]["peak_vs_lora"] == pytest.approx(1.0)
    assert by["probe"]["saved_mb"] < by["floor"]["saved_mb"] < by["lora"]["saved_mb"]
    assert by["full"]["trainable_params"] == by["full"]["total_params"]
    table = format_table(rows)
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| method | trainable params | ms/step | × LoRA | × LoKr | peak memory (MB) | × LoRA")
    assert len(lines) == 1 + len(methods)


def test_floor_row_trains_norms_and_head_only(one_thread):
    # The floor: every LayerNorm and the head train (the head the adapters train too), nothing else;
    # backward runs through the whole frozen backbone, so it saves more than the probe, less than LoRA.
    model = _build_floor(timm.create_model(VIT, pretrained=False, num_classes=10, **TINY_VIT))
    norms = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    assert len(norms) == 2 * (2 * TINY_VIT["depth"] + 1)  # norm1, norm2 per block, the final norm
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == norms | {"head.weight", "head.bias"}

    rows = run_benchmark(BenchConfig(
        models=(VIT,), methods=("lora", "lokr", "floor", "probe"), device="cpu", batch_size=2, steps=2,
        warmup=0, model_kwargs=TINY_VIT, inference=False, clock="cpu",
    ))  # fmt: skip
    by = {r["method"]: r for r in rows}
    assert by["floor"]["trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert by["probe"]["saved_mb"] < by["floor"]["saved_mb"] < by["lora"]["saved_mb"]
    assert by["lokr"]["ms_step_vs_lokr"] == pytest.approx(1.0)
    assert by["floor"]["ms_step_vs_lora"] > 0 and by["floor"]["ms_step_vs_lokr"] > 0
    row = next(ln for ln in format_table(rows).splitlines() if ln.startswith("| floor"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "floor (norms + head)"
    assert cells[4] == format(by["floor"]["ms_step_vs_lokr"], ".2f")  # the × LoKr column


def test_ratio_columns_are_empty_without_their_reference():
    rows = run_benchmark(BenchConfig(
        models=(VIT,), methods=("karst", "floor"), device="cpu", batch_size=1, steps=1, warmup=0,
        model_kwargs=TINY_VIT, memory=False, inference=False, clock="cpu",
    ))  # fmt: skip
    assert all(r["ms_step_vs_lora"] is None and r["ms_step_vs_lokr"] is None for r in rows)
    assert "| floor (norms + head) | " in format_table(rows)


def test_main_writes_table_and_json(tmp_path, capsys):
    out, js = tmp_path / "r.md", tmp_path / "r.json"
    code = main(
        ["--models", VIT, "--methods", "karst,lora", "--device", "cpu", "--steps", "1",
         "--warmup", "0", "--batch-size", "1", "--no-inference", "--no-memory", "--quiet",
         "--out", str(out), "--json", str(js)]
    )  # fmt: skip
    assert code == 0
    assert "| karst |" in capsys.readouterr().out
    assert "torch" in out.read_text() and "| lora |" in out.read_text()
    assert [r["method"] for r in json.loads(js.read_text())] == ["karst", "lora"]


@pytest.mark.parametrize(
    ("settings", "field", "shown"),
    [
        ({"methods": ["dora"]}, "methods", "['dora']"),
        ({"methods": []}, "methods", "methods=[]"),
        ({"steps": 0}, "steps", "steps=0"),
        ({"warmup": -1}, "warmup", "warmup=-1"),
        ({"threads": 0}, "threads", "threads=0"),
        ({"clock": "gpu"}, "clock", "clock='gpu'"),
        ({"clock": "cpu", "device": "cuda"}, "clock", "clock='cpu'"),
    ],
)
def test_bench_config_names_the_bad_setting(settings, field, shown):
    with pytest.raises(ConfigError, match=re.escape(shown)) as err:
        BenchConfig(**settings)
    assert err.value.field == field


def test_flags_come_from_bench_config():
    config = _config(_parser().parse_args(["--models", "a,b", "c", "--steps", "2", "--no-memory", "--threads", "1"]))
    assert config == BenchConfig(models=("a", "b", "c"), steps=2, memory=False, threads=1)
    assert _config(_parser().parse_args([])) == BenchConfig()


def test_main_rejects_unknown_method(capsys):
    assert main(["--methods", "dora", "--device", "cpu", "--quiet"]) == 2
    assert "dora" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is visible")
def test_main_cuda_without_gpu_is_a_clear_error(capsys):
    assert main(["--device", "cuda", "--methods", "lora", "--quiet"]) == 2
    assert "CUDA" in capsys.readouterr().err
