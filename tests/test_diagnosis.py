"""cen_lab.diagnose: the schedule's prediction, each state on hand-built gamma tables and on real tiny runs, and
bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cen_lab
from cen_lab.cli import main
from cen_lab.errors import RunFormatError
from cen_lab.experiments.diagnosis import MIN_STEPS, STATES, diagnose, schedule_steps
from cen_lab.runs import Run


@pytest.mark.parametrize("momentum,rule", [(0.9, "subgradient"), (0.0, "subgradient"), (0.9, "proximal")])
def test_the_schedule_predicts_the_crossings_when_only_the_penalty_acts(momentum, rule):
    # no data gradient at all: a real torch SGD moves the gammas by the L1 penalty alone
    lr, lam, thr = 0.05, 5e-3, 2e-2
    gamma0 = torch.tensor([1.0, 0.7, 0.3113, 0.05, 0.01, -0.6])
    gamma = torch.nn.Parameter(gamma0.clone().double())
    opt = torch.optim.SGD([gamma], lr=lr, momentum=momentum)
    crossed = torch.full_like(gamma0, -1, dtype=torch.int64)
    for t in range(1, 4000):
        opt.zero_grad()
        if rule == "subgradient":
            gamma.grad = lam * torch.sign(gamma.detach())
            opt.step()
        else:  # proximal: the data step (zero) then soft-thresholding
            gamma.grad = torch.zeros_like(gamma)
            opt.step()
            with torch.no_grad():
                gamma.copy_(torch.sign(gamma) * torch.clamp(gamma.abs() - lr * lam, min=0))
        newly = (gamma.detach().abs() < thr) & (crossed < 0)
        crossed[newly] = t
    crossed[gamma0.abs() < thr] = 0
    predicted = schedule_steps(gamma0.numpy(), thr, lr, lam, momentum, rule)
    assert predicted.tolist() == crossed.tolist()
    if rule == "subgradient" and momentum == 0.9:  # the rule of thumb: lr lam / (1 - mu) a step, after a warm-up
        rate = lr * lam / (1 - momentum)  # of mu / (1 - mu) steps
        assert abs(predicted[0] - (1 - thr) / rate - momentum / (1 - momentum)) <= 1


def _run(gamma: np.ndarray, penalised: np.ndarray, *, steps=None, grads: np.ndarray | None = None, config=None,
         threshold=0.02, branches=("rgb", "depth")) -> Run:
    """A run from a hand-built gamma matrix [S, R] (one layer, R = M * C rows, branch-major)."""
    s, r = gamma.shape
    steps = np.arange(s) * 10 if steps is None else np.asarray(steps)
    m = len(branches)
    c = r // m
    base = {"layer": "l", "branch": np.repeat(np.arange(m), c).astype("int32"), "channel": np.tile(np.arange(c), m).astype("int32")}
    gam = pd.DataFrame({"step": np.repeat(steps, r).astype("int64"), "epoch": -1,
                        "layer": "l", "branch": np.tile(base["branch"], s), "modality": np.tile(base["branch"], s),
                        "task": np.int32(0), "channel": np.tile(base["channel"], s),
                        "gamma": gamma.ravel().astype("float32"), "beta": np.float32(0),
                        "penalised": np.tile(penalised, s)})
    gr = pd.DataFrame(columns=["step", "layer", "branch", "modality", "task", "channel", "dgamma", "dxprime_norm"])
    if grads is not None:
        gr = gam[["step", "layer", "branch", "modality", "task", "channel"]].assign(
            dgamma=grads.ravel().astype("float32"), dxprime_norm=np.float32(1))
    manifest = {"threshold": threshold, "lam": 5e-3, "lam_per_step": 5e-3, "source": "trained" if config else "observed",
                "branches": [{"name": b} for b in branches], "last_step": int(steps[-1]), "model_class": "hand-built",
                "status": "complete"}
    return Run(Path("hand-built"), config, manifest, gam, pd.DataFrame(), pd.DataFrame(), gr)


PEN = np.array([True] * 4 + [False] * 4 + [False] * 4 + [True] * 4)  # M = 2, C = 8: disjoint halves
S = 40


def test_each_state_on_hand_built_tables():
    t = np.arange(S)[:, None]
    ones = np.ones((S, 16))
    # not sparsifying: penalised and unpenalised gammas alike
    assert diagnose(_run(ones * 1.0, PEN)).state == "not sparsifying"
    # collapsing: every penalised gamma heads to 0
    falling = np.where(PEN, np.maximum(1 - t / 25, 0), 1.0)
    d = diagnose(_run(falling, PEN))
    assert d.state == "collapsing" and d.table.iloc[0]["value"] == "1.000"
    # schedule-driven: an SGD run whose crossings are where the schedule puts them, importance unrelated
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.lam": 5e-3, "train.lr": 0.05})
    rng = np.random.default_rng(0)
    g0 = np.where(PEN, rng.uniform(0.5, 3.0, 16), 1.0)
    cross = schedule_steps(g0[PEN], 0.02, 0.05, 5e-3, 0.9)
    steps = np.linspace(0, 2 * cross.max(), S).astype(int)
    sched = np.tile(g0, (S, 1))
    for j, col in enumerate(np.flatnonzero(PEN)):
        sched[:, col] = np.where(steps < cross[j], g0[col], 0.0)
    imp = rng.uniform(0, 1, (S, 16))
    d = diagnose(_run(sched, PEN, steps=steps, grads=imp, config=cfg))
    assert "schedule-driven" in d.flags and d.state in ("schedule-driven", "collapsing")
    # importance-driven: the more a channel matters (|dL/dgamma|), the later it crosses; half of them never
    order = np.zeros(16)
    order[PEN] = np.arange(8)
    late = np.where(PEN & (order < 4), np.maximum(1 - t / (8 + 4 * order), 0), 1.0)
    grads = np.tile(order / 8 + 0.01, (S, 1))
    d = diagnose(_run(late, PEN, grads=grads))
    assert d.state == "importance-driven", d
    # settling + one-sided: a third of rgb's penalised gammas cross early and stay; depth's never
    part = np.ones((S, 16))
    part[:, :2] = np.where(t < 5, 1.0, 0.0)
    d = diagnose(_run(part, PEN))
    assert d.state == "settling" and "one-sided" in d.flags
    assert "rgb 0.500, depth 0.000" in d.table.set_index("measure").loc["under the threshold per branch", "value"]
    # too early to tell: penalised gammas smaller, none crossed yet, no trend to speak of
    early = np.where(PEN, 0.8 - t * 0.001, 1.0)
    assert diagnose(_run(early, PEN)).state == "too early to tell"


def test_a_real_tiny_run_and_the_threshold_grid(tmp_path, capsys):
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 40, "log.grads": True, "train.lam": 0.05})
    run = cen_lab.train(cfg, tmp_path / "run", progress=False)
    d = cen_lab.diagnose(run, thresholds=[0.0, 0.02, 0.5])
    assert d.state in STATES and "smoke test" in d.regime and set(d.flags) <= set(STATES)
    below = d.thresholds["penalised_below"].tolist()
    assert d.thresholds["threshold"].tolist() == [0.0, 0.02, 0.5] and below == sorted(below) and below[0] == 0
    assert d.crossings["predicted_step"].notna().all()  # SGD: the schedule is predicted for every channel
    from cen_lab import plots

    fig = plots.plot_diagnosis(plots.compute_diagnosis(d))
    assert [ax.get_title() for ax in fig.get_axes()] == ["under the threshold", "crossing steps"]
    assert main(["diagnose", str(tmp_path / "run"), "--thresholds", "0.01,0.02"]) == 0
    out = capsys.readouterr().out
    assert f"run: {d.state}" in out and "under each threshold at the last step" in out


def test_bad_input_gets_one_clear_error(tmp_path):
    t = np.arange(S)[:, None]
    falling = np.where(PEN, np.maximum(1 - t / 25, 0), 1.0)
    with pytest.raises(ValueError, match="no penalised gammas"):
        diagnose(_run(falling, np.zeros(16, bool)))
    with pytest.raises(ValueError, match=r"records no exchange threshold; give one: diagnose\(run, threshold=...\)"):
        diagnose(_run(falling, PEN, threshold=None))
    with pytest.raises(ValueError, match=r"thresholds must be >= 0, got \[-0.1\]"):
        diagnose(_run(falling, PEN), thresholds=[-0.1, 0.02])
    with pytest.raises(ValueError, match=f"3 logged steps; a diagnosis needs at least {MIN_STEPS + 1}"):
        diagnose(_run(falling[:3], PEN))
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 4})
    run = cen_lab.train(cfg, tmp_path / "old", progress=False)
    manifest = json.loads((run.path / "manifest.json").read_text())
    (run.path / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    with pytest.raises(RunFormatError, match=r"schema_version 1 is not supported \(this cen_lab reads \[2, 3\]\)"):
        diagnose(run.path)
