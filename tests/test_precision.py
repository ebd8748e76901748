"""The opt-in bfloat16 training forward (train.precision) and what it changes (cen_lab.precision)."""

import numpy as np
import pandas as pd
import pytest
import torch

import cen_lab
from cen_lab import precision
from cen_lab.config import ConfigError, ExperimentConfig
from cen_lab.network.architectures import build_model
from cen_lab.runs import TABLES, load_run


def _cfg(seed: int, prec: str, steps: int = 30) -> ExperimentConfig:
    return ExperimentConfig.preset("tiny").override({"seed": seed, "train.steps": steps, "train.precision": prec,
                                                     "train.ckpt_every": steps, "log.every": 5, "log.grads": True})


def test_precision_is_a_checked_setting_and_fp32_by_default():
    assert ExperimentConfig.preset("default").train.precision == "fp32"
    with pytest.raises(ConfigError, match="train.precision"):
        ExperimentConfig.preset("tiny").override({"train.precision": "fp16"})
    with pytest.raises(ValueError, match="unknown precision"):
        precision.autocast(torch.device("cpu"), "int8")


def test_bf16_runs_convolutions_in_bfloat16_and_keeps_parameters_and_losses_fp32():
    cfg = _cfg(0, "bf16")
    model = build_model(cfg.model, 2, 3, 5, "seg", "disjoint").train()
    seen = []
    handle = model.blocks[0].conv.convs[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with precision.autocast(torch.device("cpu"), "bf16"):
        out = model.forward_tasks(torch.randn(2, 4, 3, 32, 32))["seg"]
    handle.remove()
    assert seen == [torch.bfloat16] and out.logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with precision.autocast(torch.device("cpu"), "fp32"):
        model.forward_tasks(torch.randn(2, 4, 3, 32, 32))
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and not torch.is_autocast_enabled("cpu")


@pytest.fixture(scope="module")
def paired_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return {p: {s: cen_lab.train(_cfg(s, p), root / f"{p}-{s}", progress=False) for s in range(3)}
            for p in ("fp32", "bf16")}


def test_a_bf16_run_logs_the_same_schema_in_fp32(paired_runs):
    a, b = paired_runs["fp32"][0], paired_runs["bf16"][0]
    assert b.status == "complete" and b.config.train.precision == "bf16"
    for table in ("gammas", "exchange", "metrics", "grads"):
        ta, tb = getattr(a, table), getattr(b, table)
        assert list(ta.columns) == list(tb.columns) and len(ta) == len(tb)
        assert (ta.dtypes == tb.dtypes).all()
    assert not np.array_equal(a.gammas["gamma"], b.gammas["gamma"])  # bf16 did change the computation
    assert b.grads.select_dtypes("number").notna().all().all()


def test_bf16_is_deterministic_on_the_cpu(paired_runs, tmp_path):
    again = cen_lab.train(_cfg(1, "bf16"), tmp_path / "again", progress=False)
    for table in TABLES:  # every table, bit for bit
        pd.testing.assert_frame_equal(getattr(again, table), getattr(paired_runs["bf16"][1], table), check_exact=True)


def test_bf16_final_gammas_and_scores_within_the_stated_tolerance(paired_runs):
    # the stated tolerance (benchmarks/README.md): bf16 moves a final gamma by less than a third of the spread
    # that the seed gives it (RMS), and the final validation score by less than its fp32 spread across seeds
    effect = precision.compare_precisions(paired_runs["fp32"], paired_runs["bf16"]).set_index("quantity")
    assert effect.loc["final gamma", "n"] > 0
    assert effect.loc["final gamma", "ratio"] < 1 / 3
    score = effect.loc["final val miou/ensemble"]
    assert score["ratio"] < 1 and score["ci_low"] <= 0 <= score["ci_high"]


def test_compare_precisions_on_known_runs():
    class FakeRun:
        def __init__(self, gammas, score):
            self.gammas = pd.DataFrame({"step": 10, "layer": "b", "branch": 0, "channel": [0, 1],
                                        "gamma": gammas})
            self.metrics = pd.DataFrame({"step": [0, 10], "split": "val", "name": "miou/ensemble",
                                         "value": [0.0, score]})

    fp32 = {0: FakeRun([1.0, 0.0], 0.5), 1: FakeRun([0.8, 0.2], 0.6), 2: FakeRun([0.9, 0.1], 0.7)}
    low = {s: FakeRun(list(np.asarray(r.gammas["gamma"]) + 0.01), r.metrics["value"].iloc[1] + 0.02)
           for s, r in fp32.items()}
    effect = precision.compare_precisions(fp32, low).set_index("quantity")
    assert effect.loc["final gamma", "difference"] == pytest.approx(0.01)
    assert effect.loc["final gamma", "spread"] == pytest.approx(0.1)  # both channels' sd across seeds
    assert effect.loc["final gamma", "ratio"] == pytest.approx(0.1)
    assert effect.loc["final val miou/ensemble", "difference"] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="at least two seeds"):
        precision.compare_precisions({0: fp32[0]}, {0: low[0]})


def test_the_zero_outcome_agreement_is_a_rate_with_a_wilson_interval():
    class FakeRun:
        def __init__(self, gammas):
            self.gammas = pd.DataFrame({"step": 10, "layer": "b", "branch": 0, "channel": range(4), "gamma": gammas})
            self.metrics = pd.DataFrame({"step": [10], "split": "val", "name": "miou/ensemble", "value": [0.5]})

    fp32 = {0: FakeRun([0.0, 0.0, 0.3, 0.4]), 1: FakeRun([0.0, 0.1, 0.3, 0.4])}
    low = {0: FakeRun([0.0, 0.2, 0.3, 0.4]), 1: FakeRun([0.0, 0.1, 0.3, 0.0])}  # 2 of 8 pairs disagree
    row = precision.compare_precisions(fp32, low).set_index("quantity").loc["same gammas at exactly 0 (rate)"]
    assert row["n"] == 8 and row["difference"] == pytest.approx(6 / 8)
    assert row["ci_low"] < 0.75 < row["ci_high"] < 1


def test_runs_that_differ_in_more_than_precision_are_refused(paired_runs, tmp_path):
    other = cen_lab.train(_cfg(0, "bf16").override({"train.lam": 0.01}), tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match=r"differ in more than train.precision: \['train.lam'\]"):
        precision.compare_precisions(paired_runs["fp32"], {**paired_runs["bf16"], 0: other})
