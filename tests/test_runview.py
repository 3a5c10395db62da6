"""What the app shows of a run (karst.runview)."""

from __future__ import annotations

from pathlib import Path

import pytest

from karst.preflight import SetupForm
from karst.runview import run_label


def test_random_init_choice_reaches_the_run_and_its_label():
    assert SetupForm().to_train_config().pretrained is True
    cfg = SetupForm(pretrained=False).to_train_config()
    assert cfg.pretrained is False
    assert run_label(cfg) == "karst N2 m8 r8 (random init)"
    assert run_label(SetupForm(method="lora").to_train_config()) == "lora r8"


def test_labels_show_every_setting_that_differs():
    from karst.config import TrainConfig
    from karst.runview import distinguishing_labels

    configs = {
        "r1": TrainConfig(),
        "r2": TrainConfig.from_dict({"method": {"name": "karst", "adapter": {"rescale": "none"}}}),
        "r3": TrainConfig(method="lora"),
    }
    labels = distinguishing_labels(configs)
    assert labels["r1"] == "karst N2 m8 r8 · lr 0.01 · rescale channel"
    assert labels["r2"] == "karst N2 m8 r8 · lr 0.01 · rescale none"
    assert labels["r3"] == "lora r8 · lr 0.003"  # re-scaling does not apply to LoRA
    # Settings that do not differ are left out; identical runs get their id's tail; names win.
    same = distinguishing_labels({"20250101-aaaa": TrainConfig(), "20250101-bbbb": TrainConfig(epochs=6)},
                                 {"20250101-bbbb": "baseline"})
    assert same == {"20250101-aaaa": "karst N2 m8 r8", "20250101-bbbb": "baseline"}
    twins = distinguishing_labels({"x-1234": TrainConfig(), "x-5678": TrainConfig()})
    assert twins == {"x-1234": "karst N2 m8 r8 #1234", "x-5678": "karst N2 m8 r8 #5678"}
    more = distinguishing_labels({"a": TrainConfig(epochs=3, max_train_samples=100), "b": TrainConfig(seed=1)})
    assert more["a"] == "karst N2 m8 r8 · epochs 3 · train images 100 · seed 0"
    assert more["b"] == "karst N2 m8 r8 · epochs 6 · train images all · seed 1"


def test_run_colours_are_stable_and_distinct_for_consecutive_runs():
    from karst.runview import RUN_PALETTE, run_colors

    ids = [f"20250101-0000{i:02d}-karst-beef" for i in range(30)]
    colours = run_colors(ids)
    assert set(colours.values()) <= set(RUN_PALETTE)
    window = len(RUN_PALETTE)
    for i in range(len(ids) - window + 1):
        assert len({colours[r] for r in ids[i : i + window]}) == window
    # Adding later runs never recolours earlier ones.
    assert {r: c for r, c in run_colors(ids[:10]).items()} == {r: colours[r] for r in ids[:10]}


def test_name_note_and_compare_row(tmp_path, tmp_path_factory):
    import shutil

    from helpers import trained_run

    from karst.errors import RunError
    from karst.runs import RunStore
    from karst.runview import compare_rows, run_choices, run_labels

    shared = trained_run(tmp_path_factory.getbasetemp())  # copied: other tests read the shared run
    run = Path(shutil.copytree(shared, tmp_path / "runs" / shared.name))
    store = RunStore(run.parent)
    run_id = run.name
    assert store.read_meta(run_id) == {"name": "", "note": ""}
    meta = store.write_meta(run_id, name="  tiny\tbaseline \n", note="lr from the paper\n")
    assert meta == {"name": "tiny baseline", "note": "lr from the paper"}
    assert store.write_meta(run_id, note="") == {"name": "tiny baseline", "note": ""}  # None keeps the name
    with pytest.raises(RunError, match="too long"):
        store.write_meta(run_id, name="x" * 500)
    assert run_labels(store, [run_id]) == {run_id: "tiny baseline"}
    assert "tiny baseline" in run_choices(store)[0][0]
    row = next(r for r in compare_rows(store) if r["run"] == run_id)
    assert (row["lr"], row["epochs"], row["batch_size"], row["train_images"], row["rescale"]) == (
        3e-3, 2, 32, 64, "channel")
    assert row["label"] == "tiny baseline" and row["name"] == "tiny baseline"


def test_picker_labels_lead_with_what_tells_runs_apart(tmp_path):
    from karst.config import TrainConfig
    from karst.runs import RunStore
    from karst.runview import run_choices

    store = RunStore(tmp_path)
    ids = {}
    for key, config in (("channel", TrainConfig(epochs=1)), ("none", TrainConfig.from_dict(
            {"epochs": 1, "method": {"name": "karst", "adapter": {"rescale": "none"}}})),
            ("lora", TrainConfig(epochs=1, method="lora")), ("twin", TrainConfig(epochs=1, method="lora"))):
        ids[key] = store.create(config)
    store.write_meta(ids["none"], name="ablation")
    labels = {run_id: label for label, run_id, _ in run_choices(store)}
    assert labels[ids["channel"]] == f"karst N2 m8 r8 · lr 0.01 · rescale channel · queued · {ids['channel']}"
    assert labels[ids["none"]].startswith("ablation · karst N2 m8 r8 · lr 0.01 · rescale none · queued")
    # Twins are told apart by the whole id at the end, not by a second copy of its tail.
    assert labels[ids["twin"]] == f"lora r8 · lr 0.003 · queued · {ids['twin']}" and "#" not in labels[ids["twin"]]
    assert all(label.endswith(run_id) for run_id, label in labels.items())  # the id stays findable by typing


def test_labels_ignore_a_damaged_run_when_finding_what_differs():
    from karst.config import TrainConfig
    from karst.runview import distinguishing_labels

    labels = distinguishing_labels({"a": TrainConfig(), "b": TrainConfig(seed=1), "broken": None})
    assert labels == {"a": "karst N2 m8 r8 · seed 0", "b": "karst N2 m8 r8 · seed 1", "broken": "?"}
