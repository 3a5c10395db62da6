"""Export: the merged model loads into plain timm (no karst) with identical outputs; predict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
from helpers import TINY_DATA, env, make_tiny, tiny_config, trained_run
from PIL import Image

from karst.data import load_dataset
from karst.errors import ConfigError, DataError, RunError
from karst.export import Predictor, confidence, export_run, load_merged, load_run, predict
from karst.jobs import run_foreground
from karst.workspace import Workspace

# Loads merged.safetensors exactly as the export docstring says, in a process that cannot import
# karst (its folder is not on the path and the import is blocked), and prints the logits.
_PLAIN_TIMM = """
import json, sys
sys.modules["karst"] = None  # any attempt to import karst now fails
import timm, torch
from safetensors.torch import load_file
meta = json.load(open(sys.argv[1] + "/merged.json"))
model = timm.create_model(meta["arch"]["model_name"], pretrained=False,
                          num_classes=meta["num_classes"], **meta["arch"]["kwargs"])
model.load_state_dict(load_file(sys.argv[1] + "/merged.safetensors"), strict=True)
x = torch.load(sys.argv[2])
print(json.dumps(model.eval()(x).tolist()))
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_merged_model_loads_in_plain_timm_with_identical_outputs(tmp_path_factory, tmp_path: Path) -> None:
    run = trained_run(tmp_path_factory.getbasetemp())
    meta = json.loads((run / "merged.json").read_text())
    assert meta["num_classes"] == len(meta["class_names"]) == 10
    assert meta["preprocessing"]["input_size"] == [3, 32, 32] and "mean" in meta["preprocessing"]
    x = torch.randn(3, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    env_plain = env()
    env_plain["PYTHONPATH"] = ""  # no karst checkout on the path
    out = subprocess.run([sys.executable, "-c", _PLAIN_TIMM, str(run), str(tmp_path / "x.pt")], capture_output=True,
                         text=True, env=env_plain, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    plain = torch.tensor(json.loads(out.stdout))
    method, _, _ = load_run(run)  # the adapted (unmerged) model rebuilt from its adapter
    with torch.no_grad():
        adapted = method.model(x)
    torch.testing.assert_close(plain, adapted, rtol=1e-4, atol=1e-4)


def test_predict_from_run_and_from_a_lone_merged_file(tmp_path_factory, tmp_path: Path) -> None:
    run = trained_run(tmp_path_factory.getbasetemp())
    images = _images(3)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        img.save(paths[-1])
    from_run = predict(run, images, top_k=3)
    # A merged file that travelled alone (an upload): the config comes from its header.
    lone = tmp_path / "upload" / "model.safetensors"
    lone.parent.mkdir()
    shutil.copy(run / "merged.safetensors", lone)
    from_file = Predictor.from_source(lone).predict(paths, top_k=3)
    for a, b in zip(from_run, from_file):
        assert [c for c, _ in a] == [c for c, _ in b]
        np.testing.assert_allclose([p for _, p in a], [p for _, p in b], atol=1e-5)
    for res in from_run:
        probs = [p for _, p in res]
        assert len(res) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert len(predict(run, images[:1], top_k=50)[0]) == 10  # clipped to the number of classes


def test_predict_errors(tmp_path_factory, tmp_path: Path) -> None:
    run = trained_run(tmp_path_factory.getbasetemp())
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    with pytest.raises(DataError, match="not a readable image"):
        predict(run, [not_image])
    with pytest.raises(ConfigError, match="top_k"):
        predict(run, _images(1), top_k=0)
    with pytest.raises(RunError, match="does not exist"):
        load_merged(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(RunError, match="safetensors"):
        load_merged(junk)
    damaged = shutil.copytree(run, tmp_path / "damaged")
    (damaged / "adapter.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(RunError, match="adapter.safetensors cannot be read"):
        load_run(damaged)


def test_export_a_cancelled_run_from_its_weights(tmp_path: Path) -> None:
    from karst.runs import RunStore
    from karst.train import train

    store = RunStore(tmp_path / "runs")
    config = tiny_config(tmp_path, epochs=2)
    run_id, lock = store.create_claimed(config)
    calls = iter(range(100))
    summary = train(config, store.path(run_id), cancel_check=lambda: next(calls) >= 3)  # stop after 3 steps
    lock.release()
    assert summary["status"] == "cancelled" and summary["steps"] == 3
    run = store.path(run_id)
    assert not (run / "merged.safetensors").exists() and (run / "adapter.safetensors").exists()
    out = tmp_path / "out" / "cancelled.safetensors"
    files = export_run(run_id, out, runs_dir=store.root)
    assert Path(files["merged"]) == out and out.with_suffix(".json").is_file()
    model, meta = load_merged(out)
    assert meta["run_id"] == run_id and meta["method"] == "karst"
    method, _, _ = load_run(run)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), method.model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match=".safetensors"):
        export_run(run_id, tmp_path / "x.bin", runs_dir=store.root)


def test_lora_run_exports_to_plain_timm(tmp_path: Path) -> None:
    summary = run_foreground(tiny_config(tmp_path, method="lora", epochs=1, warmup_epochs=0), tmp_path / "runs")
    run = tmp_path / "runs" / summary["run_id"]
    model, meta = load_merged(run / "merged.safetensors")
    assert meta["method"] == "lora" and type(model).__module__.startswith("timm")
    method, _, _ = load_run(run)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), method.model(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- what the Predict tab shows
def _fixed_answer(bias: list[float]) -> Predictor:
    """A real tiny ViT whose head gives softmax(bias) for every picture (its weights are zeroed)."""
    model = make_tiny("vit", num_classes=len(bias))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(bias))
    names = [f"class {i}" for i in range(len(bias))]
    return Predictor(model, timm.data.create_transform(**TINY_DATA), names)


@pytest.mark.parametrize("probs,unsure", [
    ([0.97, 0.01, 0.01, 0.01], False),
    ([0.25, 0.25, 0.25, 0.25], True),  # a blind guess
    ([0.45] + [0.55 / 9] * 9, True),  # top class under 50%
    ([0.6, 0.4], True),  # two classes: over 50%, but close to a coin toss (entropy 0.97)
    ([0.95, 0.05], False),
])
def test_confidence_flags_spread_answers_only(probs: list[float], unsure: bool) -> None:
    (sure,) = confidence(torch.tensor([probs]))
    assert sure.unsure is unsure and sure.num_classes == len(probs)
    assert sure.top_prob == pytest.approx(max(probs))
    expected = -sum(q * np.log(q) for q in probs) / np.log(len(probs))
    assert sure.entropy == pytest.approx(expected, abs=1e-5)


def test_confidence_of_a_real_model_both_ways() -> None:
    noise = _images(2, seed=3)
    blind = _fixed_answer([0.0] * 4)
    for sure in confidence(blind.probabilities(blind.inputs(noise))):
        assert sure.unsure and sure.top_prob == pytest.approx(0.25, abs=1e-5) and sure.entropy == pytest.approx(1.0)
    certain = _fixed_answer([6.0, 0.0, 0.0, 0.0])  # softmax: e^6 / (e^6 + 3) = 0.993 on class 0
    probs = certain.probabilities(certain.inputs(noise))
    assert [c.unsure for c in confidence(probs)] == [False, False]
    assert certain.top_k(probs, 1) == [[("class 0", pytest.approx(0.9926, abs=1e-3))]] * 2


def test_pixels_are_exactly_what_the_model_is_given(tmp_path_factory, tmp_path: Path) -> None:
    run = trained_run(tmp_path_factory.getbasetemp())
    picture = np.zeros((64, 96, 3), dtype=np.uint8)
    picture[:, :48] = (200, 30, 10)  # left half red, right half blue: survives a resize to 32 px
    picture[:, 48:] = (10, 60, 220)
    by_file = Predictor.from_source(run)  # through merged.safetensors and its recorded preprocessing
    inputs = by_file.inputs([Image.fromarray(picture)])
    (seen,) = by_file.pixels(inputs)
    assert seen.shape == (32, 32, 3) and seen.dtype == np.uint8  # the tiny model's 32 px, centre-cropped
    assert tuple(seen[16, 2]) == pytest.approx((200, 30, 10), abs=2)
    assert tuple(seen[16, 29]) == pytest.approx((10, 60, 220), abs=2)
    mean, std = torch.tensor(TINY_DATA["mean"]).view(3, 1, 1), torch.tensor(TINY_DATA["std"]).view(3, 1, 1)
    back = (torch.from_numpy(seen).permute(2, 0, 1) / 255 - mean) / std
    torch.testing.assert_close(back, inputs[0], rtol=0, atol=0.5 / 255 / 0.25 + 1e-6)  # within rounding to uint8
    # The run rebuilt from its adapter (no merged file) sees the very same pixels.
    unmerged = shutil.copytree(run, tmp_path / run.name, ignore=shutil.ignore_patterns("merged.*"))
    (again,) = Predictor.from_source(unmerged).pixels(Predictor.from_source(unmerged).inputs([picture]))
    np.testing.assert_array_equal(again, seen)


def test_workspace_predicts_examples_with_their_true_class(tmp_path_factory, tmp_path: Path) -> None:
    run = trained_run(tmp_path_factory.getbasetemp())
    space = Workspace(run.parent, tmp_path / "uploads", start_worker=False)
    bundle = load_dataset("synth-objects", transform=None)
    examples = space.labelled_examples(run.name, n=4)
    assert [label for _, label in examples] == bundle.class_names[:4]  # one per class, in class order
    first_apple = int(np.flatnonzero(np.asarray(bundle.train.labels) == 0)[0])
    np.testing.assert_array_equal(np.asarray(examples[0][0]), np.asarray(bundle.train.image(first_apple)))
    assert space.model_classes("run", run.name, None) == bundle.class_names
    images = [examples[0][0], examples[1][0], _images(1)[0]]
    preds = space.predict("run", run.name, None, images, 3, true_labels=[examples[0][1], examples[1][1], None])
    for p in preds:
        assert p.seen.shape == (32, 32, 3) and p.confidence.num_classes == 10 and len(p.labels) == 3
        assert p.confidence.top_prob == pytest.approx(p.probs[0])
    assert [p.true_label for p in preds] == [*bundle.class_names[:2], None]
    assert [p.correct for p in preds] == [preds[0].labels[0] == "apple", preds[1].labels[0] == "strawberry", None]
    with pytest.raises(ConfigError, match="one per image"):
        space.predict("run", run.name, None, images, 3, true_labels=["apple"])
