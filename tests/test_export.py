"""TensorBoard export: any run's tables as events, read back with TensorBoard's own reader."""

import numpy as np
import pandas as pd
import pytest
import torch

import cen_lab
from cen_lab.cli import main
from cen_lab.errors import CenLabError, RunFormatError
from cen_lab.runs.export import tensorboard

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_events(log_dir):
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    scalars = {t: {e.step: e.value for e in ea.Scalars(t)} for t in ea.Tags()["scalars"]}
    histograms = {t: {e.step: e.histogram_value for e in ea.Histograms(t)} for t in ea.Tags()["histograms"]}
    return scalars, histograms


@pytest.fixture(scope="module")
def grads_run(tmp_path_factory):
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"log.grads": True})
    return cen_lab.train(cfg, tmp_path_factory.mktemp("tb") / "run", progress=False)


def test_a_trained_run_exported_equals_its_tables(grads_run, tmp_path):
    run = grads_run
    scalars, histograms = read_events(tensorboard(run, tmp_path / "tb"))
    names = run.branches
    # the exchange ratio per layer and branch at every logged step
    ratio = run.exchange.groupby(["step", "layer", "branch"])["exchanged"].mean()
    assert len(ratio) > 0
    for (step, layer, b), value in ratio.items():
        assert scalars[f"exchange_ratio/{layer}/{names[b]}"][step] == pytest.approx(value, abs=1e-7)
    # the portion of penalised gammas under the threshold
    pen = run.gammas[run.gammas["penalised"]]
    below = (pen["gamma"].abs() < np.float32(run.threshold)).groupby([pen["step"], pen["layer"], pen["branch"]]).mean()
    for (step, layer, b), value in below.items():
        assert scalars[f"below_threshold/{layer}/{names[b]}"][step] == pytest.approx(value, abs=1e-7)
    # every logged metric, by split
    for row in run.metrics.itertuples():
        if np.isfinite(row.value):
            assert scalars[f"{row.split}/{row.name}"][row.step] == pytest.approx(row.value, rel=1e-6)
    # histograms of penalised and unpenalised gammas, with every channel counted
    first = run.gammas[run.gammas["step"] == 0]
    for (layer, b), rows in first.groupby(["layer", "branch"]):
        assert histograms[f"gamma/penalised/{layer}/{names[b]}"][0].num == rows["penalised"].sum()
        assert histograms[f"gamma/unpenalised/{layer}/{names[b]}"][0].num == (~rows["penalised"]).sum()
    # the dL/dgamma summaries
    dg = run.grads.assign(a=run.grads["dgamma"].abs()).groupby(["step", "layer", "branch"])["a"].mean()
    for (step, layer, b), value in dg.items():
        assert scalars[f"dgamma_abs_mean/{layer}/{names[b]}"][step] == pytest.approx(value, rel=1e-5)


def test_the_observer_writes_the_same_events_as_it_logs(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from cen_lab.zoo import ReferenceStyleCEN

    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    writer = SummaryWriter(str(tmp_path / "live"))
    with cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="alternate-halves", threshold=0.5,
                         tensorboard=writer) as obs:
        for step in range(3):
            with obs.grads(step):
                outputs, _ = model([torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)])
                sum(o.square().mean() for o in outputs).backward()
            obs.log(step, metrics={"loss/total": 1.0 / (step + 1)})
            with torch.no_grad():
                model.layers[0][0].bn2.bn_0.weight.mul_(0.5)
    writer.close()
    live, live_h = read_events(tmp_path / "live")
    replayed, replayed_h = read_events(tensorboard(tmp_path / "run", tmp_path / "replayed"))
    assert live == replayed and live["train/loss/total"] == pytest.approx({0: 1.0, 1: 0.5, 2: 1 / 3})
    assert set(live_h) == set(replayed_h) and any(t.startswith("dgamma/") for t in live_h)
    assert any(v > 0 for v in live["below_threshold/layers.0.0.bn2/modality0"].values())


def test_cli_tensorboard_and_bad_input(grads_run, tmp_path, capsys):
    assert main(["tensorboard", str(grads_run.path), "--logdir", str(tmp_path / "tb")]) == 0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert "view them with: tensorboard --logdir" in capsys.readouterr().out
    (tmp_path / "file").write_text("")
    with pytest.raises(CenLabError, match="file/sub: cannot write TensorBoard events there"):
        tensorboard(grads_run, tmp_path / "file" / "sub")
    from cen_lab.zoo import ReferenceStyleCEN

    cen_lab.observe(ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6)), tmp_path / "empty", layers="*.bn2",
                    penalised="none").close()
    with pytest.raises(RunFormatError, match="empty: nothing to export"):
        tensorboard(tmp_path / "empty", tmp_path / "tb2")
    assert main(["tensorboard", str(tmp_path / "empty"), "--logdir", str(tmp_path / "tb3")]) == 2
