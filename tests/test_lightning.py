"""The Lightning callback, with a real lightning.Trainer on the CPU, against the same model in a plain loop."""

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import cen_lab
from cen_lab.errors import ObserveError
from cen_lab.zoo import ReferenceStyleCEN, reference_l1, reference_slim_params

pl = pytest.importorskip("lightning.pytorch")
from cen_lab.integrations.lightning import CENObserver  # noqa: E402

# this loop applies LAM per step itself: the observer's note on the reference layout does not apply
pytestmark = pytest.mark.filterwarnings("ignore:lam=.* is taken as the L1 weight per step:UserWarning")

LAM, LR, STEPS, BATCH = 0.01, 0.05, 6, 4


def _data(batches):
    gen = torch.Generator().manual_seed(1)
    n = batches * BATCH
    return torch.utils.data.TensorDataset(torch.randn(n, 3, 16, 16, generator=gen),
                                          torch.randn(n, 3, 16, 16, generator=gen),
                                          torch.randint(0, 4, (n, 16, 16), generator=gen))


def _loader(batches=2):
    return torch.utils.data.DataLoader(_data(batches), batch_size=BATCH, shuffle=False)


class Module(pl.LightningModule):
    def __init__(self, fail_at: int | None = None, scale_from: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
        self.fail_at, self.scale_from = fail_at, scale_from

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at:
            raise RuntimeError("diverged on purpose")
        x0, x1, y = batch
        outputs, _ = self.net([x0, x1])
        loss = sum(F.cross_entropy(o, y) for o in outputs)  # the data loss: the callback adds the L1
        # scale_from: a loss three times larger from that step on (another run's updates, after a checkpoint)
        return 3 * loss if self.scale_from is not None and self.global_step >= self.scale_from else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)


def _trainer(steps, **kw):
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, **kw)


def _callback(out, **kw):
    return CENObserver(out, submodule="net", layers="*.bn2", penalised="alternate-halves", lam=LAM, grads_every=2,
                       **kw)


def _plain_loop(out):
    """The same model, data and optimiser in the README's plain loop: data loss in obs.grads, then the L1."""
    torch.manual_seed(0)
    net = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    slim = reference_slim_params(net)
    with cen_lab.observe(net, out, layers="*.bn2", penalised="alternate-halves", lam=LAM) as obs:
        step = 0
        while step < STEPS:
            for x0, x1, y in _loader():
                obs.log_state(step)
                opt.zero_grad()
                with obs.grads(step) if step % 2 == 0 else contextlib.nullcontext():
                    outputs, _ = net([x0, x1])
                    loss = sum(F.cross_entropy(o, y) for o in outputs)
                    loss.backward()
                (LAM * reference_l1(slim)).backward()
                opt.step()
                obs.log_metrics(step, {"loss/total": float(loss)})
                step += 1
                if step == STEPS:
                    break
    return cen_lab.load_run(out)


def _tables(run):
    return {t: getattr(run, t).sort_values(["step"] + [c for c in ("layer", "branch", "channel", "name")
                                                      if c in getattr(run, t)]).reset_index(drop=True)
            for t in ("gammas", "exchange", "grads", "metrics")}


def test_the_callback_logs_what_the_plain_loop_logs(tmp_path):
    plain = _tables(_plain_loop(tmp_path / "plain"))
    _trainer(STEPS, callbacks=[_callback(tmp_path / "lightning")]).fit(Module(), _loader())
    run = cen_lab.load_run(tmp_path / "lightning")
    assert run.status == "complete" and run.manifest["lam"] == LAM
    got = _tables(run)
    assert sorted(got["gammas"]["step"].unique()) == list(range(STEPS))
    assert sorted(got["grads"]["step"].unique()) == [0, 2, 4]
    for table in ("gammas", "exchange", "grads", "metrics"):
        pd.testing.assert_frame_equal(got[table], plain[table], check_exact=True, obj=table)


def test_a_fit_resumed_from_a_lightning_checkpoint_duplicates_no_step(tmp_path):
    # one batch an epoch, so that the data does not depend on where Lightning resumes its epoch loop (from an
    # epoch-end checkpoint it replays a batch of the epoch: its own behaviour, not cen_lab's)
    ckpts = tmp_path / "ckpt"
    saver = pl.callbacks.ModelCheckpoint(dirpath=ckpts, every_n_epochs=2, save_top_k=-1,
                                         save_on_train_epoch_end=True)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[_callback(tmp_path / "run"), saver])
    trainer.fit(Module(scale_from=2), _loader(1))  # its step 3 differs from an uninterrupted run's
    killed = _tables(cen_lab.load_run(tmp_path / "run"))
    first = sorted(ckpts.glob("*.ckpt"))[0]  # at step 2: the killed loop's steps 2 and 3 are redone
    assert "step=2" in first.name
    _trainer(STEPS, callbacks=[_callback(tmp_path / "run")]).fit(Module(), _loader(1), ckpt_path=first)
    resumed = cen_lab.load_run(tmp_path / "run")
    _trainer(STEPS, callbacks=[_callback(tmp_path / "once")]).fit(Module(), _loader(1))
    once = _tables(cen_lab.load_run(tmp_path / "once"))
    got = _tables(resumed)
    assert got["gammas"].groupby("step").size().nunique() == 1  # each step once
    step3 = [t["gammas"].query("step == 3")["gamma"].to_numpy() for t in (killed, once)]
    assert not np.array_equal(*step3)  # the first fit's step 3 was another...
    for table in ("gammas", "exchange", "grads", "metrics"):  # ...and the re-logged one replaced it
        pd.testing.assert_frame_equal(got[table], once[table], check_exact=True, obj=table)


def test_a_failing_fit_leaves_a_failed_run(tmp_path):
    with pytest.raises(RuntimeError, match="diverged on purpose"):
        _trainer(STEPS, callbacks=[_callback(tmp_path / "run")]).fit(Module(fail_at=3), _loader())
    run = cen_lab.load_run(tmp_path / "run")
    assert run.status == "failed" and "diverged on purpose" in run.manifest["error"]
    assert sorted(run.gammas["step"].unique()) == [0, 1, 2, 3]


def test_a_module_without_a_readable_cen_layer_lists_its_norm_like_modules(tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def training_step(self, batch, batch_idx):
            return self.bn(self.conv(batch[0])).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cb = CENObserver(tmp_path / "run", penalised="none")
    with pytest.raises(ObserveError, match=r"no layer in a readable layout.*BN-like modules: \['bn'\]"):
        _trainer(2, callbacks=[cb]).fit(Plain(), _loader())
    with pytest.raises(ObserveError, match="grads_every >= 0"):
        CENObserver(tmp_path / "x", grads_every=-1)


def test_the_callback_records_the_forecast_given_the_schedule(tmp_path):
    from cen_lab.runs.forecast_model import ForecastWarning

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForecastWarning)
        _trainer(12, callbacks=[_callback(tmp_path / "fc", lr=LR, forecast_every=2)]).fit(Module(), _loader(12))
    run = cen_lab.load_run(tmp_path / "fc")
    assert run.forecasts["step"].tolist() == [7, 8, 10]  # from the 8th logged state (step 7), then every 2
    assert (run.forecasts["budget"] == 12).all()
    with pytest.raises(ObserveError, match="max_steps"):  # no Trainer(max_steps): no budget to forecast to
        pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False,
                   callbacks=[_callback(tmp_path / "nobudget", lr=LR)]).fit(Module(), _loader(2))
