"""feature_stats: per-channel moments of each KARST layer's three outputs (base, pre-rescale, out)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_tiny, randomise_adapters

from karst.config import KarstConfig
from karst.model import apply_karst, karst_layers
from karst.stats import feature_stats

pytestmark = pytest.mark.usefixtures("one_thread")


def test_feature_stats_match_forward_parts() -> None:
    model = make_tiny("vit", num_classes=3)
    apply_karst(model, KarstConfig(rank=2))
    layers = karst_layers(model)
    randomise_adapters(model, std=0.5)  # away from the zero init, so the three outputs differ
    probe = torch.randn(10, 3, 32, 32)  # 10 images x 17 tokens
    stats = feature_stats(model, probe, torch.device("cpu"), chunk=4)
    strided = feature_stats(model, probe, torch.device("cpu"), chunk=10, max_tokens=50)  # every 4th token
    assert set(stats) == set(layers)
    # Reference: catch fc1's input in one forward pass and compute the statistics directly.
    caught = {}
    def catch(module, inputs, output) -> None:  # returns None: the output is left alone
        caught["x"] = inputs[0]

    handle = layers["blocks.1.mlp.fc1"].register_forward_hook(catch)
    model.eval()
    with torch.no_grad():
        model(probe)
        parts = layers["blocks.1.mlp.fc1"].forward_parts(caught["x"])
    handle.remove()
    for key, t in zip(("base", "pre", "out"), parts):
        for got, flat in ((stats, t.reshape(-1, t.shape[-1])), (strided, t.reshape(-1, t.shape[-1])[::4])):
            flat = flat.double()
            np.testing.assert_allclose(got["blocks.1.mlp.fc1"][f"{key}_mean"], flat.mean(0).numpy(), rtol=1e-4,
                                       atol=1e-5)
            np.testing.assert_allclose(got["blocks.1.mlp.fc1"][f"{key}_std"], flat.std(0, correction=0).numpy(),
                                       rtol=1e-4, atol=1e-5)
    assert not np.allclose(stats["blocks.1.mlp.fc1"]["pre_mean"], stats["blocks.1.mlp.fc1"]["out_mean"])
