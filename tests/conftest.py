"""Shared test fixtures and the single `requires_cuda` marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run `make test-cuda` on a GPU machine")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def samples_root() -> Path:
    return SAMPLES


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(int(os.environ.get("SELFSUP_TEST_THREADS", "2")))
