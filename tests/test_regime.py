"""Which regime a number holds in (cen_lab.regime)."""

import pytest

from cen_lab import ExperimentConfig
from cen_lab.config import COLLAPSE_TRAIN
from cen_lab.experiments.regime import SMOKE_TEST, architecture, evidence, optimiser, regime_of, regime_text


def test_regime_lists_every_setting_of_the_runs():
    base = ExperimentConfig.preset("collapse").override({"name": "default"})
    cfgs = [base.override({"train.lam": lam}) for lam in (0.02, 0.005, 0.01)]
    r = regime_of(cfgs, "default", then="100 fine-tuning steps")
    assert r["lam"] == "0.005, 0.01, 0.02" and r["steps"] == "600" and r["preset"] == "default"
    assert r["architecture"] == "plain conv blocks (32, 32, 64, 64), mean exchange"
    assert r["optimiser"] == "SGD lr 0.05 momentum 0.9" and r["l1_rule"] == "subgradient, disjoint, once per step"
    assert r["evidence"] == "toy data, compact networks; not the paper's regime" and r["then"] == "100 fine-tuning steps"
    text = regime_text(r)
    assert text == ("preset default; plain conv blocks (32, 32, 64, 64), mean exchange; 600 steps; "
                    "lam 0.005, 0.01, 0.02; SGD lr 0.05 momentum 0.9; L1 subgradient, disjoint, once per step; "
                    "100 fine-tuning steps (evidence: toy data, compact networks; not the paper's regime)")


def test_regime_names_the_variants_and_the_smoke_test():
    base = ExperimentConfig.preset("tiny")
    assert architecture(base.override({"model.share_convs": False, "model.exchange": "none"})).endswith(
        "no exchange, unshared convs")
    assert "late fusion" in architecture(base.override({"model.fusion": "late", "model.exchange": "none"}))
    assert optimiser(base) == "Adam lr 0.005 cosine"  # the default regime
    assert optimiser(base.override({"train.lr": 1e-3, "train.lr_schedule": "constant"})) == "Adam lr 0.001"
    sgd = base.override(COLLAPSE_TRAIN)
    assert optimiser(sgd.override({"train.momentum": 0.0})).endswith("momentum 0")
    assert optimiser(sgd.override({"train.precision": "bf16"})) == "SGD lr 0.05 momentum 0.9, bf16 forward"
    assert evidence("tiny") == SMOKE_TEST and regime_of([base], "tiny")["evidence"] == SMOKE_TEST
    with pytest.raises(ValueError, match="at least one run"):
        regime_of([], "tiny")


def test_the_bottleneck_architecture_is_named():
    cfg = ExperimentConfig.preset("tiny").override({"model.arch": "bottleneck"})
    assert architecture(cfg) == "bottlenecks (8, 8) (bn2 at 1/2), stem 16, exchange at bn2: mean exchange"


def test_one_rule_says_which_runs_are_smoke_tests():
    from cen_lab.experiments.regime import is_smoke_test
    from cen_lab.theory.lambda_bench import probe_config

    tiny = ExperimentConfig.preset("tiny")
    assert is_smoke_test(tiny) and is_smoke_test(tiny.override({"name": "tiny-3f2a"}))
    assert is_smoke_test(probe_config("tiny", budget=40))  # named probe-tiny-..., of the tiny preset's size
    assert not is_smoke_test(ExperimentConfig.preset("default"))
    assert not is_smoke_test(probe_config("default"))
