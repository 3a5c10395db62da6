"""The fused KARST autograd path (exactness, what it saves) and the benchmark machinery (smoke only:
no timed assertions)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from karst import KarstConfig, KarstLinear
from karst.bench import METHOD_SPECS, format_table, main, peak_tensor_bytes, run_benchmark, saved_tensor_bytes

TINY_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)


def _layer(rescale: str, dtype: torch.dtype, d_in: int = 24, d_out: int = 36, bias: bool = True) -> KarstLinear:
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=bias).to(dtype)
    layer = KarstLinear(base, KarstConfig(n_kernels=2, stack_dim=4, rank=3, rescale=rescale))
    with torch.no_grad():  # non-trivial values everywhere (B, s1, s2 start at zero)
        for name, p in layer.named_parameters():
            if not name.startswith("base."):
                p.normal_(0.0, 0.5)
    return layer


def _grads(layer: KarstLinear, x: torch.Tensor, fused: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x) if fused else layer._forward_autograd(x)
    weight = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view(out.shape)
    (out * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    grads["x"] = x.grad.clone()
    return out.detach(), grads


@pytest.mark.parametrize("rescale", ["channel", "scalar", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead", [(5,), (2, 3), (2, 3, 4)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_fused_path_matches_autograd(rescale, dtype, lead, contiguous):
    layer = _layer(rescale, dtype)
    torch.manual_seed(1)
    if contiguous:
        x = torch.randn(*lead, 24, dtype=dtype)
    else:  # a transposed view, as attention outputs are before their reshape
        x = torch.randn(24, *lead, dtype=dtype).movedim(0, -1)
        assert not x.is_contiguous()
    out_f, grads_f = _grads(layer, x, fused=True)
    out_a, grads_a = _grads(layer, x, fused=False)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_f, out_a, **tol)
    assert grads_f.keys() == grads_a.keys()
    for name in grads_a:
        assert grads_f[name].shape == grads_a[name].shape, name
        torch.testing.assert_close(grads_f[name], grads_a[name], **tol, msg=name)


def test_fused_path_without_bias_and_frozen_input():
    layer = _layer("channel", torch.float64, bias=False)
    x = torch.randn(3, 24, dtype=torch.float64)  # no grad wanted for x: only parameters get one
    out = layer(x)
    out.sum().backward()
    assert all(p.grad is not None for n, p in layer.named_parameters() if not n.startswith("base."))
    torch.testing.assert_close(out, layer._forward_autograd(x))


@pytest.mark.parametrize("rescale", ["channel", "none"])
def test_fused_path_saves_only_input_and_output(rescale):
    layer = _layer(rescale, torch.float32, d_in=64, d_out=128)
    x = torch.randn(50, 64, requires_grad=True)
    params = list(layer.parameters())
    saved, out = saved_tensor_bytes(lambda: layer(x), exclude=params)
    expected = x.numel() * 4 + (out.numel() * 4 if rescale != "none" else 0)
    assert saved == expected
    saved_autograd, _ = saved_tensor_bytes(lambda: layer._forward_autograd(x), exclude=params)
    assert saved_autograd > saved


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
        ["vit_tiny_patch16_224"],
        methods,
        device="cpu",
        batch_size=2,
        steps=2,
        warmup=1,
        model_kwargs=TINY_VIT,
        clock="cpu",
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
    import timm

    from karst.bench import _build_floor

    model = _build_floor(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TINY_VIT))
    norms = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    assert len(norms) == 2 * (2 * TINY_VIT["depth"] + 1)  # norm1, norm2 per block, the final norm
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == norms | {"head.weight", "head.bias"}

    rows = run_benchmark(
        ["vit_tiny_patch16_224"], ["lora", "lokr", "floor", "probe"], device="cpu", batch_size=2, steps=2,
        warmup=0, model_kwargs=TINY_VIT, inference=False, clock="cpu",
    )  # fmt: skip
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
    rows = run_benchmark(
        ["vit_tiny_patch16_224"], ["karst", "floor"], device="cpu", batch_size=1, steps=1, warmup=0,
        model_kwargs=TINY_VIT, memory=False, inference=False, clock="cpu",
    )  # fmt: skip
    assert all(r["ms_step_vs_lora"] is None and r["ms_step_vs_lokr"] is None for r in rows)
    assert "| floor (norms + head) | " in format_table(rows)


def test_main_writes_table_and_json(tmp_path, capsys):
    out, js = tmp_path / "r.md", tmp_path / "r.json"
    code = main(
        ["--models", "vit_tiny_patch16_224", "--methods", "karst,lora", "--device", "cpu", "--steps", "1",
         "--warmup", "0", "--batch-size", "1", "--no-inference", "--no-memory", "--quiet",
         "--out", str(out), "--json", str(js)]
    )  # fmt: skip
    assert code == 0
    assert "| karst |" in capsys.readouterr().out
    assert "torch" in out.read_text() and "| lora |" in out.read_text()
    assert [r["method"] for r in json.loads(js.read_text())] == ["karst", "lora"]


def test_main_rejects_unknown_method(capsys):
    assert main(["--methods", "dora", "--device", "cpu", "--quiet"]) == 2
    assert "dora" in capsys.readouterr().err


@pytest.mark.parametrize("rescale", ["channel", "none"])
def test_fused_path_under_bf16_autocast(rescale):
    # CUDA runs train under bf16 autocast; CPU autocast exercises the same mixed-dtype paths
    # (in-place GEMMs are not autocast, so the fused function must cast their operands itself).
    layer = _layer(rescale, torch.float32)
    x = torch.randn(2, 5, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, grads_f = _grads(layer, x, fused=True)
        out_a, grads_a = _grads(layer, x, fused=False)
    torch.testing.assert_close(out_f.float(), out_a.float(), rtol=0.05, atol=0.1)
    for name in grads_a:
        assert grads_f[name].dtype == grads_a[name].dtype, name
        torch.testing.assert_close(grads_f[name].float(), grads_a[name].float(), rtol=0.05, atol=0.2, msg=name)


@pytest.mark.parametrize("rescale", ["channel", "scalar"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_path_recompute_output(rescale, dtype):
    # The opt-in mode keeps only x and recomputes z in backward: same gradients, less saved.
    from karst._kron import KronRescaleFunction

    layer = _layer(rescale, dtype, d_in=24, d_out=36)
    torch.manual_seed(1)
    x = torch.randn(2, 5, 24, dtype=dtype)
    _, grads_a = _grads(layer, x, fused=False)
    params = [layer.C, layer.A, layer.B, layer.s1, layer.s2]
    xg = x.clone().requires_grad_(True)
    base = layer.base
    saved, out = saved_tensor_bytes(
        lambda: KronRescaleFunction.apply(xg, base.weight, base.bias, *params[:3], *params[3:], True),
        exclude=list(layer.parameters()),
    )
    assert saved == x.numel() * x.element_size()
    weight = torch.linspace(-1.0, 1.0, out.numel(), dtype=dtype).view(out.shape)
    grads = torch.autograd.grad((out * weight).sum(), [xg, *params])
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for name, grad in zip(["x", "C", "A", "B", "s1", "s2"], grads):
        torch.testing.assert_close(grad, grads_a[name], **tol, msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is visible")
def test_main_cuda_without_gpu_is_a_clear_error(capsys):
    assert main(["--device", "cuda", "--methods", "lora", "--quiet"]) == 2
    assert "CUDA" in capsys.readouterr().err
