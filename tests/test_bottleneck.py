"""model.arch = "bottleneck": the reference's residual shape, exchanging and penalised at bn2 only."""

import pandas as pd
import pytest
import torch

import cen_lab
from cen_lab.network.architectures import BottleneckBlock, ModalBatchNorm2d, ModalConv2d, build_model
from cen_lab.runs import TABLES


@pytest.fixture
def tiny_bottleneck(tiny):
    return tiny.override({"model.arch": "bottleneck"})


def _model(cfg, m=2, tasks="seg"):
    torch.manual_seed(0)
    return build_model(cfg.model, m, 3, 5, tasks, cfg.train.sparsity)


def test_the_exchange_and_the_penalty_sit_at_bn2_of_every_bottleneck_only(tiny_bottleneck):
    model = _model(tiny_bottleneck)
    assert all(isinstance(b, BottleneckBlock) for b in model.blocks)
    assert [name for name, _ in model.cen_layers()] == [f"blocks.{b}.bn2" for b in range(len(model.blocks))]
    assert all(bn is blk.bn2 for (_, bn), blk in zip(model.cen_layers(), model.blocks))
    penalised = {name for name, mod in model.named_modules()
                 if isinstance(mod, ModalBatchNorm2d) and bool(mod.penalty_mask.any())}
    assert penalised == {"blocks.0.bn2", "blocks.1.bn2"}
    # a block outputs its width; bn1 and bn2 have width // expansion channels
    assert model.blocks[0].bn2.num_features == 4 and model.blocks[0].bn3.num_features == 8


@pytest.mark.parametrize("m", [2, 3])
def test_every_convolution_is_shared_and_every_batchnorm_private(tiny_bottleneck, m):
    model, uni = _model(tiny_bottleneck, m), _model(tiny_bottleneck, 1)
    convs = [mod for mod in model.modules() if isinstance(mod, ModalConv2d)]
    assert convs and all(len(c.convs) == 1 for c in convs)  # one kernel for all branches
    bns = {name: mod for name, mod in model.named_modules() if isinstance(mod, ModalBatchNorm2d)}
    assert "stem.1" in bns and "blocks.1.downsample.1" in bns  # the stem's and the downsample's BN
    assert all(bn.weight.shape[0] == m and bn.running_mean.shape[0] == m for bn in bns.values())

    def count(net, kind):
        return sum(p.numel() for mod in net.modules() if isinstance(mod, kind) for p in mod.parameters())

    # the same convolution parameters as the unimodal network, M times its BN parameters
    assert count(model, ModalConv2d) == count(uni, ModalConv2d)
    assert count(model, ModalBatchNorm2d) == m * count(uni, ModalBatchNorm2d)


def test_only_bn2_mixes_the_branches(tiny_bottleneck):
    model = _model(tiny_bottleneck).eval()  # running statistics: nothing else couples the branches
    x = torch.randn(2, 3, 3, 16, 16)
    x2 = x.clone()
    x2[1] += torch.randn_like(x2[1])  # another depth input
    with torch.no_grad():
        for name, mod in model.named_modules():  # every other BN of the rgb branch has gamma below the threshold
            if isinstance(mod, ModalBatchNorm2d) and not name.endswith("bn2"):
                mod.weight[0, :2] = 0.0
        same = model(x).logits[0], model(x2).logits[0]
        assert torch.equal(*same)  # the rgb prediction does not see depth: no exchange anywhere else
        model.blocks[1].bn2.weight[0, 3] = 0.0  # one rgb channel of one bn2 below the threshold
        assert not torch.equal(model(x).logits[0], model(x2).logits[0])


@pytest.mark.parametrize("m", [2, 3])
def test_the_bn2_exchange_follows_the_definition(tiny_bottleneck, m):
    block = _model(tiny_bottleneck.override({"data.modalities": ["rgb", "depth", "edges"][:m]}), m).blocks[1]
    gamma = torch.full((m, 4), 0.5)
    gamma[0, [1, 3]] = 0.0  # hand-made pattern: some channels of each branch below the threshold 0.02
    gamma[1, [2]] = -0.01
    if m == 3:
        gamma[2, [1, 2]] = 0.001
    with torch.no_grad():
        block.bn2.weight.copy_(gamma)
    x = torch.randn(m, 4, 4, 6, 6)
    own = block.bn2(x)  # [M, N, C, H, W]
    out = block._exchange(block.bn2, x)
    for b in range(m):
        for c in range(4):
            others = [o for o in range(m) if o != b]
            expected = own[b, :, c] if abs(gamma[b, c]) >= 0.02 else own[others, :, c].mean(0)
            torch.testing.assert_close(out[b, :, c], expected)


@pytest.mark.parametrize("over", [{"data.modalities": ["rgb"], "data.tasks": ["seg", "depth", "edges"]},
                                  {"data.tasks": ["seg", "edges"]},
                                  {"data.modalities": ["rgb", "depth", "edges"], "model.exchange": "cyclic"},
                                  {"model.fusion": "aggregate-concat", "model.exchange": "none", "train.sparsity": "none"}])
def test_multitask_scenarios_and_baselines_train_at_tiny_size(tiny_bottleneck, tmp_path, over):
    run = cen_lab.train(tiny_bottleneck.override(over), tmp_path / "r", progress=False)
    assert run.complete and set(run.gammas["layer"]) == {"blocks.0.bn2", "blocks.1.bn2"}
    assert run.config.model.arch == "bottleneck"


def test_bottleneck_runs_are_deterministic_and_resume_to_the_same_logs(tiny_bottleneck, tmp_path):
    a = cen_lab.train(tiny_bottleneck, tmp_path / "a", progress=False)
    b = cen_lab.train(tiny_bottleneck, tmp_path / "b", progress=False)
    part = cen_lab.train(tiny_bottleneck, tmp_path / "part", progress=False, stop_at=9)
    assert part.status == "incomplete" and part.manifest["last_step"] == 9
    resumed = cen_lab.train(tiny_bottleneck, tmp_path / "part", progress=False, resume=True)
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table), check_exact=True)
        pd.testing.assert_frame_equal(getattr(a, table), getattr(resumed, table), check_exact=True)
    model = a.load_model()
    assert [n for n, _ in model.cen_layers()] == ["blocks.0.bn2", "blocks.1.bn2"]


def test_the_theorem_check_runs_on_the_bottleneck_network(tmp_path):
    from cen_lab import theorem

    runs = theorem.train_theorem_runs([0.05], [0], tmp_path, preset="tiny", steps=6, checkpoints=2, n_jobs=1,
                                      progress=False, model__arch="bottleneck")
    local = theorem.local_check_runs(runs, n_batches=1, progress=False)
    assert set(local["layer"]) == {"blocks.0.bn2", "blocks.1.bn2"} and len(local) > 0
    assert local["norm"].ge(0).all() and local["predicted"].between(0, 1).all()


def test_bad_architecture_settings_are_errors(tiny):
    with pytest.raises(cen_lab.ConfigError, match="model.arch"):
        tiny.override({"model.arch": "resnet"})
    with pytest.raises(cen_lab.ConfigError, match="model.expansion"):
        tiny.override({"model.arch": "bottleneck", "model.expansion": 0})


def test_bottleneck_widths_must_divide_by_the_expansion(tiny):
    with pytest.raises(cen_lab.ConfigError, match="multiples of model.expansion=4"):
        tiny.override({"model.arch": "bottleneck", "model.expansion": 4, "model.widths": [8, 6]})
    with pytest.raises(cen_lab.ConfigError, match="at least one channel per branch"):  # bn2 has 8 // 4 = 2 < 3
        tiny.override({"model.arch": "bottleneck", "model.expansion": 4,
                       "data.modalities": ["rgb", "depth", "edges"]})


def test_the_explorer_shows_a_bottleneck_run(tiny_bottleneck, tmp_path):
    from cen_lab.views.widgets import explore

    run = cen_lab.train(tiny_bottleneck, tmp_path / "b", progress=False)
    ex = explore(run)
    assert list(ex.layer_picker.options) == ["blocks.0.bn2", "blocks.1.bn2"]
    ex.layer_picker.value = "blocks.1.bn2"
    ex.slider.value = ex.slider.max
    assert ex.figures["gammas"].get_suptitle() == f"blocks.1.bn2: |gamma| at step {ex.steps[-1]}"
