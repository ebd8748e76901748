import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import cen_lab
from cen_lab import theorem
from cen_lab.errors import ObserveError
from cen_lab.data import load_data
from cen_lab.experiments.regime import SMOKE_TEST
from cen_lab.experiments.training import data_losses

TINY = {"preset": "tiny", "steps": 12, "checkpoints": 2, "model__widths": (8, 8)}


@pytest.fixture(scope="module")
def theorem_runs(tmp_path_factory):
    torch.set_num_threads(1)
    return theorem.train_theorem_runs([0.01, 0.5], [0, 1], tmp_path_factory.mktemp("th"), progress=False, **TINY)


def test_theorem_config_is_the_no_exchange_network():
    cfg = theorem.theorem_config("tiny", 0.01, 3, 12, checkpoints=2)
    assert cfg.model.exchange == "none" and cfg.train.l1_rule == "proximal" and cfg.train.lam == 0.01
    assert cfg.seed == 3 and cfg.train.ckpt_every == 6 and cfg.log.grads
    assert cfg.name == "theorem-tiny-proximal-train.lam=0.01-seed=3"
    assert theorem.theorem_config("tiny", model__share_convs=False).name.startswith("theorem-tiny-proximal-unshared-")


def test_bf16_theorem_runs_have_their_own_names_and_say_so_in_their_regime():
    # the theorem notebook's precision parameter: a bf16 run must never reuse (or collide with) the fp32 run
    cfg = theorem.theorem_config("tiny", 0.01, 3, 12, train__precision="bf16")
    assert cfg.train.precision == "bf16" and cfg.name == "theorem-tiny-proximal-bf16-train.lam=0.01-seed=3"
    runs = {(0.01, 3): SimpleNamespace(config=cfg)}
    regimes = theorem.theorem_regimes(runs, "tiny", corollary_lam=0.5, finetune_steps=4, seeds=[3], steps=12,
                                      checkpoints=2, train__precision="bf16")
    assert all(r["optimiser"].endswith(", bf16 forward") for r in regimes.values())
    fp32 = theorem.theorem_regimes(runs, "tiny", corollary_lam=0.5, finetune_steps=4, seeds=[3], steps=12,
                                   checkpoints=2)
    assert not fp32["corollary-shared"]["optimiser"].endswith("bf16 forward")


def test_local_check_matches_an_independent_gradient(theorem_runs):
    run = theorem_runs[(0.01, 0)]
    local = theorem.local_check(run, n_batches=2, seed=5)
    assert sorted(local["step"].unique()) == [6, 12]
    assert len(local) == 2 * 2 * 16  # checkpoints x batches x penalised channels (2 layers x 8 channels)
    # recompute one channel alone: gamma set to 0, one backward pass
    row = local.query("step == 12 and batch == 1").iloc[3]
    model = run.load_model(12).train()
    rng = np.random.default_rng(5)
    idx = [rng.choice(64, 16, replace=False) for _ in range(2)][1]
    ds = load_data(run.config.data)
    x, y = ds.stacked(0)
    xb, yb = torch.from_numpy(x[:, idx]), torch.from_numpy(y[idx])
    bn = dict(model.cen_layers())[row["layer"]]
    with torch.no_grad():
        bn.weight[row["modality"], row["channel"]] = 0.0
    out = model(xb)
    branch, ens = data_losses(out.logits, out.ensemble, yb)
    (branch.sum() + ens).backward()
    assert row["g"] == pytest.approx(float(bn.weight.grad[row["modality"], row["channel"]]), rel=1e-4, abs=1e-9)
    assert row["predicted"] == pytest.approx(float(np.asarray(theorem.attraction_probability(0.01, row["norm"]))))
    assert row["attracted"] == (abs(row["g"]) <= 0.01)


def test_calibration_summary_on_synthetic_local_frames():
    rng = np.random.default_rng(0)
    n = 4000
    norm = rng.uniform(0.001, 0.05, n)
    z = rng.standard_normal(n)  # the theorem's assumption holds exactly
    df = pd.DataFrame({"run": "r", "lam": 0.01, "step": 0, "layer": "l", "modality": 0,
                       "channel": np.arange(n) // 10, "batch": np.arange(n) % 10, "gamma": 0.0,
                       "g": z * norm, "norm": norm, "z": z})
    df["predicted"] = theorem.attraction_probability(0.01, df["norm"].to_numpy())
    df["attracted"] = df["g"].abs() <= 0.01
    good = theorem.calibration_summary(df, n_boot=50)
    assert good["ece"] < 0.05 and good["ece_ci"][0] <= good["ece"] <= good["ece_ci"][1]
    assert good["spearman"] > 0.5 and abs(good["normality"]["std"] - 1) < 0.05 and good["normality"]["pvalue"] > 0.01
    bad = theorem.calibration_summary(df.assign(predicted=rng.permutation(df["predicted"].to_numpy())), n_boot=50)
    assert bad["ece"] > good["ece"] + 0.1
    assert set(theorem.calibration_frame(good)["measure"]) >= {"brier", "ece", "spearman"}


def test_local_checks_in_two_workers_give_the_same_table(theorem_runs):
    serial = theorem.local_check_runs(theorem_runs, n_batches=1, progress=False)
    parallel = theorem.local_check_runs(theorem_runs, n_batches=1, progress=False, n_jobs=2)
    pd.testing.assert_frame_equal(serial, parallel, check_exact=True)  # the same rows in the same order (one thread each side)
    assert serial["run"].nunique() == len(theorem_runs)


def test_outcome_table_counts_exact_zeros(theorem_runs):
    local = theorem.local_check_runs(theorem_runs, n_batches=1, progress=False)
    per_lam, per_channel = theorem.outcome_table(theorem_runs, local)
    assert per_lam["lam"].tolist() == [0.01, 0.5] and (per_lam["n_channels"] == 32).all()
    assert (per_lam["zero_tol"] == 0).all() and (per_lam["n_seeds"] == 2).all()
    final = pd.concat([r.gammas.query("step == 12 and penalised") for r in theorem_runs.values()])
    assert per_channel["zero"].sum() == int((final["gamma"] == 0).sum())
    big = per_lam.set_index("lam").loc[0.5]
    assert big["observed"] > 0 and big["ci_low"] <= big["observed"] <= big["ci_high"]


def test_corollary_summary_verdicts():
    rows = [{"share_convs": True, "seed": s, "loss_base": 1.0, "loss_switched": 1.0 + d, "loss_exchange": 0.5 + d / 10,
             "loss_control": 0.9, "delta": 0} for s, d in enumerate([0.1, 0.12, 0.11])]
    rows += [{"share_convs": False, "seed": s, "loss_base": 1.0, "loss_switched": 1.0 + d, "loss_exchange": 0.9 + d,
              "loss_control": 0.9, "delta": 0} for s, d in enumerate([-0.2, 0.3, 0.01])]
    summary = theorem.corollary_summary(pd.DataFrame(rows)).set_index(["share_convs", "comparison"])["verdict"]
    assert summary[(True, "after fine-tuning")] == "holds"
    assert summary[(True, "immediately")] == "does not hold"
    assert summary[(False, "after fine-tuning")] == "inconclusive"


def test_corollary_check_runs_and_measures_losses(tmp_path):
    df = theorem.corollary_check([0, 1], tmp_path, lam=0.5, base_steps=12, finetune_steps=4, checkpoints=2,
                                 progress=False, preset="tiny", model__widths=(8, 8))
    assert len(df) == 4 and set(df["share_convs"]) == {True, False}
    assert np.isfinite(df[["loss_base", "loss_switched", "loss_exchange", "loss_control"]].to_numpy()).all()
    assert (df["exchanged_channels"] > 0).all()  # lam 0.5 zeroes channels, so switching exchange on changes them
    assert np.allclose(df["delta"], df["loss_exchange"] - df["loss_control"])


def test_verdict_table_rules():
    controlled = pd.DataFrame({"within_ci": [True] * 20, "inverseless_within_ci": [False] * 19 + [True],
                               "abs_error": [0.01] * 20})
    calibration = {"ece": 0.4, "ece_ci": [0.35, 0.45], "brier": 0.3, "spearman": 0.8, "spearman_ci": [0.7, 0.9],
                   "normality": {"mean": 0.0, "std": 1.02, "pvalue": 0.5, "n": 100}}
    outcome = pd.DataFrame({"lam": [0.01], "predicted": [0.5], "observed": [0.45], "ci_low": [0.4], "ci_high": [0.55]})
    corollary = pd.DataFrame([{"share_convs": True, "comparison": "after fine-tuning", "n_seeds": 3, "mean_delta": -0.4,
                               "ci_low": -0.5, "ci_high": -0.3, "seeds_lower_with_exchange": 3, "verdict": "holds"}])
    v = theorem.verdict_table(controlled, calibration, outcome, corollary)["verdict"].tolist()
    assert v == ["holds", "does not hold", "does not hold", "holds", "holds", "holds", "holds"]


def test_verdict_display_rounds_and_writes_intervals_as_text():
    verdicts = pd.DataFrame({"claim": ["a", "b"], "number": [0.41208889, -0.518], "verdict": ["x", "y"],
                             "interval": [[0.378883485, 0.445775159], [float("nan"), float("nan")]]})
    shown = theorem.verdict_display(verdicts)
    assert shown["interval"].tolist() == ["0.379 to 0.446", ""]
    assert shown["number"].tolist() == [0.412, -0.518]
    assert verdicts["interval"].iloc[0] == [0.378883485, 0.445775159]  # the table itself keeps its numbers


def test_every_verdict_says_its_regime():
    runs = {(lam, s): SimpleNamespace(config=theorem.theorem_config("tiny", lam, s, 12)) for lam in (0.01, 0.5)
            for s in (0, 1)}
    regimes = theorem.theorem_regimes(runs, "tiny", corollary_lam=0.5, finetune_steps=4, seeds=[0, 1], steps=12,
                                      checkpoints=2)
    trained = regimes["trained"]
    assert trained == {"preset": "tiny", "architecture": "plain conv blocks (16, 16), no exchange", "steps": "12",
                       "lam": "0.01, 0.5", "optimiser": "SGD lr 0.05 momentum 0.9",
                       "l1_rule": "proximal, disjoint, once per step", "evidence": SMOKE_TEST}
    assert regimes["corollary-unshared"]["architecture"].endswith("no exchange, unshared convs")
    assert regimes["corollary-shared"]["architecture"].endswith("no exchange")
    assert regimes["corollary-shared"]["lam"] == "0.5"
    controlled = pd.DataFrame({"within_ci": [True] * 20, "inverseless_within_ci": [False] * 20, "abs_error": [0.01] * 20})
    calibration = {"ece": 0.4, "ece_ci": [0.35, 0.45], "brier": 0.3, "spearman": 0.8, "spearman_ci": [0.7, 0.9],
                   "normality": {"pvalue": 0.5, "std": 1.0, "mean": 0.0}}
    outcome = pd.DataFrame({"predicted": [0.5], "observed": [0.5], "ci_low": [0.4], "ci_high": [0.6]})
    corollary = pd.DataFrame({"share_convs": [True, False], "comparison": ["final"] * 2, "n_seeds": [2] * 2,
                              "seeds_lower_with_exchange": [2] * 2, "mean_delta": [-0.1] * 2, "ci_low": [-0.2] * 2,
                              "ci_high": [-0.01] * 2, "verdict": ["holds"] * 2})
    table = theorem.verdict_table(controlled, calibration, outcome, corollary, regimes=regimes)
    by_claim = dict(zip(table["claim"], table["regime"]))
    assert by_claim["Inverse-less variant 2*Phi(lam*|dL/dx'|)-1 (controlled)"] == theorem.CONTROLLED_REGIME
    trained_text = by_claim["The formula ranks channels by how often they are attracted"]
    assert trained_text.startswith("preset tiny; plain conv blocks (16, 16), no exchange; 12 steps; lam 0.01, 0.5; "
                                   "SGD lr 0.05 momentum 0.9")
    assert trained_text.endswith("(evidence: none: the tiny preset is a smoke test)")
    corollary_text = by_claim["Corollary 1 (shared convolutions, final)"]
    assert "then 4 fine-tuning steps with and without exchange" in corollary_text and "lam 0.5;" in corollary_text
    assert "unshared convs" not in corollary_text
    assert "no exchange, unshared convs;" in by_claim["Corollary 1 (unshared convolutions, final)"]
    assert set(theorem.verdict_table(controlled, calibration, outcome, corollary)["regime"]) == {
        theorem.CONTROLLED_REGIME, "not stated"}


def test_local_check_on_a_user_model_in_the_reference_layout():
    from cen_lab.zoo import ReferenceStyleCEN, segmentation_loss, without_exchange

    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    with torch.no_grad():  # as if trained: betas away from 0 (with beta = 0 a zeroed channel is 0 after ReLU,
        for p in model.parameters():  # whose gradient at 0 is 0)
            p.add_(0.2 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    batches = [([torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)], torch.randint(0, 4, (8, 8, 8), generator=g))
               for _ in range(3)]
    # with its exchange on, a gamma set to 0 is exchanged away: no gradient reaches it, and the check says so
    with pytest.warns(UserWarning, match="no gradient at gamma = 0"):
        vacuous = theorem.local_check_model(model, segmentation_loss, batches[:1], 0.01, layers="*.bn2",
                                            penalised="alternate-halves", progress=False)
    assert (vacuous["norm"] == 0).all() and (vacuous["g"] == 0).all()
    model = without_exchange(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    local = theorem.local_check_model(model, segmentation_loss, batches, 0.01, layers="*.bn2",
                                      penalised="alternate-halves", progress=False)
    assert len(local) == 3 * 10  # batches x penalised channels (4/2 + 6/2 per branch, two branches)
    assert np.isfinite(local[["g", "norm", "predicted"]].to_numpy()).all()
    # a zeroed channel outputs its beta everywhere; after the ReLU it is dead (no gradient) exactly when beta <= 0
    params = dict(model.named_parameters())
    beta = [float(params[f"{r.layer}.bn_{r.modality}.bias"][r.channel].detach()) for r in local.itertuples()]
    np.testing.assert_array_equal(local["norm"].to_numpy() > 0, np.array(beta) > 0)
    assert (local["norm"] > 0).mean() > 0.3
    assert set(local["layer"]) == {"layers.0.0.bn2", "layers.1.0.bn2"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model is untouched
    # one row recomputed by hand: gamma set to 0 in a copy, one backward of the loss
    row = local.query("batch == 2 and layer == 'layers.1.0.bn2' and modality == 1 and norm > 0").iloc[0]
    import copy

    twin = copy.deepcopy(model).train()
    bn = getattr(twin.layers[1][0].bn2, f"bn_{row['modality']}")
    with torch.no_grad():
        bn.weight[row["channel"]] = 0.0
    segmentation_loss(twin, batches[2]).backward()
    assert row["g"] == pytest.approx(float(bn.weight.grad[row["channel"]]), rel=1e-5, abs=1e-9)
    summary = theorem.calibration_summary(local, n_boot=20)
    assert 0 <= summary["ece"] <= 1 and len(summary["reliability"])
    sub = theorem.local_check_model(model, segmentation_loss, batches[:1], 0.01, layers="*.bn2", penalised="all",
                                    max_channels=5, seed=1, progress=False)
    assert len(sub) == 5
    with pytest.raises(ValueError, match="selects none"):
        theorem.local_check_model(model, segmentation_loss, batches, 0.01, layers="*.bn2", penalised="none",
                                  progress=False)


def _reference_model_and_batches():
    from cen_lab.zoo import ReferenceStyleCEN

    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    with torch.no_grad():  # as if trained: betas away from 0, running statistics of their own
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(0.3 * torch.randn_like(b))
    g = torch.Generator().manual_seed(0)
    batches = [([torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)], torch.randint(0, 4, (8, 8, 8), generator=g))
               for _ in range(2)]
    return model, batches


def test_exchange_off_by_a_recipe_is_checked_and_equals_the_model_without_exchange():
    from cen_lab.theory.foreign import bypass, exchange_is_off, set_attribute
    from cen_lab.zoo import Exchange, segmentation_loss, without_exchange

    model, batches = _reference_model_and_batches()
    kw = dict(layers="*.bn2", penalised="alternate-halves", progress=False)
    off, table = exchange_is_off(model, segmentation_loss, batches[0], layers="*.bn2", penalised="alternate-halves")
    assert not off and (table["no_gradient"] == table["channels"]).all()  # the reference's exchange is on
    assert exchange_is_off(without_exchange(model), segmentation_loss, batches[0], layers="*.bn2",
                           penalised="alternate-halves")[0]
    # the ready recipe for the reference layout: its bottlenecks keep the threshold as a plain attribute
    by_recipe = theorem.local_check_model(model, segmentation_loss, batches, 0.01,
                                          exchange_off=set_attribute("threshold", 0.0), **kw)
    by_copy = theorem.local_check_model(without_exchange(model), segmentation_loss, batches, 0.01, **kw)
    pd.testing.assert_frame_equal(by_recipe, by_copy, check_exact=True)
    # the exchange taken out instead of left in place at threshold 0: the same numbers, bit for bit
    by_bypass = theorem.local_check_model(model, segmentation_loss, batches, 0.01, exchange_off=bypass("exchange"),
                                          **kw)
    pd.testing.assert_frame_equal(by_bypass, by_recipe, check_exact=True)
    assert model.layers[0][0].threshold == 2e-2  # the user's model is untouched
    assert isinstance(model.layers[1][0].exchange, Exchange)
    with pytest.raises(ObserveError, match=r"bypass\('swap'\): ReferenceStyleCEN has no submodule called 'swap'"):
        theorem.local_check_model(model, segmentation_loss, batches, 0.01, exchange_off=bypass("swap"), **kw)
    with pytest.raises(ObserveError, match=r"exchange_off=.* leaves the exchange on: .*layers.0.0.bn2"):
        theorem.local_check_model(model, segmentation_loss, batches, 0.01, exchange_off=lambda m: None, **kw)
    with pytest.raises(ObserveError, match="no module of ReferenceStyleCEN has a number 'thresh'"):
        theorem.local_check_model(model, segmentation_loss, batches, 0.01, exchange_off=set_attribute("thresh"), **kw)


def test_bn_mode_of_the_local_check(tmp_path):
    from cen_lab.zoo import segmentation_loss, without_exchange

    model, batches = _reference_model_and_batches()
    model = without_exchange(model)
    kw = dict(layers="*.bn2", penalised="alternate-halves", progress=False)
    train = theorem.local_check_model(model, segmentation_loss, batches, 0.01, **kw)
    frozen = theorem.local_check_model(model, segmentation_loss, batches, 0.01, bn_mode="eval", **kw)
    assert train.attrs["bn_mode"] == "train" and frozen.attrs["bn_mode"] == "eval"
    assert not np.allclose(train["g"], frozen["g"])  # running statistics, not the batch's
    model.eval()
    as_is = theorem.local_check_model(model, segmentation_loss, batches, 0.01, bn_mode="as-is", **kw)
    assert np.allclose(as_is["g"], frozen["g"], rtol=1e-5, atol=1e-10)  # eval BN, the rest (no dropout) alike
    # the default is what the model's observed run recorded
    with cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="alternate-halves") as obs:
        obs.log(0)
    run = cen_lab.load_run(tmp_path / "run")
    assert run.manifest["bn_mode"] == "eval"
    default = theorem.local_check_model(model, segmentation_loss, batches, 0.01, run=run, **kw)
    assert default.attrs["bn_mode"] == "eval" and np.array_equal(default["g"], frozen["g"])
    by_path = theorem.local_check_model(model, segmentation_loss, batches, 0.01, run=str(tmp_path / "run"), **kw)
    pd.testing.assert_frame_equal(by_path, default, check_exact=True)  # a run's directory serves as well
    with pytest.raises(ValueError, match=r"bn_mode must be one of \['train', 'eval', 'as-is'\], got 'evaluation'"):
        theorem.local_check_model(model, segmentation_loss, batches, 0.01, bn_mode="evaluation", **kw)


def test_the_local_check_turns_dropout_off_so_that_it_repeats_bit_for_bit():
    from cen_lab.zoo import ReferenceStyleCEN, segmentation_loss, without_exchange

    model, batches = _reference_model_and_batches()
    torch.manual_seed(0)
    dropped = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6), dropout=0.5)
    dropped.load_state_dict(model.state_dict())  # the same weights, a Dropout(0.5) before the classifier
    dropped = without_exchange(dropped)
    kw = dict(layers="*.bn2", penalised="alternate-halves", progress=False)
    for mode in ("train", "eval"):
        first = theorem.local_check_model(dropped, segmentation_loss, batches, 0.01, bn_mode=mode, **kw)
        again = theorem.local_check_model(dropped, segmentation_loss, batches, 0.01, bn_mode=mode, seed=7, **kw)
        pd.testing.assert_frame_equal(first, again, check_exact=True)
        # dropout off: the numbers of the same model without dropout
        plain = theorem.local_check_model(without_exchange(model), segmentation_loss, batches, 0.01, bn_mode=mode,
                                          **kw)
        pd.testing.assert_frame_equal(first, plain, check_exact=True)
    # "as-is" leaves dropout as the model has it: on, in a model in training mode, so two calls differ
    dropped.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # batch statistics silence many zeroed channels here
        one = theorem.local_check_model(dropped, segmentation_loss, batches, 0.01, bn_mode="as-is", **kw)
        two = theorem.local_check_model(dropped, segmentation_loss, batches, 0.01, bn_mode="as-is", **kw)
    assert not np.array_equal(one["g"].to_numpy(), two["g"].to_numpy())
