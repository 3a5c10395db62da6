"""What the app draws about a KARST run: kernels, spectra, re-scaling and feature alignment.

Everything is read from the run's snapshots (``snapshots/epoch_NNN.safetensors`` and
``stats_NNN.json``, epoch 0 = before training), so it works for running, finished, cancelled and
interrupted runs alike, and costs no model rebuild. Results are NumPy arrays and plain dicts.

Kernel indices follow the paper: ``kernel=i`` selects ``C_i`` and ``A_i B_i`` with i in 1..N.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ._kron import kron_delta
from .config import TrainConfig
from .errors import RunError
from .runs import channel_distance, decode_array, read_json, saved_epochs

__all__ = [
    "epochs",
    "layers",
    "layer_tensors",
    "delta_weight",
    "kernel_view",
    "kernel_bounds",
    "cumulative_energy",
    "lora_layers",
    "lora_view",
    "singular_values",
    "lora_equal_budget_rank",
    "alignment_layers",
    "alignment_view",
    "alignment_summary",
    "alignment_table",
    "reference",
    "gap_history",
    "downsample",
    "read_stats",
]


def _run_dir(run: str | Path) -> Path:
    run = Path(run)
    if not (run / "config.json").is_file():
        raise RunError(f"{run} is not a run folder (no config.json); pick a run from the list.")
    return run


def _snap(run: Path, epoch: int, kind: str) -> Path:
    suffix = "safetensors" if kind == "epoch" else "json"
    return run / "snapshots" / f"{kind}_{epoch:03d}.{suffix}"


def _first_snapshot(run: Path) -> Path | None:
    """The earliest adapter snapshot of ``run`` (its metadata names the layers), or None."""
    saved = epochs(run)
    return _snap(run, saved[0], "epoch") if saved else None


def epochs(run: str | Path) -> list[int]:
    """Epochs with saved adapter tensors (0 = before training), ascending."""
    return saved_epochs(_run_dir(run), "epoch")


def layers(run: str | Path) -> list[str]:
    """Names of the run's KARST layers (empty for other methods)."""
    run = _run_dir(run)
    first = _first_snapshot(run)
    if first is None:
        return []
    with safe_open(str(first), framework="pt") as f:
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


def kernel_view(run: str | Path, layer: str, kernel: int = 1, epoch: int | None = None,
                since: int | None = None) -> dict[str, Any]:
    """Matrices and spectrum of one kernel of one layer at one epoch.

    Args:
        run: run folder.
        layer: a name from :func:`layers`.
        kernel: i in 1..N.
        epoch: a saved epoch (None = newest).
        since: a saved epoch: the matrices become their change since then (``C − C_since``, ...);
            the spectrum stays that of ΔW itself.

    Returns:
        ``C`` (m,m), ``AB`` (d_out/m, d_in/m), ``kron`` (C_i ⊗ A_i B_i, d_out×d_in), ``delta`` (ΔW),
        ``sv`` (singular values of ΔW), ``energy`` (their cumulative share of ‖ΔW‖²_F), ``lora_sv``
        and ``lora_rank`` (see below), ``s1``, ``s2``, ``rank_numeric`` (singular values above
        1e-6·max), ``lora_energy`` (share of ‖ΔW‖²_F that rank r' can hold), ``block`` (rows and
        columns of one m-block of ΔW), ``epoch``, ``kernel``, ``n_kernels``, ``since`` and ``note``.

        ``lora_sv`` are the singular values of the truncated SVD of this ΔW at rank r' (its best
        rank-r' approximation, Eckart–Young), r' from :func:`lora_equal_budget_rank`: the most of
        this update a LoRA with the same parameter count could represent. It is not a trained LoRA.
    """
    run = _run_dir(run)
    saved = epochs(run)
    epoch = _check_epoch(run, epoch, saved, "adapter snapshots")
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
        f"A LoRA with the same parameter count has rank {r_lora}. \"LoRA, equal budget\" is not a trained LoRA: "
        f"it is the truncated SVD of this ΔW at rank {r_lora}, the most of this update such a LoRA could hold"
        + (f" ({100 * energy:.1f}% of its energy)." if energy is not None else ".")
    )
    if not sv.any():
        note = "ΔW is zero (B starts at zero: epoch 0 is the pre-trained model). " + note
    view = {
        "epoch": epoch, "kernel": kernel, "n_kernels": n, "since": since,
        "C": C, "AB": AB, "kron": np.kron(C, AB), "delta": delta,
        "sv": sv, "energy": cumulative_energy(sv), "lora_sv": lora_sv, "lora_rank": r_lora, "lora_energy": energy,
        "rank_numeric": rank_numeric, "block": (d_out // m, d_in // m), "s1": t["s1"], "s2": t["s2"], "note": note,
    }
    if since is not None:
        base = kernel_view(run, layer, kernel, _check_epoch(run, since, saved, "adapter snapshots"))
        for key in ("C", "AB", "kron", "delta"):
            view[key] = view[key] - base[key]
        view["note"] = f"Showing the change since epoch {since}. " + note
    return view


def cumulative_energy(sv: np.ndarray) -> np.ndarray:
    """Share of ‖M‖²_F held by the first k singular values, for k = 1..len(sv) (zeros if M = 0)."""
    power = np.asarray(sv, dtype=np.float64) ** 2
    total = power.sum()
    return np.cumsum(power) / total if total > 0 else np.zeros_like(power)


def kernel_bounds(run: str | Path, layer: str, kernel: int = 1, since: int | None = None) -> dict[str, float]:
    """The largest |value| of ``C``, ``AB``, ``kron`` and ``delta`` over every saved epoch (or of
    their change since epoch ``since``): one colour scale for all epochs, so growth is visible."""
    run = _run_dir(run)
    scale = _delta_scale(run)
    bounds = dict.fromkeys(("C", "AB", "kron", "delta"), 0.0)
    base = None
    if since is not None:
        t0 = layer_tensors(run, layer, since)
        base = (t0["C"][kernel - 1], t0["A"][kernel - 1] @ t0["B"][kernel - 1], delta_weight(t0, scale))
    for e in epochs(run):
        t = layer_tensors(run, layer, e)
        C, AB, delta = t["C"][kernel - 1], t["A"][kernel - 1] @ t["B"][kernel - 1], delta_weight(t, scale)
        kron = None
        if base is not None:
            kron = np.abs(np.kron(C, AB) - np.kron(base[0], base[1])).max()
            C, AB, delta = C - base[0], AB - base[1], delta - base[2]
        values = {"C": np.abs(C).max(), "AB": np.abs(AB).max(), "delta": np.abs(delta).max(),
                  # max |c_jk · d_pq| = max|C| · max|D|: no need to build the Kronecker product
                  "kron": kron if kron is not None else np.abs(C).max() * np.abs(AB).max()}
        for key, value in values.items():
            bounds[key] = max(bounds[key], float(value))
    return bounds


# peft's names for a LoRA layer's factors in the adapter snapshots.
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<layer>.+)\.lora_(?P<part>[AB])\.default\.weight$")


def lora_layers(run: str | Path) -> list[str]:
    """Names of a LoRA run's adapted layers (empty for other methods)."""
    run = _run_dir(run)
    first = _first_snapshot(run)
    if first is None:
        return []
    with safe_open(str(first), framework="pt") as f:
        found = [m["layer"] for k in f.keys() if (m := _LORA_KEY.match(k)) and m["part"] == "A"]
    # The file sorts its keys by name; the statistics list the layers in the model's order.
    order = {name: i for i, name in enumerate(alignment_layers(run))}
    return sorted(found, key=lambda name: (order.get(name, len(order)), name))


def lora_view(run: str | Path, layer: str, epoch: int | None = None, since: int | None = None) -> dict[str, Any]:
    """A LoRA run's own update of one layer: ``A`` (r×d_in), ``B`` (d_out×r), ``delta`` = (α/r)·B A,
    its singular values ``sv`` and their ``energy`` (cumulative share), ``epoch``, ``scale`` and ``note``.

    ``since``: the matrices become their change since that epoch (ΔW there is 0, as B starts at 0).
    """
    run = _run_dir(run)
    saved = epochs(run)
    epoch = _check_epoch(run, epoch, saved, "adapter snapshots")
    if layer not in lora_layers(run):
        raise RunError(f"{layer!r} is not a LoRA layer of run {run.name}; pick one from the list.")
    config = TrainConfig.from_dict(read_json(run / "config.json"))
    scale = config.method.lora_alpha / config.method.adapter.rank
    parts = {}
    with safe_open(str(_snap(run, epoch, "epoch")), framework="pt") as f:
        for key in f.keys():
            m = _LORA_KEY.match(key)
            if m and m["layer"] == layer:
                parts[m["part"]] = f.get_tensor(key).double().numpy()
    delta = scale * parts["B"] @ parts["A"]
    sv = singular_values(delta)
    rank = int((sv > sv[0] * 1e-6).sum()) if sv.any() else 0
    view = {"epoch": epoch, "since": since, "A": parts["A"], "B": parts["B"], "delta": delta, "sv": sv,
            "energy": cumulative_energy(sv), "scale": scale, "rank_numeric": rank,
            "note": f"LoRA: ΔW = (α/r)·B A with α/r = {config.method.lora_alpha:g}/{config.method.adapter.rank} "
                    f"= {scale:g}; ΔW ({delta.shape[0]}×{delta.shape[1]}) has rank {rank} "
                    f"(≤ r = {config.method.adapter.rank})."}
    if since is not None:
        base = lora_view(run, layer, _check_epoch(run, since, saved, "adapter snapshots"))
        for key in ("A", "B", "delta"):
            view[key] = view[key] - base[key]
        view["note"] = f"Showing the change since epoch {since}. " + view["note"]
    return view


def _stats_file(run: Path, epoch: int) -> dict[str, Any]:
    data = read_json(_snap(run, epoch, "stats"))
    if data is None:
        raise RunError(f"epoch {epoch} of run {run.name} has no feature statistics.")
    return data


@functools.lru_cache(maxsize=64)
def _cached_layers(path: str, mtime_ns: int) -> dict[str, Any]:
    # One parse per stats file: the table of every layer reads each file once, not once per layer.
    return (read_json(path) or {}).get("layers", {})


@functools.lru_cache(maxsize=512)
def _cached_entry(path: str, mtime_ns: int, layer: str) -> dict[str, np.ndarray] | None:
    entry = _cached_layers(path, mtime_ns).get(layer)
    if entry is None:
        return None
    out = {k: decode_array(v) for k, v in entry.items() if isinstance(v, str)}
    for array in out.values():  # shared between callers: nobody may modify them
        array.setflags(write=False)
    return out


def _stats_entry(run: Path, epoch: int, layer: str) -> dict[str, np.ndarray] | None:
    """One layer's decoded statistics at ``epoch`` (cached by file and mtime), None if not recorded."""
    path = _snap(run, epoch, "stats")
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return _cached_entry(str(path), mtime, layer)


def alignment_layers(run: str | Path) -> list[str]:
    """Layers with feature statistics (KARST layers, or the adapted/targeted linears of other methods)."""
    run = _run_dir(run)
    saved = saved_epochs(run, "stats")
    return list(_stats_file(run, saved[-1])["layers"]) if saved else []


def reference(run: str | Path, layer: str) -> dict[str, Any]:
    """What ``layer``'s statistics are compared with: ``{"source", "description", "mean", "std"}``.

    ``source`` is ``"pretraining"`` (the frozen model on the backbone's own pre-training data) or
    ``"target"`` (the frozen model on the run's probe images: the pre-training data is unknown, or
    the run was recorded before reference statistics were saved).
    """
    run = _run_dir(run)
    data = read_json(run / "snapshots" / "reference.json")
    if data is not None and layer in data.get("layers", {}):
        entry = data["layers"][layer]
        return {"source": data.get("source", "target"), "description": data.get("description", ""),
                "mean": decode_array(entry["mean"]), "std": decode_array(entry["std"])}
    frozen = _frozen(run, layer)
    if frozen is None:
        raise RunError(f"run {run.name} has no reference statistics for {layer!r} (no epoch-0 snapshot).")
    return {"source": "target", "description": "the frozen model on this run's probe images", **frozen}


def _frozen(run: Path, layer: str) -> dict[str, np.ndarray] | None:
    # Epoch 0 is the model before training: every output variant is the frozen layer's output.
    entry = _stats_entry(run, 0, layer)
    if entry is None:
        return None
    key = "base" if "base_mean" in entry else "out"
    return {"mean": entry[f"{key}_mean"], "std": entry[f"{key}_std"]}


def _distances(entry: dict[str, np.ndarray], ref: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-channel distance to the reference of the outputs ``entry`` has: before and after re-scaling."""
    out = {"after": channel_distance(entry["out_mean"], entry["out_std"], ref["mean"], ref["std"])}
    if "pre_mean" in entry:
        out["before"] = channel_distance(entry["pre_mean"], entry["pre_std"], ref["mean"], ref["std"])
    return out


def _run_method(run: Path) -> tuple[str, str | None]:
    """(method, rescale) of a run; rescale is None for methods without re-scaling."""
    config = TrainConfig.from_dict(read_json(run / "config.json"))
    return config.method.name, (config.method.adapter.rescale if config.method.name == "karst" else None)


def gap_history(run: str | Path, layer: str) -> dict[str, Any]:
    """The mean gap to the reference of ``layer`` at every epoch with statistics.

    Returns:
        ``{"epochs": [...], "after": [...], "before": [...] or None (no re-scaling parts recorded),
        "frozen": float or None, "source": reference source}``; the gap is the channel mean of
        ``karst.runs.channel_distance``.
    """
    run = _run_dir(run)
    ref = reference(run, layer)
    frozen = _frozen(run, layer)
    out: dict[str, Any] = {"epochs": [], "after": [], "before": [], "source": ref["source"],
                           "frozen": None if frozen is None else float(np.mean(channel_distance(
                               frozen["mean"], frozen["std"], ref["mean"], ref["std"])))}
    for e in saved_epochs(run, "stats"):
        entry = _stats_entry(run, e, layer)
        if entry is None:
            continue
        d = _distances(entry, ref)
        out["epochs"].append(e)
        out["after"].append(float(np.mean(d["after"])))
        out["before"].append(float(np.mean(d["before"])) if "before" in d else None)
    if not any(v is not None for v in out["before"]):
        out["before"] = None
    return out


# Below this (in units of the reference's mean σ) a channel's change is float16 rounding, not a move.
_MOVE_TOL = 1e-3


def _shares(shift: np.ndarray) -> dict[str, float]:
    return {"closer": float(np.mean(shift < -_MOVE_TOL)), "further": float(np.mean(shift > _MOVE_TOL))}


def alignment_view(run: str | Path, layer: str, epoch: int | None = None) -> dict[str, Any]:
    """One layer's output statistics against the reference, per channel, at one epoch.

    Compares three outputs with the reference (:func:`reference`): the frozen model on this task's
    probe images (epoch 0), the adapted output before re-scaling and after it (KARST; other
    methods have one adapted output, ``after``).

    Returns:
        ``epoch``, ``layer``, ``method``, ``rescale`` (None without re-scaling), ``reference``
        (source and description), ``channels``, ``distance`` ({"frozen", "before", "after"}: per-channel
        :func:`karst.runs.channel_distance`, "before" only with re-scaling parts), ``gap`` (their
        channel means), ``shift`` ({"rescaling": after − before, "training": after − frozen}, per
        channel; negative = closer to the reference), ``shares`` (for each shift, the share of
        channels moved ``closer`` and ``further``), the history of :func:`gap_history`, ``s1``, ``s2``
        (None if not saved) and ``summary``: what the numbers say, in words (Markdown).
    """
    run = _run_dir(run)
    epoch = _check_epoch(run, epoch, saved_epochs(run, "stats"), "feature statistics")
    entry = _stats_entry(run, epoch, layer)
    if entry is None:
        known = ", ".join(alignment_layers(run)[:4])
        raise RunError(f"{layer!r} has no statistics in run {run.name}; pick one of {known}, ...")
    method, rescale = _run_method(run)
    ref = reference(run, layer)
    distance = _distances(entry, ref)
    frozen = _frozen(run, layer)
    if frozen is not None:
        distance["frozen"] = channel_distance(frozen["mean"], frozen["std"], ref["mean"], ref["std"])
    shift = {}
    if "before" in distance and rescale not in (None, "none"):
        shift["rescaling"] = distance["after"] - distance["before"]
    if "frozen" in distance and ref["source"] == "pretraining":  # else frozen *is* the reference
        shift["training"] = distance["after"] - distance["frozen"]
    s1 = s2 = None
    if epoch in epochs(run) and layer in layers(run):
        t = layer_tensors(run, layer, epoch)
        s1, s2 = t["s1"], t["s2"]
    view = {
        "epoch": epoch, "layer": layer, "method": method, "rescale": rescale,
        "reference": {"source": ref["source"], "description": ref["description"]},
        "channels": int(len(distance["after"])),
        "distance": distance,
        "gap": {k: float(np.mean(v)) for k, v in distance.items()},
        "shift": shift,
        "shares": {k: _shares(v) for k, v in shift.items()},
        "history": gap_history(run, layer),
        "s1": s1, "s2": s2,
    }
    view["summary"] = alignment_summary(view)
    return view


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def alignment_summary(view: dict[str, Any]) -> str:
    """The alignment view in words, every claim computed from its numbers (Markdown)."""
    ref, gap, shares = view["reference"], view["gap"], view["shares"]
    lines = [f"**Reference:** {ref['description']}."]
    if ref["source"] == "target":
        lines[0] += (" The gaps measure how far training moved this layer from the frozen model on this task, "
                     "not alignment with the pre-training data.")
    where = f"`{view['layer']}` at epoch {view['epoch']}"
    if view["epoch"] == 0:
        lines.append(f"{where}: this is the model before training, so every output is the frozen one "
                     f"(gap {gap['after']:.3f}).")
        return "\n\n".join(lines)
    if "rescaling" in shares:
        sh, before, after = shares["rescaling"], gap["before"], gap["after"]
        overall = "closer to" if after < before else "further from" if after > before else "no nearer to"
        lines.append(f"In {where}, re-scaling moved **{_pct(sh['closer'])}** of the {view['channels']} channels "
                     f"closer to the reference and {_pct(sh['further'])} further; the mean gap went from "
                     f"{before:.3f} before re-scaling to {after:.3f} after, so re-scaling brought the layer "
                     f"{overall} the reference overall.")
    elif view["method"] == "karst":
        lines.append(f"This run has no re-scaling (rescale = none): in {where} the adapted output "
                     f"W0x+b0+ΔWx goes on as is (gap {gap['after']:.3f}).")
    elif view["method"] == "probe":
        lines.append(f"A linear probe trains only the head: {where} keeps the frozen weights, so its output "
                     f"changes only if earlier layers do (gap {gap['after']:.3f}).")
    else:
        lines.append(f"{view['method']} has no re-scaling step: {where} shows the output of the adapted layer "
                     f"(gap {gap['after']:.3f}).")
    if "training" in shares:
        sh = shares["training"]
        lines.append(f"Against the frozen model on this task's images (gap {gap['frozen']:.3f}), the adapted "
                     f"output has {_pct(sh['closer'])} of channels closer to the reference and "
                     f"{_pct(sh['further'])} further.")
    return "\n\n".join(lines)


def alignment_table(run: str | Path, epoch: int | None = None) -> list[dict[str, Any]]:
    """Every layer's alignment figures at ``epoch`` (None = newest): one row per layer.

    Rows: ``layer``, ``channels``, ``gap_frozen``, ``gap_before`` (None without re-scaling parts),
    ``gap_after``, ``rescale_closer`` / ``rescale_further`` (shares of channels re-scaling moved
    closer to / further from the reference; None without re-scaling) and ``training_closer``
    (share of channels closer than the frozen model's).
    """
    run = _run_dir(run)
    epoch = _check_epoch(run, epoch, saved_epochs(run, "stats"), "feature statistics")
    rows = []
    for layer in alignment_layers(run):
        v = alignment_view(run, layer, epoch)
        rescaling, training = v["shares"].get("rescaling"), v["shares"].get("training")
        rows.append({"layer": layer, "channels": v["channels"], "gap_frozen": v["gap"].get("frozen"),
                     "gap_before": v["gap"].get("before"), "gap_after": v["gap"]["after"],
                     "rescale_closer": rescaling["closer"] if rescaling else None,
                     "rescale_further": rescaling["further"] if rescaling else None,
                     "training_closer": training["closer"] if training else None})
    return rows


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

