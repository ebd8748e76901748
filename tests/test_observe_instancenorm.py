"""cen_lab.observe on the reference translation U-Net's layout: per-domain affine InstanceNorm children
``insnorm_0 ... insnorm_{M-1}`` of a module named ``insnorm_conv``, followed by the exchange (issue 24, first part:
observing; cen_lab's own InstanceNorm networks and the translation scenario are not built yet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cen_lab
from cen_lab.errors import ObserveError
from cen_lab.network.blocks import ModalBatchNorm2d
from cen_lab.runs import find_bn_layers


class InstanceNorm2dParallel(nn.Module):
    """The reference's per-domain InstanceNorm: children ``insnorm_0 ... insnorm_{M-1}``."""

    def __init__(self, channels: int, m: int = 2, affine: bool = True):
        super().__init__()
        for i in range(m):
            setattr(self, f"insnorm_{i}", nn.InstanceNorm2d(channels, affine=affine, track_running_stats=True))
        self.m = m

    def forward(self, xs):
        return [getattr(self, f"insnorm_{i}")(x) for i, x in enumerate(xs)]


class EncoderBlock(nn.Module):
    """A shared stride-2 4x4 conv, the per-domain InstanceNorm, the exchange (M = 2), LeakyReLU."""

    def __init__(self, cin: int, cout: int, threshold: float, affine: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 4, 2, 1)
        self.insnorm_conv = InstanceNorm2dParallel(cout, affine=affine)
        self.threshold = threshold

    def forward(self, xs):
        ys = self.insnorm_conv([self.conv(x) for x in xs])
        g = [self.insnorm_conv.insnorm_0.weight.abs(), self.insnorm_conv.insnorm_1.weight.abs()]
        keep = [(gi >= self.threshold)[None, :, None, None] for gi in g]
        out = [torch.where(keep[0], ys[0], ys[1]), torch.where(keep[1], ys[1], ys[0])]
        return [nn.functional.leaky_relu(o, 0.2) for o in out]


class TinyTranslator(nn.Module):
    def __init__(self, threshold: float = 0.5, affine: bool = True):
        super().__init__()
        self.enc = nn.ModuleList([EncoderBlock(3, 6, threshold, affine), EncoderBlock(6, 8, threshold, affine)])
        self.dec = nn.Sequential(nn.ConvTranspose2d(8, 3, 4, 4), nn.Tanh())

    def forward(self, xs):
        for block in self.enc:
            xs = block(xs)
        return [self.dec(x) for x in xs]


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)], torch.randn(4, 3, 8, 8, generator=g)


def test_instance_norm_children_form_a_layer():
    layers = find_bn_layers(TinyTranslator())
    assert [layer.name for layer in layers] == ["enc.0.insnorm_conv", "enc.1.insnorm_conv"]
    assert all(layer.num_branches == 2 for layer in layers)


def test_observe_reads_gammas_exchange_and_gradients_of_instance_norms(tmp_path):
    torch.manual_seed(0)
    model = TinyTranslator(threshold=0.5)
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.insnorm_conv", threshold=0.5,
                          penalised="alternate-halves", modality_names=["shade", "texture"])
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    penalised = [p for n, p in model.named_parameters() if "insnorm_conv" in n and n.endswith("weight")]
    seen = {}
    for step in range(6):
        xs, target = _batch(step)
        with obs.grads(step):
            opt.zero_grad()
            loss = sum(nn.functional.l1_loss(y, target) for y in model(xs))
            loss.backward()
        expected_grad = model.enc[0].insnorm_conv.insnorm_1.weight.grad.clone()
        for k, p in enumerate(penalised):  # the reference's alternating halves, lamda 0.05
            half = slice(None, len(p) // 2) if k % 2 == 0 else slice(len(p) // 2, None)
            p.grad[half] += 0.05 * p.detach()[half].sign()
        obs.log(step, metrics={"loss/l1": loss.item()})
        seen[step] = model.enc[0].insnorm_conv.insnorm_1.weight.detach().clone()
        opt.step()
    obs.close()
    run = cen_lab.load_run(tmp_path / "run")
    g = run.gammas[(run.gammas["layer"] == "enc.0.insnorm_conv") & (run.gammas["branch"] == 1)]
    for step, weight in seen.items():
        np.testing.assert_array_equal(g[g["step"] == step].sort_values("channel")["gamma"], weight.numpy())
    # the data gradient of the last step, before the penalty was added
    d = run.grads[(run.grads["layer"] == "enc.0.insnorm_conv") & (run.grads["branch"] == 1) & (run.grads["step"] == 5)]
    np.testing.assert_allclose(d.sort_values("channel")["dgamma"], expected_grad.numpy(), rtol=1e-6)
    assert (run.grads["dxprime_norm"] > 0).all()
    # the reference's alternate halves: modality 0 the first half, modality 1 the second, per layer
    pen = run.gammas[run.gammas["step"] == 0].set_index(["layer", "branch", "channel"])["penalised"]
    assert pen.loc[("enc.0.insnorm_conv", 0)].tolist() == [True] * 3 + [False] * 3
    assert pen.loc[("enc.0.insnorm_conv", 1)].tolist() == [False] * 3 + [True] * 3
    # the exchange map follows |gamma| < threshold, and the diagnosis reads the run
    last = run.gammas[run.gammas["step"] == 5].merge(run.exchange[run.exchange["step"] == 5],
                                                     on=["step", "layer", "branch", "channel"])
    assert (last["exchanged"] == (last["gamma"].abs() < 0.5)).all()
    # six steps at lamda 0.05 shrink the penalised gammas (Mann-Whitney p < 0.05) but take none under the
    # threshold: a finished run that exchanges nothing is not sparsifying
    d = cen_lab.diagnose(run)
    assert d.state == "not sparsifying" and d.numbers["p_mannwhitney"] < 0.05 and d.numbers["final"] == 0


def test_instance_norm_without_affine_is_refused(tmp_path):
    with pytest.raises(ObserveError, match="InstanceNorm2d has no affine gamma"):
        cen_lab.observe(TinyTranslator(affine=False), tmp_path / "run", layers="*.insnorm_conv",
                        penalised="none")


def _train_saving_lists(model, out, epochs: int = 6, steps_per_epoch: int = 2):
    """The reference's way: after each epoch, torch.save the list of insnorm_conv weight Parameters."""
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    params = [p for n, p in model.named_parameters() if "insnorm_conv" in n and n.endswith("weight")]
    saved = []
    for epoch in range(epochs):
        for s in range(steps_per_epoch):
            xs, target = _batch(100 * epoch + s)
            opt.zero_grad()
            loss = sum(nn.functional.l1_loss(y, target) for y in model(xs))
            loss = loss + 0.2 * sum(p.abs().sum() for p in params)
            loss.backward()
            opt.step()
        torch.save(params, out / f"insnorm_params_{epoch:03d}.pth")
        saved.append([p.detach().clone() for p in params])
    return saved


def test_the_reference_insnorm_params_lists_are_imported(tmp_path):
    torch.manual_seed(0)
    model = TinyTranslator(threshold=0.5)
    ckpt = tmp_path / "insnorm_params"
    ckpt.mkdir()
    saved = _train_saving_lists(model, ckpt)
    names = ["enc.0.insnorm_conv", "enc.1.insnorm_conv"]
    run = cen_lab.import_checkpoints(ckpt, tmp_path / "run", layers=names, threshold=0.5,
                                     penalised="alternate-halves", modality_names=["shade", "texture"],
                                     progress=False)
    assert run.manifest["state_dict_key"] == "<list>" and "NaN" in run.manifest["betas"]
    assert sorted(run.gammas["step"].unique()) == list(range(6))  # file order: the epochs
    for epoch, tensors in enumerate(saved):
        g = run.gammas[run.gammas["step"] == epoch]
        for k, t in enumerate(tensors):  # layer k // 2, domain k % 2, in parameter order
            got = g[(g["layer"] == names[k // 2]) & (g["branch"] == k % 2)].sort_values("channel")["gamma"]
            np.testing.assert_array_equal(got, t.numpy())
    assert run.gammas["beta"].isna().all()
    # the same model observed live marks the same gammas penalised: observe and import agree
    live = cen_lab.observe(model, tmp_path / "live", layers="*.insnorm_conv", threshold=0.5,
                           penalised="alternate-halves", modality_names=["shade", "texture"])
    live.log(0)
    live.close()
    keys = ["layer", "branch", "channel"]
    a = run.gammas[run.gammas["step"] == 5].sort_values(keys)
    b = cen_lab.load_run(tmp_path / "live").gammas.sort_values(keys)
    assert a["penalised"].tolist() == b["penalised"].tolist()
    np.testing.assert_array_equal(a["gamma"].to_numpy(), b["gamma"].to_numpy())
    # this loop penalises every insnorm_conv gamma, not the halves the rule labels: the labelled-unpenalised shrink
    # alike (not sparsifying), and all of them head under the threshold (collapsing)
    d = cen_lab.diagnose(run)
    assert d.state == "not sparsifying" and d.flags == ["not sparsifying", "collapsing"]
    # default names when none are given; a count that does not split into layers of M is refused
    run2 = cen_lab.import_checkpoints(ckpt, tmp_path / "run2", penalised="alternate-halves", progress=False)
    assert sorted(run2.gammas["layer"].unique()) == ["insnorm_conv.0", "insnorm_conv.1"]
    with pytest.raises(ObserveError, match="cannot be 3 branches per layer"):
        cen_lab.import_checkpoints(ckpt, tmp_path / "run3", penalised="alternate-halves", branches=3,
                                   progress=False)
    torch.save([torch.zeros(2, 2)], tmp_path / "bad.pth")
    with pytest.raises(ObserveError, match="not a list of 1-D gamma tensors"):
        cen_lab.import_checkpoints([tmp_path / "bad.pth"], tmp_path / "run4", penalised="none", progress=False)


def test_cen_lab_import_reads_lists_on_the_command_line(tmp_path, capsys):
    from cen_lab.cli import main

    torch.manual_seed(1)
    ckpt = tmp_path / "insnorm_params"
    ckpt.mkdir()
    _train_saving_lists(TinyTranslator(), ckpt, epochs=3)
    assert main(["import", str(ckpt), "--out", str(tmp_path / "run"), "--penalised", "alternate-halves",
                 "--branches", "2", "--layers", "enc.0.insnorm_conv", "--layers", "enc.1.insnorm_conv",
                 "--no-progress"]) == 0
    assert "3 checkpoints as steps [0, 1, 2]" in capsys.readouterr().out
    assert sorted(cen_lab.load_run(tmp_path / "run").gammas["layer"].unique()) == ["enc.0.insnorm_conv",
                                                                                  "enc.1.insnorm_conv"]


def test_figures_and_the_explorer_read_an_imported_list_run(tmp_path):
    """The betas of list files are NaN: nothing that draws a run may choke on them."""
    from cen_lab import plots
    from cen_lab.views.widgets import explore

    torch.manual_seed(2)
    ckpt = tmp_path / "insnorm_params"
    ckpt.mkdir()
    _train_saving_lists(TinyTranslator(), ckpt, epochs=3)
    run = cen_lab.import_checkpoints(ckpt, tmp_path / "run", threshold=0.5, penalised="alternate-halves",
                                     progress=False)
    traj = plots.compute_gamma_trajectories(run.gammas, run.branches)
    snap = plots.compute_gamma_snapshot(run.gammas, run.threshold, run.branches)
    for fig in (plots.plot_gamma_trajectories(traj, run.threshold), plots.plot_gamma_snapshot(snap, run.threshold),
                plots.plot_exchange_maps(plots.compute_exchange_maps(run.exchange, run.branches)),
                plots.plot_sparsity(plots.compute_sparsity(run.gammas, run.threshold, run.branches))):
        assert fig.get_axes()
    assert np.isfinite(traj["gamma"]).all()
    ex = explore(run)
    assert ex.steps == [0, 1, 2] and ex.figures["exchange"].get_axes()


@pytest.mark.parametrize("arch", ["plain", "bottleneck"])
def test_cen_lab_networks_with_instance_norm(tmp_path, arch):
    """model.norm = "instance": every private norm is the reference's InstanceNorm (per branch, affine, running
    statistics for eval), and training, logging, exchange and observing work as with BatchNorm."""
    from cen_lab.network.blocks import ModalBatchNorm2d

    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"model.norm": "instance", "model.arch": arch,
                                                            "train.lam": 0.05, "log.grads": True})
    run = cen_lab.train(cfg, tmp_path / "run", progress=False)
    assert run.complete and "instance norm" in cen_lab.diagnose(run).regime
    model = run.load_model()
    norms = [m for m in model.modules() if isinstance(m, ModalBatchNorm2d)]
    assert norms and all(m.norm == "instance" for m in norms)
    assert len(run.grads) and run.grads["dxprime_norm"].gt(0).any()
    # one private norm against M torch InstanceNorm2d layers with the same parameters, in train and in eval mode
    bn = norms[0]
    ref = [nn.InstanceNorm2d(bn.num_features, affine=True, track_running_stats=True) for _ in range(bn.num_modalities)]
    with torch.no_grad():
        for m, r in enumerate(ref):
            r.weight.copy_(bn.weight[m]), r.bias.copy_(bn.bias[m])
            r.running_mean.copy_(bn.running_mean[m]), r.running_var.copy_(bn.running_var[m])
    x = torch.randn(bn.num_modalities, 3, bn.num_features, 5, 5)
    for training in (True, False):
        bn.train(training)
        [r.train(training) for r in ref]
        with torch.no_grad():
            got = bn(x)
            want = torch.stack([r(x[m]) for m, r in enumerate(ref)])
        torch.testing.assert_close(got, want)
    for m, r in enumerate(ref):  # the training pass updated the running statistics alike
        torch.testing.assert_close(bn.running_mean[m], r.running_mean)
        torch.testing.assert_close(bn.running_var[m], r.running_var)
    # the same parameters as a BatchNorm give other outputs: the statistics really are per sample
    batch = ModalBatchNorm2d(bn.num_modalities, bn.num_features).train()
    with torch.no_grad():
        batch.weight.copy_(bn.weight), batch.bias.copy_(bn.bias)
        assert not torch.allclose(batch(x), bn.train()(x), atol=1e-3)


def test_the_theorem_scale_on_instance_norm_is_the_per_sample_centred_gradient():
    """x_hat of an InstanceNorm sums to zero over each sample's positions, so dL/dgamma = sum g * x_hat sees only g
    minus its per-sample spatial mean: the recorded scale is that centred norm, and 2 Phi(lam / scale) - 1 then
    matches the frequency of |dL/dgamma| <= lam over random inputs (by construction), where the plain ||g|| does not."""
    from scipy import stats

    from cen_lab.network.hooks import record_bn_output_grad_norms

    torch.manual_seed(0)
    n, c, hw = 2, 1, 8
    g = torch.randn(n, c, hw, hw) * 0.3 + torch.tensor([2.0, -3.0]).view(n, 1, 1, 1)  # large per-sample means
    centred = (g - g.mean(dim=(-2, -1), keepdim=True)).pow(2).sum().sqrt()
    plain = g.pow(2).sum().sqrt()
    for module in (ModalBatchNorm2d(1, c), nn.InstanceNorm2d(c, affine=True)):
        if isinstance(module, ModalBatchNorm2d):
            module.norm = "instance"
        dgamma, scales = [], []
        for _ in range(2000):
            x = torch.randn(1, n, c, hw, hw) if isinstance(module, ModalBatchNorm2d) else torch.randn(n, c, hw, hw)
            hooked = module if isinstance(module, ModalBatchNorm2d) else [module]  # torch's: one module per branch
            with record_bn_output_grad_norms([("layer", hooked)]) as norms:
                module.zero_grad()
                (module(x).reshape(g.shape) * g).sum().backward()
            dgamma.append(float(module.weight.grad.flatten()[0]))
            scales.append(float(norms["layer"].flatten()[0]))
        torch.testing.assert_close(torch.tensor(scales), centred.repeat(len(scales)), rtol=1e-4, atol=1e-5)
        lam = float(centred)  # where the prediction is 2 Phi(1) - 1 = 0.68
        observed = np.mean(np.abs(dgamma) <= lam)
        assert abs(observed - (2 * stats.norm.cdf(lam / float(centred)) - 1)) < 0.04
        assert abs(observed - (2 * stats.norm.cdf(lam / float(plain)) - 1)) > 0.3  # the plain norm is far off


def test_the_theorem_check_runs_on_instance_norm_without_warning(tmp_path):
    from cen_lab import theorem

    torch.manual_seed(0)
    model = TinyTranslator(threshold=0.0)  # threshold 0: no exchange, the theorem's network

    def loss_fn(m, batch):
        xs, target = batch
        return sum(nn.functional.l1_loss(y, target) for y in m(xs))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = theorem.local_check_model(model, loss_fn, [_batch(0)], 0.01, layers="*.insnorm_conv",
                                          penalised="alternate-halves", max_channels=2, progress=False)
        assert len(table) == 2 and (table["norm"] > 0).all()
        cfg = cen_lab.ExperimentConfig.preset("tiny").override({"model.norm": "instance", "model.exchange": "none"})
        run = cen_lab.train(cfg, tmp_path / "run", progress=False)
        assert len(theorem.local_check(run, n_batches=1))