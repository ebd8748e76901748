"""Shared fixtures: the tiny preset and one tiny run trained once per session."""

from __future__ import annotations

import pytest
import torch

import cen_lab


@pytest.fixture(autouse=True)
def _single_thread():
    # identical thread counts keep CPU kernels bit-reproducible between runs compared in one test
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def tiny() -> cen_lab.ExperimentConfig:
    return cen_lab.ExperimentConfig.preset("tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> cen_lab.Run:
    """A complete tiny run with gradient logging, shared read-only by tests."""
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"log.grads": True})
    torch.set_num_threads(1)
    return cen_lab.train(cfg, tmp_path_factory.mktemp("runs") / "tiny", progress=False)
