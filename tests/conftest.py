"""Fixtures only; the helpers the tests import by name are in ``helpers.py``."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import TINY_MODELS

# Two cores on CI: extra intra-op threads only add contention between pytest and servers it starts.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """One intra-op thread for a test: on two shared cores a second one slows tiny models down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=sorted(TINY_MODELS))
def arch(request) -> str:
    return request.param
