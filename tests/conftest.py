"""Fixtures shared by the tests."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.sweep_helpers import short_tmp_dir

# The machine has 2 cores: one torch thread per test process keeps parallel work predictable.
torch.set_num_threads(1)


@pytest.fixture
def ray_tmp():
    """A short temp dir for a local Ray instance, removed after the test."""
    path = short_tmp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
