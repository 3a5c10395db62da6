"""What the app draws about a KARST run: kernels, spectra, re-scaling and feature alignment.

Everything is read from the run's snapshots (``snapshots/epoch_NNN.safetensors`` and
``stats_NNN.json``, epoch 0 = before training), so it works for running, finished, cancelled and
interrupted runs alike, and costs no model rebuild. Results are NumPy arrays and plain dicts.

Kernel indices follow the paper: ``kernel=i`` selects ``C_i`` and ``A_i B_i`` with i in 1..N.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ._kron import kron_delta
from .config import TrainConfig
from .errors import RunError
from .runs import decode_array, read_json, saved_epochs

__all__ = [
    "epochs",
    "layers",
    "layer_tensors",
    "delta_weight",
    "kernel_view",
    "singular_values",
    "lora_equal_budget_rank",
    "alignment_view",
    "gap_history",
    "downsample",
    "read_stats",
    "STAT_LABELS",
]

# Labels of the three outputs compared on the probe batch (see KarstLinear.forward_parts).
STAT_LABELS = {
    "base": "pre-trained (W0x+b0)",
    "pre": "before re-scaling (+ΔWx)",
    "out": "after re-scaling",
}


def _run_dir(run: str | Path) -> Path:
    run = Path(run)
    if not (run / "config.json").is_file():
        raise RunError(f"{run} is not a run folder (no config.json); pick a run from the list.")
    return run


def _snap(run: Path, epoch: int, kind: str) -> Path:
    suffix = "safetensors" if kind == "epoch" else "json"
    return run / "snapshots" / f"{kind}_{epoch:03d}.{suffix}"


def epochs(run: str | Path) -> list[int]:
    """Epochs with saved adapter tensors (0 = before training), ascending."""
    return saved_epochs(_run_dir(run), "epoch")


def layers(run: str | Path) -> list[str]:
    """Names of the run's KARST layers (empty for other methods)."""
    run = _run_dir(run)
    saved = epochs(run)
    if not saved:
        return []
    with safe_open(str(_snap(run, saved[0], "epoch")), framework="pt") as f:
        names = (f.metadata() or {}).get("karst_layers", "")
    return [n for n in names.split(",") if n]


def _check_epoch(run: Path, epoch: int | None, available: list[int], what: str) -> int:
    if not available:
        raise RunError(f"run {run.name} has no saved {what} yet; they appear after epoch 0 is snapshotted.")
    if epoch is None:
        return available[-1]
    if epoch not in available:
        raise RunError(f"epoch {epoch} of run {run.name} has no saved {what}; saved epochs: {available}.")
    return epoch


def layer_tensors(run: str | Path, layer: str, epoch: int | None = None) -> dict[str, np.ndarray | None]:
    """``C`` (N,m,m), ``A`` (N,d_out/m,r), ``B`` (N,r,d_in/m), ``s1``, ``s2`` of one layer at ``epoch``.

    ``epoch=None`` is the newest snapshot. ``s1``/``s2`` are None for ``rescale="none"``.
    """
    run = _run_dir(run)
    epoch = _check_epoch(run, epoch, epochs(run), "adapter snapshots")
    known = layers(run)
    if layer not in known:
        raise RunError(f"{layer!r} is not a KARST layer of run {run.name}; layers: {', '.join(known[:6])}, ...")
    out: dict[str, np.ndarray | None] = {}
    with safe_open(str(_snap(run, epoch, "epoch")), framework="pt") as f:
        keys = set(f.keys())
        for name in ("C", "A", "B", "s1", "s2"):
            key = f"{layer}.{name}"
            out[name] = f.get_tensor(key).double().numpy() if key in keys else None
    if out["C"] is None:
        raise RunError(f"snapshot epoch {epoch} of run {run.name} lacks {layer}.C; it was not written by karst.")
    return out


def delta_weight(tensors: dict[str, np.ndarray | None], scale: float = 1.0) -> np.ndarray:
    """ΔW = scale · Σ_i C_i ⊗ (A_i B_i) (scale = α/r, see KarstLinear), float64, (d_out, d_in)."""
    C, A, B = (torch.from_numpy(np.asarray(tensors[k], dtype=np.float64)) for k in ("C", "A", "B"))
    return kron_delta(C, A * scale, B).numpy()


def _delta_scale(run: Path) -> float:
    adapter = TrainConfig.from_dict(read_json(run / "config.json")).method.adapter
    return 1.0 if adapter.alpha is None else adapter.alpha / adapter.rank


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """Singular values, descending (float64)."""
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


def _layer_with_spectrum(run: Path, layer: str, epoch: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """The layer's tensors, ΔW and its singular values, cached: the SVD of a ViT-B layer's ΔW takes
    seconds, and every kernel of a layer (and every redraw) shares it. The snapshot's mtime is part
    of the key, so a rewritten file is never served stale."""
    snap = _snap(run, epoch, "epoch")
    return _cached_layer_with_spectrum(str(run), layer, epoch, snap.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _cached_layer_with_spectrum(run: str, layer: str, epoch: int, mtime_ns: int) -> tuple[dict, np.ndarray, np.ndarray]:
    tensors = layer_tensors(run, layer, epoch)
    delta = delta_weight(tensors, _delta_scale(Path(run)))
    sv = singular_values(delta)
    for array in (*tensors.values(), delta, sv):  # shared between callers: nobody may modify them
        if array is not None:
            array.setflags(write=False)
    return tensors, delta, sv


def lora_equal_budget_rank(d_out: int, d_in: int, n_kernels: int, stack_dim: int, rank: int) -> int:
    """r' such that a LoRA ``B'A'`` (r'·(d_in+d_out) numbers) costs at most what ΔW costs.

    ΔW's budget is N·(m² + r·(d_out+d_in)/m) (re-scaling excluded: LoRA has no counterpart).
    """
    budget = n_kernels * (stack_dim**2 + rank * (d_out + d_in) // stack_dim)
    return max(1, budget // (d_in + d_out))


def kernel_view(run: str | Path, layer: str, kernel: int = 1, epoch: int | None = None) -> dict[str, Any]:
    """Matrices and spectrum of one kernel of one layer at one epoch.

    Args:
        run: run folder.
        layer: a name from :func:`layers`.
        kernel: i in 1..N.
        epoch: a saved epoch (None = newest).

    Returns:
        ``C`` (m,m), ``AB`` (d_out/m, d_in/m), ``kron`` (C_i ⊗ A_i B_i, d_out×d_in), ``delta`` (ΔW),
        ``sv`` (singular values of ΔW), ``lora_sv`` and ``lora_rank`` (see below), ``s1``, ``s2``,
        ``rank_numeric`` (singular values above 1e-6·max), ``lora_energy`` (share of ‖ΔW‖²_F that
        rank r' can hold), ``epoch``, ``kernel``, ``n_kernels`` and ``note``.

        ``lora_sv`` are the singular values of the best rank-r' approximation of this ΔW
        (Eckart–Young), r' from :func:`lora_equal_budget_rank`: the most of this update a LoRA
        with the same parameter count could represent. It is not a trained LoRA.
    """
    run = _run_dir(run)
    epoch = _check_epoch(run, epoch, epochs(run), "adapter snapshots")
    t, delta, sv = _layer_with_spectrum(run, layer, epoch)
    n, m = t["C"].shape[0], t["C"].shape[1]
    if not 1 <= kernel <= n:
        raise RunError(f"kernel={kernel} is out of range; this layer has kernels 1..{n}.")
    C, A, B = t["C"][kernel - 1], t["A"][kernel - 1], t["B"][kernel - 1]
    AB = A @ B
    d_out, d_in = delta.shape
    r_lora = lora_equal_budget_rank(d_out, d_in, n, m, A.shape[1])
    lora_sv = np.concatenate([sv[:r_lora], np.zeros(max(0, len(sv) - r_lora))])
    energy = float((sv[:r_lora] ** 2).sum() / (sv**2).sum()) if sv.any() else None
    rank_numeric = int((sv > sv[0] * 1e-6).sum()) if sv.any() else 0
    note = (
        f"ΔW ({d_out}×{d_in}) has numerical rank {rank_numeric} (≤ N·m·r = {n * m * A.shape[1]}). "
        f"A LoRA with the same parameter count has rank {r_lora}; the dashed line is the best rank-{r_lora} "
        "approximation of this ΔW"
        + (f", holding {100 * energy:.1f}% of its energy." if energy is not None else ".")
    )
    if not sv.any():
        note = "ΔW is zero (B starts at zero: epoch 0 is the pre-trained model). " + note
    return {
        "epoch": epoch,
        "kernel": kernel,
        "n_kernels": n,
        "C": C,
        "AB": AB,
        "kron": np.kron(C, AB),
        "delta": delta,
        "sv": sv,
        "lora_sv": lora_sv,
        "lora_rank": r_lora,
        "lora_energy": energy,
        "rank_numeric": rank_numeric,
        "s1": t["s1"],
        "s2": t["s2"],
        "note": note,
    }


def _stats_file(run: Path, epoch: int) -> dict[str, Any]:
    data = read_json(_snap(run, epoch, "stats"))
    if data is None:
        raise RunError(f"epoch {epoch} of run {run.name} has no feature statistics.")
    return data


def gap_history(run: str | Path, layer: str) -> dict[str, Any]:
    """The scalar alignment gap of ``layer`` at every saved epoch.

    Returns:
        ``{"epochs": [...], "gaps": {label: [...]}}`` with labels of "before re-scaling" and
        "after re-scaling" (see ``karst.runs.alignment_gaps`` for the definition).
    """
    run = _run_dir(run)
    summary = read_json(run / "snapshots" / "gaps.json")
    if summary is None or layer not in summary.get("layers", {}):
        # Older or partial run: rebuild from the stats files themselves.
        summary = {"epochs": [], "layers": {layer: {"pre": [], "out": []}}}
        for e in saved_epochs(run, "stats"):
            entry = _stats_file(run, e)["layers"].get(layer)
            if entry is not None:
                summary["epochs"].append(e)
                summary["layers"][layer]["pre"].append(entry["gap_pre"])
                summary["layers"][layer]["out"].append(entry["gap_out"])
    row = summary["layers"].get(layer, {"pre": [], "out": []})
    return {"epochs": list(summary["epochs"]), "gaps": {STAT_LABELS["pre"]: row["pre"], STAT_LABELS["out"]: row["out"]}}


def alignment_view(run: str | Path, layer: str, epoch: int | None = None) -> dict[str, Any]:
    """Per-channel output statistics of one layer on the probe batch, and the gap over epochs.

    Returns:
        ``stats``: {label: {"mean": array, "std": array}} for the pre-trained output W0x+b0, the
        adapted output before and after re-scaling (labels in :data:`STAT_LABELS`);
        ``gap_now``: {label: float} at this epoch; ``epochs`` and ``gaps`` from
        :func:`gap_history`; ``s1``, ``s2`` at this epoch (None if not saved); ``epoch``.
    """
    run = _run_dir(run)
    epoch = _check_epoch(run, epoch, saved_epochs(run, "stats"), "feature statistics")
    data = _stats_file(run, epoch)
    entry = data["layers"].get(layer)
    if entry is None:
        known = ", ".join(list(data["layers"])[:4])
        raise RunError(f"{layer!r} has no statistics in run {run.name}; pick one of {known}, ...")
    stats = {
        label: {"mean": decode_array(entry[f"{key}_mean"]), "std": decode_array(entry[f"{key}_std"])}
        for key, label in STAT_LABELS.items()
    }
    s1 = s2 = None
    if epoch in epochs(run):
        t = layer_tensors(run, layer, epoch)
        s1, s2 = t["s1"], t["s2"]
    history = gap_history(run, layer)
    return {
        "epoch": epoch,
        "stats": stats,
        "gap_now": {STAT_LABELS["pre"]: entry["gap_pre"], STAT_LABELS["out"]: entry["gap_out"]},
        "epochs": history["epochs"],
        "gaps": history["gaps"],
        "s1": s1,
        "s2": s2,
    }


def downsample(matrix: np.ndarray, max_side: int = 256) -> tuple[np.ndarray, int]:
    """Block-average a 2-D array so neither side exceeds ``max_side``; returns (array, factor).

    Averaging (not striding) keeps every entry's contribution visible in a heatmap. Edges that
    do not fill a whole block are averaged over what is there.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"downsample expects a 2-D array, got shape {matrix.shape}")
    factor = max(1, -(-max(matrix.shape) // max_side))
    if factor == 1:
        return matrix, 1
    rows, cols = -(-matrix.shape[0] // factor), -(-matrix.shape[1] // factor)
    padded = np.full((rows * factor, cols * factor), np.nan)
    padded[: matrix.shape[0], : matrix.shape[1]] = matrix
    blocks = padded.reshape(rows, factor, cols, factor)
    return np.nanmean(blocks, axis=(1, 3)), factor


def read_stats(run: str | Path, epoch: int) -> dict[str, dict[str, np.ndarray]]:
    """All layers' decoded statistics at ``epoch`` (for notebooks): {layer: {"base_mean": ...}}."""
    data = _stats_file(_run_dir(run), epoch)
    return {
        name: {k: decode_array(v) if isinstance(v, str) else v for k, v in entry.items()}
        for name, entry in data["layers"].items()
    }

