"""cen_lab.observe on a model in the reference code's layout, in a loop written by hand."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import cen_lab
from cen_lab.errors import ObserveError, RunExistsError
from cen_lab.runs import alternate_halves, find_bn_layers, resolve_layers
from cen_lab.zoo import BatchNorm2dParallel, ReferenceStyleCEN, reference_slim_params, segmentation_loss

GOLDEN = Path(__file__).parent / "data" / "golden_tiny_v2"


def _model(m: int = 2, planes=(4, 6), seed: int = 0) -> ReferenceStyleCEN:
    torch.manual_seed(seed)
    return ReferenceStyleCEN(3, 4, num_parallel=m, stem=8, planes=planes)


def _batch(m: int = 2, n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 8, 8, generator=g) for _ in range(m)], torch.randint(0, 4, (n, 8, 8), generator=g)


def _loop(model, obs, steps: int, *, lr: float = 0.5, lam: float = 0.05, grads_every: int = 0):
    """A plain hand-written loop; returns each logged step's bn2 weights as the modules hold them."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    slim = reference_slim_params(model)
    seen = {}
    for step in range(steps):
        batch = _batch(model.num_parallel, seed=step)
        ctx = obs.grads(step) if grads_every and step % grads_every == 0 else torch.enable_grad()
        with ctx:
            opt.zero_grad()
            loss = segmentation_loss(model, batch)
            loss.backward()
        (lam * sum(p.abs().sum() for p in slim)).backward()
        obs.log(step, metrics={"loss/total": loss.item()})
        seen[step] = {n: p.detach().clone() for n, p in model.named_parameters() if "bn2" in n and n.endswith("weight")}
        opt.step()
    return seen


def _observed_run(path: Path, steps: int) -> cen_lab.Run:
    """A reference-style model trained ``steps`` steps under the observer (threshold 0.9, so that channels
    exchange), with a final validation record."""
    model = _model()
    obs = cen_lab.observe(model, path, layers="*.bn2", threshold=0.9, penalised="alternate-halves",
                          modality_names=["rgb", "depth"])
    _loop(model, obs, steps)
    obs.log_metrics(steps, {"miou/rgb": 0.5, "miou/depth": 0.4, "miou/ensemble": 0.6}, split="val")
    obs.close()
    return cen_lab.load_run(path)


def test_logged_gammas_and_exchange_follow_the_modules(tmp_path):
    model = _model()
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", threshold=0.9, penalised="alternate-halves",
                          modality_names=["rgb", "depth"], lam=0.05)
    seen = _loop(model, obs, 6, grads_every=2)
    obs.close()
    run = cen_lab.load_run(tmp_path / "run")
    assert run.source == "observed" and run.status == "complete" and run.config is None
    assert run.threshold == 0.9 and run.lam == 0.05 and run.branches == ["rgb", "depth"]
    assert run.manifest["model_class"].endswith("ReferenceStyleCEN")
    assert run.manifest["layers"] == ["layers.0.0.bn2", "layers.1.0.bn2"]
    for step, weights in seen.items():
        g = run.gammas[run.gammas["step"] == step]
        for layer in run.manifest["layers"]:
            for b in (0, 1):
                logged = g[(g["layer"] == layer) & (g["branch"] == b)].sort_values("channel")["gamma"].to_numpy()
                np.testing.assert_array_equal(logged, weights[f"{layer}.bn_{b}.weight"].numpy())
    merged = run.gammas.merge(run.exchange, on=["step", "layer", "branch", "channel"])
    assert len(merged) == len(run.gammas)
    np.testing.assert_array_equal(merged["exchanged"], merged["gamma"].abs() < 0.9)
    assert merged["exchanged"].any() and not merged["exchanged"].all()  # the threshold splits the channels
    np.testing.assert_array_equal(merged["source"], np.where(merged["exchanged"], 1 - merged["branch"], merged["branch"]))
    assert sorted(run.grads["step"].unique()) == [0, 2, 4] and np.isfinite(run.grads["dxprime_norm"]).all()
    assert sorted(run.metrics["step"].unique()) == list(range(6))


def test_grads_are_the_data_gradient_and_the_bn_output_norm(tmp_path):
    model = _model()
    obs = cen_lab.observe(model, tmp_path / "run", layers=["layers.0.0.bn2"], penalised="none")
    batch = _batch()
    with obs.grads(0) as norms:
        model.zero_grad()
        segmentation_loss(model, batch).backward()
    expected = torch.stack([model.layers[0][0].bn2.bn_0.weight.grad, model.layers[0][0].bn2.bn_1.weight.grad])
    assert norms["layers.0.0.bn2"].shape == (2, 4)
    obs.close()
    grads = cen_lab.load_run(tmp_path / "run").grads
    np.testing.assert_array_equal(grads.sort_values(["branch", "channel"])["dgamma"], expected.numpy().ravel())


@pytest.mark.parametrize("m", [2, 3])
def test_alternate_halves_is_the_reference_rule(tmp_path, m):
    model = _model(m, planes=(4, 7))
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="alternate-halves")
    # by hand: the k-th bn2 weight in parameter order penalises [:C//2] (k even) or [C//2:] (k odd)
    first = lambda c: np.arange(c) < c // 2  # noqa: E731
    if m == 2:
        expected = [np.stack([first(4), ~first(4)]), np.stack([first(7), ~first(7)])]
    else:  # the parity runs on across layers: layer 0 bn_0, bn_1, bn_2 are k = 0, 1, 2; layer 1 k = 3, 4, 5
        expected = [np.stack([first(4), ~first(4), first(4)]), np.stack([~first(7), first(7), ~first(7)])]
    for got, want in zip(obs.penalised_masks, expected):
        np.testing.assert_array_equal(got, want)
    # and the views reference_slim_params takes (the reference's selection) cover exactly these entries
    slim = reference_slim_params(model)
    params = dict(model.named_parameters())
    for li, layer in enumerate(obs.layers):
        for b, bn in enumerate(layer.modules):
            base = params[f"{layer.name}.bn_{b}.weight"]
            view = next(v for v in slim if v._base is base)
            start = (view.data_ptr() - base.data_ptr()) // base.element_size()
            mask = np.zeros(base.numel(), bool)
            mask[start:start + view.numel()] = True
            np.testing.assert_array_equal(mask, expected[li][b])
    obs.close()


def test_penalised_rules_and_masks(tmp_path):
    model = _model(3, planes=(6, 6))
    masks = {}
    for rule in ("disjoint", "all", "none"):
        obs = cen_lab.observe(model, tmp_path / rule, layers="*.bn2", penalised=rule)
        masks[rule] = obs.penalised_masks[0]
        obs.close()
    np.testing.assert_array_equal(masks["disjoint"], cen_lab.sparsity_mask(6, 3, "disjoint").numpy())
    assert masks["all"].all() and not masks["none"].any()
    own = {"layers.0.0.bn2": np.eye(3, 6, dtype=bool), "layers.1.0.bn2": np.ones((3, 6), bool)}
    obs = cen_lab.observe(model, tmp_path / "mask", layers="*.bn2", penalised=own)
    obs.log(0)
    obs.close()
    pen = cen_lab.load_run(tmp_path / "mask").gammas.sort_values(["layer", "branch", "channel"])
    np.testing.assert_array_equal(pen["penalised"], np.concatenate([own["layers.0.0.bn2"].ravel(), np.ones(18, bool)]))
    assert alternate_halves([(0, 0), (0, 1)], [(2, 3)])[0].tolist() == [[True, False, False], [False, True, True]]


def test_mean_exchange_of_three_modalities(tmp_path):
    model = _model(3)
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", threshold=2.0, penalised="none")
    obs.log(0)
    obs.close()
    ex = cen_lab.load_run(tmp_path / "run").exchange
    assert ex["exchanged"].all() and (ex["source"] == -1).all()  # gamma 1 < 2: a mean of the two others


def test_a_custom_exchange_rule(tmp_path):
    def cyclic(layer, gamma, threshold):
        m = gamma.shape[0]
        own = np.arange(m)[:, None].repeat(gamma.shape[1], 1)
        return np.where(np.abs(gamma) >= threshold, own, (own + 1) % m)

    model = _model(3)
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", threshold=2.0, penalised="none", exchange=cyclic)
    obs.log(0)
    obs.close()
    run = cen_lab.load_run(tmp_path / "run")
    assert run.manifest["exchange"].endswith("cyclic")
    np.testing.assert_array_equal(run.exchange["source"], (run.exchange["branch"] + 1) % 3)


def test_every_figure_and_the_explorer_work_on_an_observed_run(tmp_path):
    from cen_lab import plots
    from cen_lab.views.widgets import explore

    run = _observed_run(tmp_path / "run", 5)
    traj = plots.compute_gamma_trajectories(run.gammas, run.branches)
    assert len(traj) and set(traj["branch_name"]) == {"rgb", "depth"}
    maps = plots.compute_exchange_maps(run.exchange, run.branches)
    assert len(maps) == len(run.exchange)
    assert len(plots.compute_exchange_ratio(run.exchange, run.branches))
    assert len(plots.compute_flip_counts(run.exchange, run.branches))
    assert len(plots.compute_flip_events(run.exchange, run.branches))  # the threshold 0.9 makes channels flip
    assert len(plots.compute_sparsity(run.gammas, run.threshold, run.branches))
    assert len(plots.compute_gamma_snapshot(run.gammas, run.threshold, run.branches))
    curves = plots.compute_training_curves(run.metrics, run.outputs)
    assert set(curves["kind"]) == {"miou"} and set(curves["branch"]) == {"rgb", "depth", "ensemble"}
    for fig in (plots.plot_gamma_trajectories(traj, run.threshold), plots.plot_exchange_maps(maps),
                plots.plot_training_curves(curves)):
        assert fig.get_axes()
    from cen_lab.experiments.analysis import compute_run_summary

    summary = compute_run_summary([run])
    assert summary.loc[0, "threshold"] == 0.9 and summary.loc[0, "val/miou/ensemble"] == 0.6
    ex = explore(run)
    assert ex.steps == [0, 1, 2, 3, 4] and ex.figures["exchange"].get_axes()


def test_layers_are_found_in_every_layout():
    model = _model()
    names = [la.name for la in find_bn_layers(model)]
    assert "layers.0.0.bn2" in names and "bn1" in names and "layers.1.0.downsample.1" in names
    assert all(la.num_branches == 2 for la in find_bn_layers(model))
    # cen_lab's own ModalBatchNorm2d, and an explicit list of per-modality BNs
    net = cen_lab.models.CENNet(2, 3, 4, "seg", cen_lab.config.ModelConfig(widths=(4, 4), strides=(1, 1)))
    assert [la.name for la in find_bn_layers(net)] == ["blocks.0.bn", "blocks.1.bn"]
    two = nn.ModuleDict({"a": nn.BatchNorm2d(5), "b": nn.BatchNorm2d(5)})
    wrapper = nn.Module()
    wrapper.rgb, wrapper.depth = nn.Sequential(nn.BatchNorm2d(5), nn.ReLU()), nn.Sequential(nn.BatchNorm2d(5), nn.ReLU())
    layers = resolve_layers(wrapper, {"stem": [wrapper.rgb[0], wrapper.depth[0]]})
    assert layers[0].num_branches == 2 and layers[0].num_channels == 5
    assert resolve_layers(two)[0].name == ""  # the root module whose children are BNs


def test_cen_lab_network_observed_in_a_hand_written_loop(tmp_path):
    net = cen_lab.models.CENNet(2, 3, 4, "seg", cen_lab.config.ModelConfig(widths=(4, 4), strides=(1, 1)))
    net.blocks[1].bn.penalty_mask.zero_()
    obs = cen_lab.observe(net, tmp_path / "run")  # penalised: the modules' own penalty_mask
    obs.log(0)
    obs.close()
    g = cen_lab.load_run(tmp_path / "run").gammas
    assert g[g["layer"] == "blocks.0.bn"]["penalised"].sum() == 4 and not g[g["layer"] == "blocks.1.bn"]["penalised"].any()


# -- bad input: one clear error each, nothing logged before is lost


def test_wrong_layer_names_and_globs_list_the_candidates(tmp_path):
    model = _model()
    with pytest.raises(ObserveError, match=r"matches no readable layer.*layers\.0\.0\.bn2"):
        cen_lab.observe(model, tmp_path / "a", layers="*.bn9", penalised="none")
    with pytest.raises(ObserveError, match="is a Conv2d.*readable layers"):
        cen_lab.observe(model, tmp_path / "b", layers="conv1.module", penalised="none")
    with pytest.raises(ObserveError, match="BN-like modules"):
        cen_lab.observe(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)), tmp_path / "c", penalised="none")
    assert not (tmp_path / "a").exists()


def test_bad_layers_masks_and_thresholds(tmp_path):
    odd = nn.Module()
    odd.bn = nn.ModuleDict({"bn_0": nn.BatchNorm2d(4), "bn_1": nn.BatchNorm2d(5)})
    with pytest.raises(ObserveError, match="differ in size"):
        cen_lab.observe(odd, tmp_path / "a", layers="bn", penalised="none")
    one = nn.Module()
    one.bn = BatchNorm2dParallel(4, 1)
    with pytest.raises(ObserveError, match="M = 1"):
        cen_lab.observe(one, tmp_path / "b", layers="bn", penalised="none")
    model = _model()
    with pytest.raises(ObserveError, match="threshold must be >= 0"):
        cen_lab.observe(model, tmp_path / "c", layers="*.bn2", penalised="none", threshold=-0.1)
    with pytest.raises(ObserveError, match=r"shape \[M, C\] = \[2, 4\]"):
        cen_lab.observe(model, tmp_path / "d", layers="*.bn2",
                        penalised={"layers.0.0.bn2": np.ones((2, 5), bool), "layers.1.0.bn2": np.ones((2, 6), bool)})
    with pytest.raises(ObserveError, match="say which gammas"):
        cen_lab.observe(model, tmp_path / "e", layers="*.bn2")
    with pytest.raises(ObserveError, match="2 distinct"):
        cen_lab.observe(model, tmp_path / "f", layers="*.bn2", penalised="none", modality_names=["rgb"])


def test_steps_twice_backwards_and_non_finite_metrics_are_refused_and_nothing_is_lost(tmp_path):
    model = _model()
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="none", flush_every=1)
    obs.log(0, {"loss/total": 1.0})
    obs.log(3, {"loss/total": 0.5})
    with pytest.raises(ObserveError, match="step 3 is logged already"):
        obs.log(3)
    with pytest.raises(ObserveError, match="step 3 is logged already"):
        obs.log(2)
    with pytest.raises(ObserveError, match="not a finite number"):
        obs.log(4, {"loss/total": float("nan")})
    with pytest.raises(ObserveError, match="real number"):
        obs.log(4, {"loss/total": "low"})
    with pytest.raises(ObserveError, match="logged already at step 3"):
        obs.log_metrics(3, {"loss/total": 0.1})
    with pytest.raises(ObserveError, match="integer >= 0"):
        obs.log(-1)
    obs.log(4, {"loss/total": 0.25})  # the refused calls logged nothing: step 4 is still free
    obs.close()
    run = cen_lab.load_run(tmp_path / "run")
    assert sorted(run.gammas["step"].unique()) == [0, 3, 4]
    assert run.metrics["value"].tolist() == [1.0, 0.5, 0.25]
    with pytest.raises(RunExistsError, match=r"\(status complete\); pass resume=True to continue it or overwrite=True "
                                             "to start again"):
        cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="none")


def test_a_failing_loop_leaves_a_failed_readable_run(tmp_path):
    model = _model()
    with pytest.raises(RuntimeError, match="diverged"):
        with cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="none") as obs:
            obs.log(0)
            raise RuntimeError("diverged")
    run = cen_lab.load_run(tmp_path / "run")
    assert run.status == "failed" and "diverged" in run.manifest["error"] and list(run.gammas["step"].unique()) == [0]


_KILLED_LOOP = textwrap.dedent("""
    import os, signal, sys, torch
    import cen_lab
    from cen_lab.zoo import ReferenceStyleCEN
    out, resume, start, stop, kill_at = sys.argv[1], sys.argv[2] == "1", *map(int, sys.argv[3:6])
    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    if resume:  # the restarted loop's model and metrics differ from the first run's: which rows were kept shows
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
    obs = cen_lab.observe(model, out, layers="*.bn2", penalised="alternate-halves", resume=resume, flush_every=2)
    for step in range(start, stop):
        obs.log(step, {"loss/total": float(step) + (100.0 if resume else 0.0)})
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    obs.close()
""")


def test_a_killed_loop_leaves_a_readable_run_and_resume_does_not_duplicate_steps(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(_KILLED_LOOP)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(out), "0", "0", "20", "8"], env=env)
    assert proc.returncode == -signal.SIGKILL
    run = cen_lab.load_run(out)
    assert run.status == "incomplete" and sorted(run.gammas["step"].unique()) == list(range(8))  # flushed pairs
    # the loop restarts from its own checkpoint at step 5: rows from step 5 on are replaced, none duplicated
    proc = subprocess.run([sys.executable, str(script), str(out), "1", "5", "12", "-1"], env=env)
    assert proc.returncode == 0
    run = cen_lab.load_run(out)
    assert run.status == "complete"
    assert run.gammas.groupby("step").size().nunique() == 1 and sorted(run.gammas["step"].unique()) == list(range(12))
    assert run.metrics["step"].tolist() == list(range(12)) and not run.metrics.duplicated(["step", "name"]).any()
    assert run.manifest["rewinds"][0]["step"] == 5
    # the first run's rows before step 5 are kept, the restarted loop's from step 5 on replace the first run's
    assert run.metrics["value"].tolist() == [float(s) for s in range(5)] + [s + 100.0 for s in range(5, 12)]
    g = run.gammas.pivot_table(index="step", columns=["layer", "branch", "channel"], values="gamma")
    np.testing.assert_array_equal(g.loc[5].to_numpy(), 0.5 * g.loc[4].to_numpy())  # halved gammas from step 5
    # continuing past the end without rewinding keeps everything
    proc = subprocess.run([sys.executable, str(script), str(out), "1", "12", "14", "-1"], env=env)
    assert sorted(cen_lab.load_run(out).gammas["step"].unique()) == list(range(14))


# -- cen_lab.train logs through the same observer


def test_train_tables_are_identical_to_the_logger_before_the_observer(tmp_path):
    """Golden tables of the tiny preset with log.grads, written by the logger of commit 6d85f7d (before train()
    logged through the observer), when the tiny preset trained as the ``collapse`` preset's settings still do
    (SGD, momentum 0.9, constant lr 0.05, lam 5e-3). Every column bit for bit."""
    from cen_lab.config import COLLAPSE_TRAIN

    torch.set_num_threads(1)
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({**COLLAPSE_TRAIN, "name": "tiny", "log.grads": True})
    tiny_run = cen_lab.train(cfg, tmp_path / "tiny", progress=False)
    for table in ("gammas", "exchange", "metrics", "grads"):
        golden = pd.read_parquet(GOLDEN / f"{table}.parquet")
        got = getattr(tiny_run, table).reset_index(drop=True)
        assert list(got.columns) == list(golden.columns) and len(got) == len(golden)
        for col in golden.columns:
            np.testing.assert_array_equal(got[col].to_numpy(), golden[col].to_numpy(), err_msg=f"{table}.{col}")


def test_schema_2_runs_are_read_by_migration(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(tiny_run.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for key in ("source", "threshold", "lam", "l1_rule", "penalised_rule", "exchange", "model_class"):
        manifest.pop(key)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 2}))
    run = cen_lab.load_run(copy)
    assert run.source == "trained" and run.threshold == tiny_run.config.model.threshold
    assert run.manifest["migrated_from"] == 2 and run.manifest["schema_version"] == 3


def test_the_quickstart_notebook_reads_an_observed_run(tmp_path):
    import nbformat

    from cen_lab.views.reports import NOTEBOOK_DIR, run_notebook

    _observed_run(tmp_path / "run", 4)
    figs = tmp_path / "figs"
    out = run_notebook(NOTEBOOK_DIR / "quickstart.ipynb", {"run_dir": str(tmp_path / "run"), "figures_dir": str(figs),
                                                           "progress": False}, tmp_path / "out", progress_bar=False)
    assert nbformat.read(out, as_version=4).cells
    for stem in ("gamma_trajectories", "exchange_maps", "training_curves", "gamma_distributions"):
        assert (figs / f"{stem}.png").stat().st_size > 1000


def test_mixed_precision_logs_the_true_gradients_and_not_the_steps_the_scaler_skips(tmp_path):
    import warnings

    import torch.nn.functional as F

    from cen_lab.zoo import ReferenceStyleCEN

    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xs, y = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)], torch.randint(0, 4, (4, 16, 16))
    unscaled = {}
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="alternate-halves")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            opt.zero_grad()
            with obs.grads(step, scaler=scaler):
                outputs, _ = model(xs)
                loss = sum(F.cross_entropy(o, y) for o in outputs) * (float("inf") if step == 1 else 1.0)
                scaler.scale(loss).backward()
            scaler.unscale_(opt)  # what the scaler steps with: the true gradients
            unscaled[step] = torch.cat([m.weight.grad.flatten() for la in cen_lab.runs.resolve_layers(model, "*.bn2")
                                        for m in la.modules])
            scaler.step(opt)
            scaler.update()
    obs.close()
    run = cen_lab.load_run(tmp_path / "run")
    assert sorted(run.grads["step"].unique()) == [0, 2]  # step 1 had inf gradients: skipped, not logged
    assert run.manifest["grad_steps_skipped"] == [1]
    assert sum("GradScaler skips that step" in str(w.message) for w in caught) == 1
    for step in (0, 2):
        logged = run.grads[run.grads["step"] == step]["dgamma"].to_numpy()
        assert np.array_equal(logged, unscaled[step].numpy())  # bit for bit, not 1024 times it


def test_a_two_process_gloo_job_writes_the_run_from_rank_0_only(tmp_path):
    import json
    import subprocess
    import sys

    worker = Path(__file__).with_name("_ddp_worker.py")
    out, init = tmp_path / "run", tmp_path / "pg-init"
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), "2", str(init), str(out), str(tmp_path / f"r{r}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]  # no RunLockedError on rank 1
    reports = [json.loads((tmp_path / f"r{r}").read_text()) for r in range(2)]
    assert [(r["observer"], r["writing"]) for r in reports] == [("Observer", True), ("IdleObserver", False)]
    run = cen_lab.load_run(out)
    assert run.status == "complete" and sorted(run.gammas["step"].unique()) == [0, 1, 2]
    assert sorted(run.grads["step"].unique()) == [0, 1, 2] and len(run.metrics) == 3  # each step once, not twice
    assert run.manifest["model_class"] == "cen_lab.network.zoo.ReferenceStyleCEN"  # the model inside DDP


def test_observe_outside_a_process_group_writes_and_a_bad_rank_is_an_error(tmp_path, monkeypatch):
    import torch.distributed as dist

    from cen_lab.runs import IdleObserver

    model = _model()
    assert cen_lab.observe(model, tmp_path / "a", layers="*.bn2", penalised="none", rank=1).writing  # no group
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    idle = cen_lab.observe(model, tmp_path / "b", layers="*.bn2", penalised="none")
    assert isinstance(idle, IdleObserver) and not (tmp_path / "b").exists()
    with idle.grads(0) as norms:
        assert norms == {}
    idle.log(0, metrics={"loss/total": 1.0})
    with pytest.raises(ObserveError, match=r"rank=2 is not a rank of this process group \(ranks 0..1\)"):
        cen_lab.observe(model, tmp_path / "c", layers="*.bn2", penalised="none", rank=2)


def test_lam_is_the_weight_per_step_and_the_references_lamda_is_recorded_beside_it(tmp_path):
    model = _model()
    with cen_lab.observe(model, tmp_path / "a", layers="*.bn2", penalised="none", reference_lamda=2e-4) as obs:
        obs.log(0)
    run = cen_lab.load_run(tmp_path / "a")
    # the reference adds lamda * L1 once per output: M = 2 branches and the ensemble
    assert run.manifest["reference_lamda"] == 2e-4 and run.lam == run.lam_per_step == pytest.approx(6e-4)
    # lam= on the reference segmentation layout is taken as given, with a warning that names the other reading
    with pytest.warns(UserWarning, match=r"lam=0.0006 is taken as the L1 weight per step. These layers are the "
                                         r"reference segmentation code's .* pass reference_lamda=0.0006 instead"):
        with cen_lab.observe(model, tmp_path / "b", layers="*.bn2", penalised="none", lam=6e-4) as obs:
            obs.log(0)
    run = cen_lab.load_run(tmp_path / "b")
    assert run.lam_per_step == 6e-4 and run.manifest["reference_lamda"] is None
    with pytest.raises(ObserveError, match=r"lam=0.001 is the L1 weight per step, and reference_lamda=0.0002 added "
                                           r"once per output \(M \+ 1 = 3\) by the reference's segmentation code "
                                           r"gives 0.0006"):
        cen_lab.observe(model, tmp_path / "c", layers="*.bn2", penalised="none", lam=1e-3, reference_lamda=2e-4)
    assert run.manifest["reference_code"] is None


def test_the_reference_translation_code_adds_its_lamda_once_per_step(tmp_path):
    from cen_lab.zoo import ReferenceStyleTranslator

    model = ReferenceStyleTranslator(3, 3)
    with cen_lab.observe(model, tmp_path / "t", layers="*.insnorm_conv", penalised="alternate-halves",
                         reference_lamda=1e-3) as obs:
        obs.log(0)
    run = cen_lab.load_run(tmp_path / "t")
    assert run.manifest["reference_code"] == "translation" and run.lam_per_step == 1e-3  # not (M + 1) * 1e-3
    # the segmentation model's BatchNorms read as the segmentation code; either can be named
    with cen_lab.observe(_model(), tmp_path / "s", layers="*.bn2", penalised="none", reference_lamda=2e-4,
                         reference_code="translation") as obs:
        obs.log(0)
    assert cen_lab.load_run(tmp_path / "s").lam_per_step == 2e-4
    with pytest.raises(ObserveError, match=r"reference_code must be one of \['segmentation', 'translation'\]"):
        cen_lab.observe(model, tmp_path / "x", layers="*.insnorm_conv", penalised="none", reference_lamda=1e-3,
                        reference_code="seg")
    assert not (tmp_path / "x").exists()


def test_a_wrong_layer_name_lists_a_few_layers_and_says_how_many(tmp_path):
    from cen_lab.zoo import ReferenceStyleCEN

    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4,) * 12)  # 49 readable layers (stem, 3 BNs and a downsample a block)
    with pytest.raises(ObserveError) as err:
        cen_lab.observe(model, tmp_path / "run", layers="*.bn9", penalised="none")
    text = str(err.value)
    assert "matches no readable layer of ReferenceStyleCEN" in text and len(text) < 800
    assert "...] (49 in all)" in text and "...] (98 in all)" in text and "'bn1', 'layers.0.0.bn1'" in text
    assert not (tmp_path / "run").exists()
