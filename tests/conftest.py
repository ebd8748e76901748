"""Shared fixtures: the tiny preset, one tiny run and two exchanging ones, trained once per session."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

import cen_lab

# training pools (cen_lab.data.pool) built by tests go to a scratch folder, not to the checkout's data/cache; set
# before any sweep worker starts, so that every process of a test session shares it
os.environ.setdefault("CEN_LAB_CACHE", tempfile.mkdtemp(prefix="cen_lab-pool-cache-"))


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
def exchanging_runs(tmp_path_factory) -> dict[str, cen_lab.Run]:
    """Two seeds of a tiny CEN whose penalty pushes some penalised gammas under the threshold after step 10
    (gradients logged, a checkpoint every 5 steps), shared read-only by the exchange-outcome tests."""
    tmp = tmp_path_factory.mktemp("exchanging")
    base = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 40, "log.grads": True, "train.lam": 0.3,
                                                             "train.optimizer": "sgd", "train.lr": 0.05,
                                                             "train.lr_schedule": "constant", "train.ckpt_every": 5})
    torch.set_num_threads(1)
    return {f"s{s}": cen_lab.train(base.override({"seed": s}), tmp / f"s{s}", progress=False) for s in (0, 1)}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> cen_lab.Run:
    """A complete tiny run with gradient logging, shared read-only by tests."""
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"log.grads": True})
    torch.set_num_threads(1)
    return cen_lab.train(cfg, tmp_path_factory.mktemp("runs") / "tiny", progress=False)


@pytest.fixture(scope="session")
def tiny_report(tmp_path_factory):
    """A report of the tiny preset with small notebook parameters, built once per session (read-only)."""
    from cen_lab.views.reports import build_report

    root = tmp_path_factory.mktemp("report")
    common = {"preset": "tiny", "runs_dir": str(root / "runs"), "progress": False}
    theorem1 = {"lams": [0.01, 0.5], "seeds": [0, 1], "steps": 12, "checkpoints": 2, "n_batches": 2, "mc_trials": 500,
                "mc_points": 6, "corollary_lam": 0.5, "finetune_steps": 4}
    return build_report(root / "report", {"exchange_dynamics": {"lams": [0.001, 0.01]}, "theorem1": theorem1},
                        common=common, log_output=False, echo=lambda _: None)
