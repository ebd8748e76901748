import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

import cen_lab
from cen_lab import ConfigError, NonFiniteLossError, RunExistsError
from cen_lab.config import COLLAPSE_TRAIN
from cen_lab.data import load_data
from cen_lab.network.exchange import exchange_sources
from cen_lab.network.architectures import build_model
from cen_lab.runs import TABLES
from cen_lab.experiments.training import data_losses


def assert_same_logs(a: cen_lab.Run, b: cen_lab.Run) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table), check_exact=True)


def test_same_seed_same_logs_bit_for_bit(tiny, tmp_path):
    a = cen_lab.train(tiny, tmp_path / "a", progress=False)
    b = cen_lab.train(tiny, tmp_path / "b", progress=False)
    assert a.complete and len(a.gammas) and len(a.metrics)
    assert_same_logs(a, b)
    c = cen_lab.train(tiny.override({"seed": 1}), tmp_path / "c", progress=False)
    assert not np.array_equal(a.gammas["gamma"], c.gammas["gamma"])


def test_run_round_trip(tiny_run):
    again = cen_lab.load_run(tiny_run.path)
    assert again.config == tiny_run.config and again.manifest == tiny_run.manifest
    assert_same_logs(again, tiny_run)
    m = tiny_run.manifest
    assert m["status"] == "complete" and m["last_step"] == 12 and m["modalities"] == ["rgb", "depth"]
    assert m["versions"]["torch"] == torch.__version__
    # every table has the documented rows: 2 layers x 2 modalities x 8 channels per record
    assert sorted(tiny_run.gammas["step"].unique()) == [0, 2, 4, 6, 8, 10, 12]
    assert len(tiny_run.gammas) == 7 * 32 and len(tiny_run.exchange) == 7 * 32
    assert sorted(tiny_run.grads["step"].unique()) == [0, 2, 4, 6, 8, 10]
    assert set(tiny_run.metrics.query("split == 'val'")["step"]) == {0, 6, 12}
    names = set(tiny_run.metrics["name"])
    assert {"loss/rgb", "loss/depth", "loss/ensemble", "miou/ensemble", "alpha/rgb", "penalty",
            "sparsity/below_threshold", "exchange/ratio"} <= names


def test_load_model_restores_the_final_weights(tiny_run):
    model = tiny_run.load_model()
    ckpt = tiny_run.checkpoint()
    assert ckpt["step"] == 12 and not model.training
    final = tiny_run.gammas.query("step == 12 and layer == 'blocks.0.bn'").sort_values(["modality", "channel"])
    assert np.array_equal(model.blocks[0].bn.weight.detach().numpy().ravel(), final["gamma"].to_numpy())


def _first_batch(cfg):
    ds = load_data(cfg.data)
    x, y = ds.stacked(0)
    idx = np.random.default_rng((cfg.seed, 0)).permutation(x.shape[1])[: cfg.train.batch_size]
    return ds, torch.from_numpy(x[:, idx]), torch.from_numpy(y[idx])


def test_logged_gradients_match_an_independent_computation(tiny_run):
    cfg = tiny_run.config
    ds, xb, yb = _first_batch(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, 2, xb.shape[2], ds.num_classes, ds.task, cfg.train.sparsity)
    outputs = {}

    def keep(name):
        def hook(module, inputs, output):  # output: the M branches' BN outputs [N, C, H, W]
            for part in output:
                part.retain_grad()  # an independent route to dL/dx' (cen_lab uses tensor hooks)
            outputs[name] = output
        return hook

    handles = [bn.register_forward_hook(keep(name)) for name, bn in model.cen_layers()]
    out = model(xb)
    branch, ens = data_losses(out.logits, out.ensemble, yb)
    (branch.sum() + ens).backward()
    for h in handles:
        h.remove()
    logged = tiny_run.grads.query("step == 0")
    for name, bn in model.cen_layers():
        rows = logged[logged["layer"] == name].sort_values(["modality", "channel"])
        norms = torch.stack([part.grad.pow(2).sum(dim=(0, 2, 3)).sqrt() for part in outputs[name]])
        np.testing.assert_allclose(rows["dxprime_norm"], norms.numpy().ravel(), rtol=1e-4)
        np.testing.assert_allclose(rows["dgamma"], bn.weight.grad.numpy().ravel(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rule", ["subgradient", "proximal"])
def test_penalty_acts_only_on_penalised_gammas_during_training(tiny, tmp_path, rule):
    lr, lam = 0.1, 0.05
    cfg = tiny.override({"train.steps": 2, "train.optimizer": "sgd", "train.lr_schedule": "constant",
                         "train.momentum": 0.0, "train.lr": lr, "train.lam": lam,
                         "train.l1_rule": rule, "log.every": 1, "log.grads": True})
    run = cen_lab.train(cfg, tmp_path / rule, progress=False)
    g = run.gammas.set_index(["step", "layer", "modality", "channel"]).sort_index()
    d = run.grads.set_index(["step", "layer", "modality", "channel"]).sort_index()
    g0, g1, pen = g.loc[0, "gamma"].to_numpy(), g.loc[1, "gamma"].to_numpy(), g.loc[0, "penalised"].to_numpy()
    grad = d.loc[0, "dgamma"].to_numpy()
    assert pen.any() and (~pen).any()
    if rule == "subgradient":
        expected = g0 - lr * (grad + lam * np.sign(g0) * pen)
    else:
        step = g0 - lr * grad
        expected = np.where(pen, np.sign(step) * np.maximum(np.abs(step) - lr * lam, 0), step)
    np.testing.assert_allclose(g1, expected, atol=2e-6)


def test_proximal_rule_reaches_exact_zeros_on_penalised_gammas_only(tiny, tmp_path):
    cfg = tiny.override({**COLLAPSE_TRAIN, "train.l1_rule": "proximal", "train.lam": 1.0, "train.lr": 0.2})
    run = cen_lab.train(cfg, tmp_path / "prox", progress=False)
    final = run.gammas.query("step == 12")
    assert (final.loc[final["penalised"], "gamma"] == 0.0).all()
    assert (final.loc[~final["penalised"], "gamma"] != 0.0).all()
    ratio = run.metrics.query("split == 'train' and name == 'exchange/ratio'").set_index("step")["value"]
    table = run.exchange.groupby("step")["exchanged"].mean()
    assert ratio.max() > 0 and np.allclose(ratio.to_numpy(), table.loc[ratio.index].to_numpy())
    ex = run.exchange.query("step == 12").merge(final, on=["step", "layer", "modality", "channel"])
    assert (ex["exchanged"] == ex["penalised"]).all()  # zeroed gammas are exchanged, the others are kept
    assert (ex.loc[ex["exchanged"], "source"] == 1 - ex.loc[ex["exchanged"], "modality"]).all()


def test_stop_and_resume_equals_uninterrupted(tiny, tmp_path):
    full = cen_lab.train(tiny, tmp_path / "full", progress=False)
    part = cen_lab.train(tiny, tmp_path / "part", progress=False, stop_at=9)
    assert part.status == "incomplete" and part.manifest["last_step"] == 9
    with pytest.raises(RunExistsError, match="resume=True"):
        cen_lab.train(tiny, tmp_path / "part", progress=False)
    resumed = cen_lab.train(tiny, tmp_path / "part", progress=False, resume=True)
    assert resumed.complete
    assert_same_logs(full, resumed)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_cosine_schedule_sets_each_steps_rate_and_resumes_exactly(tiny, tmp_path, optimizer):
    from cen_lab.experiments.training import lr_at

    cfg = tiny.override({"train.lr_schedule": "cosine", "train.optimizer": optimizer, "train.lr": 0.01})
    rates = [lr_at(cfg.train, s) for s in range(cfg.train.steps)]
    assert rates[0] == 0.01 and rates == sorted(rates, reverse=True) and 0 < rates[-1] < 0.01 * 0.02
    assert rates[cfg.train.steps // 2] == pytest.approx(0.005)
    assert lr_at(tiny.override({"train.lr_schedule": "constant"}).train, 7) == tiny.train.lr
    full = cen_lab.train(cfg, tmp_path / "full", progress=False)
    constant = cen_lab.train(cfg.override({"train.lr_schedule": "constant"}), tmp_path / "const", progress=False)
    assert not np.array_equal(full.gammas["gamma"], constant.gammas["gamma"])  # the schedule is applied
    cen_lab.train(cfg, tmp_path / "part", progress=False, stop_at=9)
    assert_same_logs(full, cen_lab.train(cfg, tmp_path / "part", progress=False, resume=True))


def test_resume_after_an_error_drops_rows_past_the_checkpoint(tiny, tmp_path, monkeypatch):
    full = cen_lab.train(tiny, tmp_path / "full", progress=False)
    calls = {"n": 0}
    real = cen_lab.training.task_losses

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 10:  # the update starting at state 9, after the checkpoint at 6
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(cen_lab.training, "task_losses", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cen_lab.train(tiny, tmp_path / "crash", progress=False)
    crashed = cen_lab.load_run(tmp_path / "crash")
    assert crashed.status == "failed" and "simulated crash" in crashed.manifest["error"]
    assert crashed.gammas["step"].max() == 8  # rows logged up to the crash were kept
    monkeypatch.setattr(cen_lab.training, "task_losses", real)  # the real loss back: resume runs unpatched
    before = calls["n"]
    resumed = cen_lab.train(tiny, tmp_path / "crash", progress=False, resume=True)
    assert calls["n"] == before  # the failing wrapper is out of the way
    assert_same_logs(full, resumed)


KILL_SCRIPT = textwrap.dedent("""
    import os, sys, torch, cen_lab
    torch.set_num_threads(1)
    real_step, calls = torch.optim.Adam.step, {"n": 0}  # the tiny preset's optimiser
    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 9:
            os._exit(3)  # a hard kill: no handler runs, nothing is flushed
        return real_step(self, *a, **k)
    torch.optim.Adam.step = step
    cen_lab.train(cen_lab.ExperimentConfig.preset("tiny"), sys.argv[1], progress=False)
""")


def test_hard_killed_run_is_readable_and_resumes_to_the_same_result(tiny, tmp_path):
    killed_dir = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(killed_dir)], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    killed = cen_lab.load_run(killed_dir)
    assert killed.status == "incomplete" and killed.manifest["last_step"] == 6
    assert killed.gammas["step"].max() == 4  # what was flushed at the checkpoint of step 6
    resumed = cen_lab.train(tiny, killed_dir, progress=False, resume=True)
    full = cen_lab.train(tiny, tmp_path / "full", progress=False)
    assert_same_logs(full, resumed)


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_logs(tiny, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = cen_lab.training.task_losses

    def nan_at_step_5(*args):
        calls["n"] += 1
        total, per_task = real(*args)
        return (total * float("nan"), per_task) if calls["n"] == 6 else (total, per_task)

    monkeypatch.setattr(cen_lab.training, "task_losses", nan_at_step_5)
    with pytest.raises(NonFiniteLossError, match="data loss is nan at step 5"):
        cen_lab.train(tiny, tmp_path / "nan", progress=False)
    run = cen_lab.load_run(tmp_path / "nan")
    assert run.status == "failed" and "NonFiniteLossError" in run.manifest["error"]
    assert sorted(run.gammas["step"].unique()) == [0, 2, 4]
    assert np.isfinite(run.gammas["gamma"]).all()


def test_directory_with_a_different_run_is_refused_unless_overwrite(tiny, tmp_path):
    cen_lab.train(tiny, tmp_path / "r", progress=False)
    other = tiny.override({"train.lam": 0.01})
    with pytest.raises(RunExistsError, match="different run .*train.lam"):
        cen_lab.train(other, tmp_path / "r", progress=False)
    with pytest.raises(RunExistsError, match="different run"):
        cen_lab.train(other, tmp_path / "r", progress=False, resume=True)
    run = cen_lab.train(other, tmp_path / "r", progress=False, overwrite=True)
    assert run.config.train.lam == 0.01 and cen_lab.load_run(tmp_path / "r").config == other


def test_complete_run_is_reused_with_resume(tiny, tmp_path):
    first = cen_lab.train(tiny, tmp_path / "r", progress=False)
    again = cen_lab.train(tiny, tmp_path / "r", progress=False, resume=True)
    assert again.manifest["started_at"] == first.manifest["started_at"]


def test_folder_that_is_not_a_run_is_never_overwritten(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(RunExistsError, match="not a cen_lab run"):
        cen_lab.train(tiny, tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_batch_larger_than_the_data_is_an_error(tiny, tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size=128 exceeds the 64 training samples"):
        cen_lab.train(tiny.override({"train.batch_size": 128}), tmp_path / "r", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when no CUDA device exists")
def test_cuda_without_a_device_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        cen_lab.train(tiny.override({"train.device": "cuda"}), tmp_path / "r", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on any GPU machine)")
def test_a_tiny_run_on_cuda_trains_logs_and_reloads(tiny, tmp_path):
    run = cen_lab.train(tiny.override({"train.device": "cuda", "log.grads": True}), tmp_path / "gpu", progress=False)
    assert run.complete and run.manifest["device"].startswith("cuda")
    assert run.gammas["gamma"].notna().all() and not run.grads.empty and len(run.exchange) == len(run.gammas)
    reloaded = cen_lab.load_run(tmp_path / "gpu")
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(reloaded, table), getattr(run, table), check_exact=True)
    model = reloaded.load_model(device="cuda")
    assert next(model.parameters()).is_cuda
    cpu = cen_lab.train(tiny, tmp_path / "cpu", progress=False)  # the same run on the CPU, close but not bit for bit
    np.testing.assert_allclose(run.gammas["gamma"], cpu.gammas["gamma"], rtol=1e-3, atol=1e-4)


def test_three_modalities_classification_and_adam_train(tiny, tmp_path):
    cfg = tiny.override({"data.modalities": ["rgb", "depth", "edges"], "data.scene.task": "cls",
                         "train.steps": 4, "train.optimizer": "adam", "train.lr": 1e-2})
    run = cen_lab.train(cfg, tmp_path / "m3", progress=False)
    assert run.modalities == ["rgb", "depth", "edges"] and run.gammas["modality"].max() == 2
    assert "accuracy/ensemble" in set(run.metrics["name"])
    g = run.gammas
    assert not (g.query("step == 4")["gamma"].to_numpy() == g.query("step == 0")["gamma"].to_numpy()).any()


def test_init_from_starts_from_another_runs_weights(tiny, tmp_path):
    base = cen_lab.train(tiny, tmp_path / "base", progress=False)
    cfg = tiny.override({"train.init_from": str(base.path), "model.exchange": "none", "train.steps": 2})
    tuned = cen_lab.train(cfg, tmp_path / "tuned", progress=False)
    first = tuned.gammas.query("step == 0").reset_index(drop=True)
    last = base.gammas.query("step == 12").reset_index(drop=True)
    assert np.array_equal(first["gamma"], last["gamma"])
    assert tuned.manifest["init_from"] == str(base.path.resolve())
    wrong = tiny.override({"train.init_from": str(base.path), "model.widths": [4, 4]})
    with pytest.raises(ConfigError, match="do not fit this model"):
        cen_lab.train(wrong, tmp_path / "wrong", progress=False)


def test_resume_before_the_first_checkpoint_keeps_init_from(tiny, tmp_path, monkeypatch):
    base = cen_lab.train(tiny, tmp_path / "base", progress=False)
    cfg = tiny.override({"train.init_from": str(base.path)})
    full = cen_lab.train(cfg, tmp_path / "full", progress=False)
    calls = {"n": 0}
    real = cen_lab.training.task_losses

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # before the first checkpoint (step 6)
            raise RuntimeError("early crash")
        return real(*args)

    monkeypatch.setattr(cen_lab.training, "task_losses", failing)
    with pytest.raises(RuntimeError, match="early crash"):
        cen_lab.train(cfg, tmp_path / "crash", progress=False)
    monkeypatch.setattr(cen_lab.training, "task_losses", real)  # the real loss back: resume runs unpatched
    before = calls["n"]
    resumed = cen_lab.train(cfg, tmp_path / "crash", progress=False, resume=True)
    assert calls["n"] == before  # the failing wrapper is out of the way
    assert_same_logs(full, resumed)


@pytest.mark.parametrize("over", [
    {"model.exchange": "mean"},
    {"model.exchange": "random"},
    {"model.exchange": "cyclic", "data.modalities": ["rgb", "depth", "edges"]},
    {"model.exchange": "mean", "data.modalities": ["rgb", "depth", "edges"]},
    {"model.exchange": "mean", "data.tasks": ["seg", "depth"], "model.exchange_between": "both"},
    {"model.exchange": "mean", "model.exchange_blocks": [1]},
], ids=["mean", "random", "cyclic-3", "mean-3", "both", "one-block"])
def test_logged_exchange_table_follows_the_logged_gammas(tiny, tmp_path, over):
    # the logger computes sources from the gathered gammas; they must be what exchange_sources gives for them
    cfg = tiny.override({"train.l1_rule": "proximal", "train.lam": 1.0, "train.lr": 0.2, "log.every": 3, **over})
    run = cen_lab.train(cfg, tmp_path / "run", progress=False)
    model = run.load_model()
    blocks = {f"blocks.{b}.bn": blk for b, blk in enumerate(model.blocks)}
    keys = ["step", "layer", "branch", "channel"]
    table = run.exchange.merge(run.gammas, on=keys).sort_values(keys)
    assert table["exchanged"].any() and (~table["exchanged"]).any()
    for (step, layer), rows in table.groupby(["step", "layer"]):
        blk = blocks[layer]
        gamma = torch.tensor(rows["gamma"].to_numpy().reshape(blk.grid.size, -1))
        expected = exchange_sources(gamma, cfg.model.threshold, blk.exchange, blk.exchange_rank, blk.grid)
        assert rows["source"].tolist() == expected.flatten().tolist(), (step, layer)
        assert (rows["exchanged"] == (rows["source"] != rows["branch"])).all()


def test_logged_penalty_is_l1_of_the_logged_gammas(tiny_run):
    lam = tiny_run.config.train.lam
    g = tiny_run.gammas.query("penalised")
    expected = lam * g["gamma"].abs().groupby(g["step"]).sum()
    logged = tiny_run.metrics.query("split == 'train' and name == 'penalty'").set_index("step")["value"]
    assert len(logged) > 2 and logged.index.isin(expected.index).all()
    np.testing.assert_allclose(logged.to_numpy(), expected.loc[logged.index].to_numpy(), rtol=1e-6)


def test_threshold_zero_never_exchanges_and_logs_so(tiny, tmp_path):
    run = cen_lab.train(tiny.override({"model.threshold": 0.0, "train.steps": 4, "log.every": 2}), tmp_path / "t0",
                        progress=False)
    assert not run.exchange["exchanged"].any() and (run.exchange["source"] == run.exchange["branch"]).all()
    ratio = run.metrics.query("name == 'exchange/ratio'")["value"]
    assert len(ratio) and (ratio == 0).all()
