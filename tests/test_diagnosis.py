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


@pytest.mark.parametrize("momentum,rule,cosine", [(0.9, "subgradient", False), (0.0, "subgradient", False),
                                                  (0.9, "proximal", False), (0.9, "subgradient", True),
                                                  (0.9, "proximal", True)])
def test_the_schedule_predicts_the_crossings_when_only_the_penalty_acts(momentum, rule, cosine):
    # no data gradient at all: a real torch SGD moves the gammas by the L1 penalty alone
    from cen_lab.experiments.training import lr_at

    lr, lam, thr = 0.05, 5e-3, 2e-2
    gamma0 = torch.tensor([1.0, 0.7, 0.3113, 0.05, 0.01, -0.6, 2.5013])
    gamma = torch.nn.Parameter(gamma0.clone().double())
    opt = torch.optim.SGD([gamma], lr=lr, momentum=momentum)
    crossed = torch.full_like(gamma0, -1, dtype=torch.int64)
    tcfg = cen_lab.ExperimentConfig().train.__class__(lr=lr, steps=3999, lr_schedule="cosine" if cosine else "constant")
    for t in range(1, 4000):
        for group in opt.param_groups:
            group["lr"] = lr_at(tcfg, t - 1)
        opt.zero_grad()
        if rule == "subgradient":
            gamma.grad = lam * torch.sign(gamma.detach())
            opt.step()
        else:  # proximal: the data step (zero) then soft-thresholding
            gamma.grad = torch.zeros_like(gamma)
            opt.step()
            with torch.no_grad():
                gamma.copy_(torch.sign(gamma) * torch.clamp(gamma.abs() - lr_at(tcfg, t - 1) * lam, min=0))
        newly = (gamma.detach().abs() < thr) & (crossed < 0)
        crossed[newly] = t
    crossed[gamma0.abs() < thr] = 0
    rates = np.array([lr_at(tcfg, s) for s in range(3999)]) if cosine else lr
    predicted = schedule_steps(gamma0.numpy(), thr, rates, lam, momentum, rule, max_steps=4000)
    assert predicted.tolist() == crossed.tolist()
    if cosine and rule == "proximal":  # lr * lam a step, falling to 0: 0.5 in all, so the large ones never cross
        assert predicted[0] == predicted[1] == predicted[-1] == -1 and predicted[2] > 0
    if rule == "subgradient" and momentum == 0.9 and not cosine:  # the rule of thumb: lr lam / (1 - mu) a step, after a warm-up
        rate = lr * lam / (1 - momentum)  # of mu / (1 - mu) steps
        assert abs(predicted[0] - (1 - thr) / rate - momentum / (1 - momentum)) <= 1


@pytest.mark.parametrize("cosine", [False, True])
def test_the_adam_schedule_moves_every_gamma_by_lr_a_step_whatever_lam(cosine):
    from cen_lab.experiments.training import lr_at

    lr, thr, steps = 5e-3, 2e-2, 600
    gamma0 = torch.tensor([1.0, 0.5, -0.75, 0.01, 4.0])
    tcfg = cen_lab.ExperimentConfig().train.__class__(lr=lr, steps=steps, lr_schedule="cosine" if cosine else "constant")
    rates = np.array([lr_at(tcfg, s) for s in range(steps)])
    predictions = []
    for lam in (1e-4, 2e-3, 5e-2):
        gamma = torch.nn.Parameter(gamma0.clone().double())
        opt = torch.optim.Adam([gamma], lr=lr)
        crossed = torch.full_like(gamma0, -1, dtype=torch.int64)
        for t in range(1, steps + 1):
            for group in opt.param_groups:
                group["lr"] = rates[t - 1]
            opt.zero_grad()
            gamma.grad = lam * torch.sign(gamma.detach())
            opt.step()
            crossed[(gamma.detach().abs() < thr) & (crossed < 0)] = t
        crossed[gamma0.abs() < thr] = 0
        predicted = schedule_steps(gamma0.numpy(), thr, rates, lam, 0.9, optimizer="adam")
        assert predicted.tolist() == crossed.tolist()
        predictions.append(predicted.tolist())
    assert predictions[0] == predictions[1] == predictions[2]  # lam does not set Adam's pace
    assert predictions[0][-1] == -1 and (predictions[0][0] == 197 if not cosine else predictions[0][0] > 197)


def _run(gamma: np.ndarray, penalised: np.ndarray, *, steps=None, grads: np.ndarray | None = None, config=None,
         threshold=0.02, branches=("rgb", "depth"), status="complete") -> Run:
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
                "status": status}
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
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.lam": 5e-3, "train.lr": 0.05, "train.optimizer": "sgd",
                                                             "train.lr_schedule": "constant"})
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
    order[PEN] = [0, 2, 4, 6, 1, 3, 5, 7]  # half of each branch's penalised channels cross: neither collapses
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
    # too early to tell: penalised gammas smaller, none crossed yet, no trend to speak of, the run still going
    early = np.where(PEN, 0.8 - t * 0.001, 1.0)
    assert diagnose(_run(early, PEN, status="incomplete")).state == "too early to tell"
    # the same gammas in a finished run: it exchanged nothing, so it is not sparsifying (a lambda too small)
    d = diagnose(_run(early, PEN))
    assert d.state == "not sparsifying" and d.numbers["p_mannwhitney"] < 0.05


def test_a_real_tiny_run_and_the_threshold_grid(tmp_path, capsys):
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 40, "log.grads": True, "train.lam": 0.05,
                                                             "train.optimizer": "sgd", "train.lr": 0.05,
                                                             "train.lr_schedule": "constant"})
    run = cen_lab.train(cfg, tmp_path / "run", progress=False)
    d = cen_lab.diagnose(run, thresholds=[0.0, 0.02, 0.5])
    # 40 SGD steps of the tiny preset at lam 0.05: the penalised gammas are not yet below the unpenalised ones
    assert d.state == "not sparsifying" and d.flags == ["not sparsifying"] and "smoke test" in d.regime
    assert f"{d.numbers['final']:.3f}" == d.table.iloc[0]["value"]  # the table formats the unrounded numbers
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


def test_two_regimes_side_by_side_table_and_figure(tmp_path):
    from cen_lab import plots
    from cen_lab.config import COLLAPSE_TRAIN
    from cen_lab.experiments.diagnosis import compare_diagnoses, diagnose_runs

    base = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 40, "log.grads": True})
    runs = {"adam": cen_lab.train(base, tmp_path / "adam", progress=False),
            "sgd": cen_lab.train(base.override({**COLLAPSE_TRAIN, "train.lam": 0.3}), tmp_path / "sgd", progress=False)}
    diagnoses = diagnose_runs(runs)
    table = compare_diagnoses(diagnoses)
    assert list(table.columns) == ["measure", "adam", "sgd", "rule"] and table["measure"].iloc[0] == "state"
    assert table.set_index("measure").loc["state", "sgd"].startswith(diagnoses["sgd"].state)
    assert "SGD lr 0.05" in table.set_index("measure").loc["regime", "sgd"]
    frame = plots.compute_regime_comparison(runs, diagnoses)
    sgd = frame[(frame["regime"] == "sgd") & (frame["kind"] == "channel")]
    assert len(sgd) == len(diagnoses["sgd"].crossings) and sgd["crossing_step"].notna().any()
    assert sgd["crossing_step"].notna().sum() == diagnoses["sgd"].crossings["crossing_step"].notna().sum()
    traj = frame[(frame["regime"] == "sgd") & (frame["kind"] == "trajectory")]
    first = runs["sgd"].gammas.query("penalised")["layer"].iloc[0]
    assert traj["channel"].nunique() == runs["sgd"].gammas.query("penalised and layer == @first and step == 0").shape[0]
    last = traj[traj["step"] == traj["step"].max()]
    assert ((last["value"] < 0.02) <= last["crossed"]).all()  # under the threshold at the end: it crossed
    portion = frame[(frame["kind"] == "portion") & (frame["regime"] == "sgd") & (frame["series"] == "penalised")]
    assert portion["value"].iloc[-1] == pytest.approx(float(diagnoses["sgd"].table.iloc[0]["value"]), abs=1e-3)
    fig = plots.plot_regime_comparison(frame)
    assert len(fig.get_axes()) == 6 and fig.get_axes()[1].get_title() == "adam: crossing step vs importance"
    assert len(plots.plot_regime_comparison(frame, backend="plotly").data) > 6
    with pytest.raises(ValueError, match="compute_regime_comparison"):
        plots.plot_regime_comparison(runs["sgd"].gammas)
    with pytest.raises(ValueError, match="no penalised layer 'nope'"):
        plots.compute_regime_comparison(runs, diagnoses, layer="nope")


def test_short_observed_runs_are_read_for_what_they_show():
    t = np.arange(8)[:, None]
    # every penalised gamma of rgb under the threshold, one of depth's: 62.5% overall, but rgb has collapsed
    g = np.ones((8, 16))
    g[:, :4] = np.where(t < 2, 1.0, 0.0)
    g[:, 12] = np.where(t[:, 0] < 2, 1.0, 0.0)
    d = diagnose(_run(g, PEN, steps=np.arange(8)))
    assert d.state == "collapsing" and d.numbers["final"] == 0.625
    assert any("branch rgb has 100% of its penalised gammas under the threshold" in n for n in d.notes)
    # the regime counts the logged steps, and an observed run gets its article
    assert "8 logged steps, to step 7" in d.regime
    assert any(n.startswith("an observed run records no optimiser") for n in d.notes)
    # a portion flat since the first logged step has not been seen to settle
    flat = np.ones((8, 16))
    flat[:, :2] = 0.0
    d = diagnose(_run(flat, PEN, steps=np.arange(8), status="incomplete"))
    assert d.numbers["plateau"] == 0 and "settling" not in d.flags
    # a trend far beyond the run (here about 94,000 steps after a span of 7,000) is not given as a step number
    slow = np.ones((8, 16))
    slow[:, 0] = np.where(t[:, 0] < 6, 1.0, 0.0)  # one channel crosses at the 7th logged step, then nothing
    steps = np.array([0, 1, 2, 3, 4, 5, 6, 7000])
    d = diagnose(_run(slow, PEN, steps=steps, status="incomplete"))
    reach = d.table.set_index("measure").loc["trend reaches 0.9 by step", "value"]
    assert reach == "beyond 10x the logged span (7000 steps)"
