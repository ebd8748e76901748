"""The translation scenario (issue 24): the ``shade`` task, its metrics, the CEN U-Net with InstanceNorm, and
its training (determinism, resume after a kill, M = 3 and the cyclic rule)."""

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import cen_lab
from cen_lab import ConfigError
from cen_lab.network.architectures import build_model
from cen_lab.network.penalty import sparsity_mask
from cen_lab.network.tasks import TaskMetrics, task_loss
from cen_lab.network.unet import DownBlock, UNetCEN
from cen_lab.runs import TABLES

TINY_TRANSLATE = {"data.tasks": ["shade"], "model.arch": "unet", "model.norm": "instance",
                  "model.widths": [8, 8], "model.strides": [2, 2]}


@pytest.fixture(scope="module")
def tiny_translate():
    return cen_lab.ExperimentConfig.preset("tiny").override(TINY_TRANSLATE)


def _same_logs(a, b):
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table), check_exact=True)


# -- the exchange with InstanceNorm, by its definition ------------------------------------------------------

@pytest.mark.parametrize("m", [2, 3])
def test_instance_norm_exchange_matches_its_definition(m):
    from cen_lab.network.exchange import BranchGrid

    torch.manual_seed(0)
    block = DownBlock(BranchGrid(m), 3, 6, 2, True, "mean", 0.02)
    block.bn.norm = "instance"
    with torch.no_grad():
        block.bn.weight.uniform_(0.5, 1.5)
        block.bn.bias.normal_()
        block.bn.weight[0, :2] = 0.0  # branch 0 exchanges channels 0 and 1
        block.bn.weight[m - 1, 4] = 0.01  # the last branch exchanges channel 4
    x = torch.randn(m, 4, 3, 8, 8)
    got = block(x)
    conv = block.conv.convs[0]
    own = [F.instance_norm(conv(x[i]), weight=block.bn.weight[i], bias=block.bn.bias[i]) for i in range(m)]
    want = []
    for i in range(m):
        y = own[i].clone()
        for c in range(6):
            if block.bn.weight[i, c].abs() < 0.02:
                y[:, c] = torch.stack([own[j][:, c] for j in range(m) if j != i]).mean(0)
        want.append(F.leaky_relu(y, 0.2))
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sparsity", ["disjoint", "alternate-halves"])
def test_unet_shares_convs_keeps_norms_private_and_masks_the_encoder_by_rule(tiny_translate, sparsity):
    torch.manual_seed(0)
    mcfg = tiny_translate.override({"model.widths": [8, 12, 16], "model.strides": [2, 2, 2]}).model
    model = build_model(mcfg, 2, 3, 5, "shade", sparsity)
    assert isinstance(model, UNetCEN)
    convs = [m for m in model.modules() if isinstance(m, cen_lab.network.blocks.ModalConv2d)]
    assert len(convs) == 3 + 2 + 1 and all(len(c.convs) == 1 for c in convs)  # encoder, decoder, head: shared
    norms = [m for m in model.modules() if isinstance(m, cen_lab.network.blocks.ModalBatchNorm2d)]
    assert len(norms) == 5 and all(n.weight.shape[0] == 2 and n.norm == "instance" for n in norms)
    layers = model.cen_layers()
    assert [name for name, _ in layers] == ["blocks.0.bn", "blocks.1.bn", "blocks.2.bn"]
    for i, (_, bn) in enumerate(layers):
        assert torch.equal(bn.penalty_mask, sparsity_mask(bn.num_features, 2, sparsity, i))
    for up in model.ups:  # the decoder's norms are neither penalised nor exchanging
        assert not up.bn.penalty_mask.any()
    out = model(torch.rand(2, 4, 3, 16, 16))
    assert out.logits.shape == (2, 4, 3, 16, 16) and out.ensemble.shape == (4, 3, 16, 16)
    assert 0 <= float(out.logits.detach().min()) and float(out.logits.detach().max()) <= 1  # images: the head ends in a sigmoid


# -- the task: loss and metrics against hand-computed values ---------------------------------------------------

def test_shade_loss_and_metrics_match_hand_computed_values():
    target = torch.full((2, 3, 16, 16), 0.5)
    pred = target.clone()
    pred[0] += 0.1  # image 0: off by 0.1 everywhere; image 1 exact
    pred[1, :, :8] = 0.3  # image 1: half its rows at 0.3
    assert float(task_loss("shade", pred, target)) == pytest.approx((0.1 + 0.2 / 2) / 2, rel=1e-6)
    metrics = TaskMetrics("shade", 1, 0)
    metrics.update(pred[None], target)
    got = metrics.result(["fused"])
    assert got["l1/fused"] == pytest.approx(0.1, rel=1e-6) and got["loss/fused"] == got["l1/fused"]
    psnr = [10 * np.log10(1 / 0.01), 10 * np.log10(1 / (0.04 / 2))]  # per image, data range 1
    assert got["psnr/fused"] == pytest.approx(np.mean(psnr), rel=1e-5)
    # SSIM of two constant images a, b: (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2 (structure terms are 1)
    c1 = 1e-4
    const = TaskMetrics("shade", 1, 0)
    const.update(torch.full((1, 1, 3, 16, 16), 0.6), torch.full((1, 3, 16, 16), 0.5))
    assert const.result(["x"])["ssim/x"] == pytest.approx((2 * 0.3 + c1) / (0.36 + 0.25 + c1), rel=1e-4)


def test_kid_distance_takes_a_user_supplied_feature_network():
    from cen_lab.experiments.translation import kid_distance

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    real = torch.rand(40, 3, 16, 16)
    same, _ = kid_distance(net, real, torch.rand(40, 3, 16, 16), subset_size=20)
    far, _ = kid_distance(net, real, 0.2 * torch.rand(40, 3, 16, 16), subset_size=20)
    assert abs(same) < far and far > 0
    with pytest.raises(ValueError, match="subset_size"):
        kid_distance(net, real[:10], real[:10], subset_size=20)


# -- configuration: what cannot be asked ------------------------------------------------------------------------

def test_translation_configs_that_cannot_be_built_are_refused(tiny_translate):
    with pytest.raises(ConfigError, match="translation target"):
        tiny_translate.override({"data.modalities": ["rgb", "shade"]})
    with pytest.raises(ConfigError, match="not defined for model.arch='unet'"):
        tiny_translate.override({"model.fusion": "aggregate-sum"})
    with pytest.raises(ConfigError, match="one label per image"):
        tiny_translate.override({"data.tasks": ["cls"], "data.scene.task": "cls"})


# -- training -------------------------------------------------------------------------------------------------

def test_translation_training_is_deterministic_and_logs_image_metrics(tiny_translate, tmp_path):
    a = cen_lab.train(tiny_translate, tmp_path / "a", progress=False)
    b = cen_lab.train(tiny_translate, tmp_path / "b", progress=False)
    _same_logs(a, b)
    val = a.metrics.query("split == 'val' and step == 12").set_index("name")["value"]
    for name in ("rgb", "depth", "ensemble"):
        assert 0 < val[f"l1/{name}"] < 1 and val[f"psnr/{name}"] > 0 and -1 <= val[f"ssim/{name}"] <= 1
    assert set(a.gammas["layer"]) == {"blocks.0.bn", "blocks.1.bn"}
    from cen_lab.experiments.regime import architecture

    assert architecture(a.config).startswith("U-Net encoder (8, 8)")


KILL_SCRIPT = textwrap.dedent("""
    import os, sys, json, torch, cen_lab
    torch.set_num_threads(1)
    real_step, calls = torch.optim.Adam.step, {"n": 0}
    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 9:
            os._exit(3)  # a hard kill: no handler runs, nothing is flushed
        return real_step(self, *a, **k)
    torch.optim.Adam.step = step
    cfg = cen_lab.ExperimentConfig.preset("tiny").override(json.loads(sys.argv[2]))
    cen_lab.train(cfg, sys.argv[1], progress=False)
""")


def test_translation_run_killed_resumes_to_the_uninterrupted_result(tiny_translate, tmp_path):
    import json

    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "killed"), json.dumps(TINY_TRANSLATE)],
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert cen_lab.load_run(tmp_path / "killed").status == "incomplete"
    resumed = cen_lab.train(tiny_translate, tmp_path / "killed", progress=False, resume=True)
    _same_logs(cen_lab.train(tiny_translate, tmp_path / "full", progress=False), resumed)  # one thread, as killed


def test_three_domains_with_the_cyclic_rule(tiny_translate, tmp_path):
    cfg = tiny_translate.override({"data.modalities": ["rgb", "depth", "edges"], "model.exchange": "cyclic",
                                   "model.gamma_init": 0.04, "train.lam": 0.05})  # penalised gammas cross in 12 steps
    run = cen_lab.train(cfg, tmp_path / "m3", progress=False)
    assert sorted(run.gammas["modality"].unique()) == [0, 1, 2]
    ex = run.exchange.query("exchanged")
    assert len(ex) and (ex["source"] == (ex["modality"] + 1) % 3).all()  # cyclic: the next domain's output
    val = run.metrics.query("split == 'val'")["name"]
    assert {"l1/rgb", "l1/depth", "l1/edges", "ssim/ensemble"} <= set(val)


# -- the example-output figure ----------------------------------------------------------------------------------

def test_translation_examples_frame_is_the_models_output_and_plots_in_both_backends(tiny_translate, tmp_path):
    from cen_lab import plots
    from cen_lab.data import load_data

    run = cen_lab.train(tiny_translate, tmp_path / "r", progress=False)
    frame = plots.compute_translation_examples(run, samples=[0, 3])
    panels = ["input: rgb", "input: depth", "target", "from rgb", "from depth", "ensemble"]
    assert list(frame["panel"]) == panels * 2 and list(frame["sample"]) == [0] * 6 + [3] * 6
    ds = load_data(tiny_translate.data.__class__(**{**tiny_translate.data.__dict__, "modalities": ("rgb", "depth",
                                                                                                   "shade"),
                                                    "tasks": None}))
    val = ds.split == 1
    target = ds.inputs["shade"][val][3].transpose(1, 2, 0)
    cell = frame.set_index(["sample", "panel"])
    np.testing.assert_array_equal(cell.loc[(3, "target"), "image"], target)
    np.testing.assert_array_equal(cell.loc[(3, "input: depth"), "image"][..., 1], ds.inputs["depth"][val][3, 0])
    x = torch.from_numpy(np.stack([ds.inputs["rgb"][val][[3]], np.pad(ds.inputs["depth"][val][[3]],
                                                                      ((0, 0), (0, 2), (0, 0), (0, 0)))]))
    with torch.no_grad():
        out = run.load_model()(x)
    np.testing.assert_allclose(cell.loc[(3, "ensemble"), "image"], out.ensemble[0].numpy().transpose(1, 2, 0),
                               rtol=1e-6, atol=1e-6)
    l1 = float((out.logits[1, 0].numpy().transpose(1, 2, 0) - target).__abs__().mean())
    assert cell.loc[(3, "from depth"), "l1"] == pytest.approx(l1, rel=1e-5)
    assert np.isnan(cell.loc[(3, "target"), "l1"])
    fig = plots.plot_translation_examples(frame)
    assert len(fig.axes) == 12 and fig.axes[3].get_title().startswith("from rgb\nL1 ")
    pfig = plots.plot_translation_examples(frame, backend="plotly")
    assert len(pfig.data) == 12 and pfig.data[0].z.dtype == np.uint8
    with pytest.raises(ValueError, match="validation images"):
        plots.compute_translation_examples(run, samples=[10_000])
    with pytest.raises(ValueError, match="not a translation run"):
        plots.compute_translation_examples(cen_lab.train(cen_lab.ExperimentConfig.preset("tiny"), tmp_path / "seg",
                                                         progress=False))


# -- the optional adversarial term --------------------------------------------------------------------------------

def test_the_adversarial_term_trains_generator_and_discriminator_apart(tiny_translate):
    """The generator's gradients are those of data loss + w * adversarial loss; the discriminator's those of its own
    loss alone (the generator's loss leaves nothing on it)."""
    from cen_lab.network.patchgan import _bce, adversarial_backward, attach_discriminator
    from cen_lab.network.tasks import task_loss

    torch.manual_seed(0)
    model = attach_discriminator(build_model(tiny_translate.model, 2, 3, 5, "shade"), 3, 0.5)
    x, target = torch.rand(2, 4, 3, 16, 16), torch.rand(4, 3, 16, 16)

    def data_loss(out):
        return sum(task_loss("shade", p, target) for p in [*out.logits, out.ensemble])

    outs = model.forward_tasks(x)
    logged = adversarial_backward(model, x, outs, {"shade": target}, data_loss(outs["shade"]), 0.5)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    disc = model.discriminator
    # by hand: the generator's loss through a frozen copy of the discriminator, then the discriminator's own loss
    model.zero_grad(set_to_none=True)
    out = model.forward_tasks(x)["shade"]
    adv = torch.stack([_bce(disc(x[m], out.logits[m]), True) for m in range(2)]).mean()
    gen = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    want_gen = torch.autograd.grad(data_loss(out) + 0.5 * adv, gen, allow_unused=True)
    d_loss = torch.stack([0.5 * (_bce(disc(x[m], target), True) + _bce(disc(x[m], out.logits[m].detach()), False))
                          for m in range(2)]).mean()
    want_disc = torch.autograd.grad(d_loss, list(disc.parameters()))
    names = [n for n, _ in model.named_parameters() if not n.startswith("discriminator.")]
    for n, w in zip(names, want_gen):
        if w is not None:
            torch.testing.assert_close(got[n], w, rtol=1e-4, atol=1e-6)
    for (n, _), w in zip(disc.named_parameters(), want_disc):
        torch.testing.assert_close(got[f"discriminator.{n}"], w, rtol=1e-4, atol=1e-6)
    assert float(logged["loss/adversarial"]) == pytest.approx(float(adv.detach()), rel=1e-5)
    assert float(logged["loss/discriminator"]) == pytest.approx(float(d_loss.detach()), rel=1e-5)


def test_a_run_with_the_adversarial_term_logs_it_and_resumes_exactly(tiny_translate, tmp_path):
    cfg = tiny_translate.override({"train.gan_weight": 0.1})
    full = cen_lab.train(cfg, tmp_path / "full", progress=False)
    names = set(full.metrics.query("split == 'train'")["name"])
    assert {"loss/adversarial", "loss/discriminator"} <= names
    plain = cen_lab.train(tiny_translate, tmp_path / "plain", progress=False)
    assert not np.array_equal(full.gammas["gamma"], plain.gammas["gamma"])  # the term changes the training
    assert not {"loss/adversarial"} & set(plain.metrics["name"])
    cen_lab.train(cfg, tmp_path / "part", progress=False, stop_at=6)
    _same_logs(full, cen_lab.train(cfg, tmp_path / "part", progress=False, resume=True))  # D and its Adam state too
    model = full.load_model()
    assert hasattr(model, "discriminator") and not hasattr(plain.load_model(), "discriminator")


def test_bad_adversarial_settings_are_refused(tiny_translate):
    with pytest.raises(ConfigError, match=r"train.gan_weight must be >= 0, got -0.1"):
        tiny_translate.override({"train.gan_weight": -0.1})
    with pytest.raises(ConfigError, match="needs an image task to judge"):
        cen_lab.ExperimentConfig.preset("tiny").override({"train.gan_weight": 0.1})
