"""Multitask and multimodal-multitask CEN: task heads, losses and metrics, branch layout, training and logging."""

import numpy as np
import pytest
import torch

import cen_lab
from cen_lab.config import ModelConfig
from cen_lab.errors import ConfigError
from cen_lab.network.architectures import CENNet
from cen_lab.network.tasks import TaskMetrics, task_loss
from cen_lab.experiments.training import forward_backward

TASKS3 = ("seg", "depth", "edges")


def _net(m=1, tasks=TASKS3, **kw):
    torch.manual_seed(0)
    return CENNet(m, 3, 5, tasks, ModelConfig(widths=(8, 8), strides=(1, 2), **kw))


def test_one_input_three_task_heads_shapes():
    net = _net()
    assert net.grid.size == 3 and net.grid.between == "tasks"
    assert net.blocks[0].bn.weight.shape == (3, 8)  # private BN per task branch
    outs = net.forward_tasks(torch.randn(1, 4, 3, 16, 16))
    assert list(outs) == list(TASKS3)
    assert outs["seg"].logits.shape == (1, 4, 5, 16, 16) and outs["seg"].ensemble.shape == (4, 5, 16, 16)
    assert outs["depth"].logits.shape == (1, 4, 1, 16, 16) and outs["edges"].ensemble.shape == (4, 1, 16, 16)
    with pytest.raises(TypeError, match="3 tasks"):
        net(torch.randn(1, 2, 3, 16, 16))


def test_branch_m_times_t_plus_t_reads_modality_m():
    net = _net(m=2, tasks=("seg", "depth"), exchange="none")
    net.eval()  # running statistics: a branch's output depends on its own input only
    x = torch.randn(2, 3, 3, 16, 16)
    before = net.forward_tasks(x)
    x2 = x.clone()
    x2[1] = torch.randn_like(x2[1])  # change modality 1 only
    after = net.forward_tasks(x2)
    for task in ("seg", "depth"):
        assert torch.equal(before[task].logits[0], after[task].logits[0])  # the modality-0 branch of each task
        assert not torch.allclose(before[task].logits[1], after[task].logits[1])


def test_disjoint_penalty_covers_each_channel_in_exactly_one_branch():
    mask = _net(m=2, tasks=("seg", "edges")).blocks[0].bn.penalty_mask  # [4 branches, 8 channels]
    assert mask.shape == (4, 8) and mask.sum(0).tolist() == [1] * 8 and mask.sum(1).tolist() == [2] * 4


def test_task_losses_hand_computed():
    # depth: L1 over valid pixels only (target 0 is a sensor hole)
    pred = torch.tensor([[[[0.5, 0.2], [0.0, 1.0]]]])
    target = torch.tensor([[[[0.25, 0.0], [0.5, 1.0]]]])
    assert task_loss("depth", pred, target).item() == pytest.approx((0.25 + 0.5 + 0.0) / 3)
    # edges: class-balanced BCE; one boundary pixel in four (p = 1/4) weighs 3/4, the three others 1/4 each
    logits = torch.tensor([[[[2.0, -1.0, 0.0, 1.0]]]])
    edges = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    bce = [-np.log(1 / (1 + np.exp(-2.0))), -np.log(1 - 1 / (1 + np.exp(1.0))), np.log(2.0),
           -np.log(1 - 1 / (1 + np.exp(-1.0)))]
    expected = (0.75 * bce[0] + 0.25 * sum(bce[1:])) / (0.75 + 3 * 0.25)
    assert task_loss("edges", logits, edges).item() == pytest.approx(expected, rel=1e-6)


def test_task_metrics_f1_and_mae_hand_computed():
    f1 = TaskMetrics("edges", 1, 0)
    preds = torch.tensor([[[[[1.0, 1.0, -1.0, -1.0]]]]])  # [P=1, N=1, 1, 1, 4]: predicts boundary at 0 and 1
    f1.update(preds, torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]]))  # tp 1, fp 1, fn 1
    assert f1.result(["rgb"])["f1/rgb"] == pytest.approx(0.5)
    mae = TaskMetrics("depth", 1, 0)
    mae.update(torch.tensor([[[[[0.5, 0.9]]]]]), torch.tensor([[[[0.25, 0.0]]]]))
    assert mae.result(["rgb"])["mae/rgb"] == pytest.approx(0.25)


def test_task_weight_zero_leaves_that_head_untrained():
    net = _net(exchange="none")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(1, 4, 3, 16, 16)
    y = {"seg": torch.randint(0, 5, (4, 16, 16)), "depth": torch.rand(4, 1, 16, 16),
         "edges": (torch.rand(4, 1, 16, 16) > 0.8).float()}
    loss, per_task = forward_backward(net, opt, x, y, {"seg": 1.0, "depth": 1.0, "edges": 0.0})
    assert net.heads[2].convs[0].weight.grad.abs().sum() == 0
    assert net.heads[1].convs[0].weight.grad.abs().sum() > 0
    assert loss.item() == pytest.approx(float(per_task["seg"].detach().sum() + per_task["depth"].detach().sum()), rel=1e-6)


@pytest.mark.parametrize("updates, match", [
    ({"data.tasks": ["seg", "depth"], "model.exchange_between": "both", "model.exchange": "cyclic"}, "cyclic"),
    ({"data.tasks": ["seg", "depth"], "model.fusion": "aggregate-sum"}, "single task|several tasks"),
    ({"data.tasks": ["seg", "depth"], "train.task_weights": [1.0]}, "one weight per task"),
    ({"data.tasks": ["seg", "cls"]}, "at most one"),
    ({"data.tasks": ["normals"]}, "data.tasks entries"),
    ({"model.exchange_between": "tasks"}, "T >= 2 tasks"),
    ({"data.modalities": ["rgb"], "data.tasks": ["seg", "depth"], "model.exchange_between": "modalities"}, "M >= 2"),
])
def test_bad_multitask_configs(tiny, updates, match):
    with pytest.raises(ConfigError, match=match):
        tiny.override(updates)


def test_label_task_must_match_the_dataset(tiny, tmp_path):
    cfg = tiny.override({"data.tasks": ["cls", "depth"]})
    with pytest.raises(ConfigError, match="labels are for 'seg'"):
        cen_lab.train(cfg, tmp_path / "r", progress=False)


@pytest.fixture(scope="module")
def multitask_run(tmp_path_factory):
    """One input (rgb), three tasks."""
    cfg = cen_lab.ExperimentConfig.preset("tiny").override(
        {"data.modalities": ["rgb"], "data.tasks": list(TASKS3), "model.widths": [9, 9], "train.lam": 0.05, "model.gamma_init": 0.025,
         "train.task_weights": [1.0, 2.0, 0.5], "log.grads": True})
    torch.set_num_threads(1)
    return cen_lab.train(cfg, tmp_path_factory.mktemp("mt") / "run", progress=False)


def test_multitask_run_logs_task_branches(multitask_run):
    run = multitask_run
    assert run.complete and run.tasks == list(TASKS3)
    assert run.branches == ["seg/rgb", "depth/rgb", "edges/rgb"] and run.manifest["exchange_between"] == "tasks"
    for table in (run.gammas, run.exchange, run.grads):
        assert set(table["branch"]) == {0, 1, 2} and (table["modality"] == 0).all()
        assert (table["task"] == table["branch"]).all()
    names = set(run.metrics["name"])
    for n in ("miou/seg/rgb", "miou/seg/ensemble", "mae/depth/rgb", "f1/edges/ensemble", "loss/edges/rgb",
              "alpha/depth/rgb"):
        assert n in names
    ex = run.exchange[run.exchange["exchanged"]]
    assert len(ex) and (ex["source"] == -1).all()  # mean of the two other tasks


def test_multitask_exchange_table_matches_the_gamma_rule(multitask_run):
    run, thr = multitask_run, multitask_run.config.model.threshold
    merged = run.exchange.merge(run.gammas, on=["step", "layer", "branch", "channel"])
    assert (merged["exchanged"] == (merged["gamma"].abs() < thr)).all()


def test_multimodal_multitask_exchanges_across_modalities_and_tasks(tiny, tmp_path):
    cfg = tiny.override({"data.modalities": ["rgb", "depth"], "data.tasks": ["seg", "edges"],
                         "model.widths": [8, 8], "train.lam": 0.05})
    run = cen_lab.train(cfg, tmp_path / "mmt", progress=False)
    assert run.branches == ["seg/rgb", "edges/rgb", "seg/depth", "edges/depth"]
    assert run.manifest["exchange_between"] == "both"
    g = run.gammas.drop_duplicates("branch").set_index("branch")
    assert g["modality"].tolist() == [0, 0, 1, 1] and g["task"].tolist() == [0, 1, 0, 1]
    model = run.load_model()
    assert set(model.forward_tasks(torch.zeros(2, 1, 3, 16, 16))) == {"seg", "edges"}
    assert {"miou/seg/depth", "f1/edges/rgb"} <= set(run.metrics["name"])


def test_task_metrics_seg_counts_the_argmax_of_every_pixel_ties_and_nan_included():
    # TaskMetrics reads the predicted class with max(1).indices, for speed; it must count exactly what argmax
    # picks: the first of tied maxima, and a NaN logit as the maximum
    torch.manual_seed(0)
    preds = torch.randint(0, 3, (2, 4, 5, 6, 6)).float()  # [P, N, K, H, W], many ties
    preds[0, 0, 3, :2] = float("nan")
    preds[1, 2, 1:3, 4] = float("nan")
    target = torch.randint(0, 5, (4, 6, 6))
    metrics = TaskMetrics("seg", 2, 5)
    metrics.update(preds, target)
    for i in range(2):
        expected = torch.bincount(target.flatten() * 5 + preds[i].argmax(1).flatten(), minlength=25).view(5, 5)
        assert torch.equal(metrics.conf[i], expected)
    assert metrics.conf.sum() == 2 * target.numel()
