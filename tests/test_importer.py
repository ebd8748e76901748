"""Checkpoint import: state dicts in the usual wrappers become runs with one logged step per file."""

import re

import numpy as np
import pytest
import torch

import cen_lab
from cen_lab.cli import main
from cen_lab.errors import ObserveError
from cen_lab.zoo import ReferenceStyleCEN


def _series(tmp_path, wrap, prefix="", steps=(0, 5, 10), entry=None):
    """Save a ReferenceStyleCEN at three training states; returns the files and each state's bn2 weights."""
    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    files, weights = [], {}
    for i, step in enumerate(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        sd = {prefix + k: v.clone() for k, v in model.state_dict().items()}
        obj = wrap(sd)
        if entry:
            obj[entry] = step
        path = tmp_path / f"epoch-{step}.pth"
        torch.save(obj, path)
        files.append(path)
        weights[step] = {k: v.clone() for k, v in model.state_dict().items() if ".bn2." in k and k.endswith("weight")}
    return files, weights


WRAPPERS = {"plain": lambda sd: sd, "state_dict": lambda sd: {"state_dict": sd, "optimizer": {}},
            "model": lambda sd: {"model": sd}, "segmenter": lambda sd: {"segmenter": sd, "best_val": 0.5},
            "net": lambda sd: {"net": sd}, "nested": lambda sd: {"model": {"state_dict": sd}}}


@pytest.mark.parametrize("prefix", ["", "module."], ids=["bare", "DataParallel"])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_import_every_wrapper_with_and_without_module_prefix(tmp_path, wrapper, prefix):
    entry = "epoch_start" if wrapper == "segmenter" else None  # the reference code's checkpoints carry it
    files, weights = _series(tmp_path, WRAPPERS[wrapper], prefix, entry=entry)
    run = cen_lab.import_checkpoints(str(tmp_path / "epoch-*.pth"), tmp_path / "run", layers="*.bn2",
                                     penalised="alternate-halves", modality_names=["rgb", "depth"], progress=False)
    assert run.source == "imported" and run.status == "complete"
    # without an entry, the steps are the numbers in the file names (epoch-0, epoch-5, epoch-10)
    assert run.manifest["step_source"] == ("file entry 'epoch_start'" if entry else "filename")
    expected_steps = [0, 5, 10]
    assert sorted(run.gammas["step"].unique()) == expected_steps
    for step, want in zip(expected_steps, weights.values()):
        g = run.gammas[run.gammas["step"] == step]
        for layer in ("layers.0.0.bn2", "layers.1.0.bn2"):
            for b in (0, 1):
                got = g[(g["layer"] == layer) & (g["branch"] == b)].sort_values("channel")["gamma"].to_numpy()
                np.testing.assert_array_equal(got, want[f"{layer}.bn_{b}.weight"].numpy())
    merged = run.gammas.merge(run.exchange, on=["step", "layer", "branch", "channel"])
    np.testing.assert_array_equal(merged["exchanged"], merged["gamma"].abs() < 0.02)
    pen = run.gammas[run.gammas["step"] == expected_steps[0]].sort_values(["layer", "branch", "channel"])
    assert pen["penalised"].tolist() == [True, True, False, False, False, False, True, True] + \
        [True, True, True, False, False, False, False, False, False, True, True, True]


def test_steps_from_an_entry_the_argument_or_the_order(tmp_path):
    files, _ = _series(tmp_path, WRAPPERS["plain"], entry=None)
    run = cen_lab.import_checkpoints(files[::-1], tmp_path / "a", penalised="none", steps=[30, 20, 10], progress=False)
    assert run.manifest["step_source"] == "argument" and sorted(run.gammas["step"].unique()) == [10, 20, 30]
    assert [f["step"] for f in run.manifest["imported_files"]] == [10, 20, 30]
    with pytest.raises(ObserveError, match="2 entries for 3"):
        cen_lab.import_checkpoints(files, tmp_path / "b", penalised="none", steps=[1, 2], progress=False)
    with pytest.raises(ObserveError, match="same step"):
        cen_lab.import_checkpoints(files, tmp_path / "c", penalised="none", steps=[1, 1, 2], progress=False)
    # every layer by default: the stem, the bottlenecks' three BNs and the downsample BNs
    run = cen_lab.import_checkpoints(tmp_path, tmp_path / "d", penalised="none", progress=False)
    assert "bn1" in run.manifest["layers"] and "layers.1.0.downsample.1" in run.manifest["layers"]


def test_cen_lab_checkpoints_import_to_the_logged_gammas(tiny_run, tmp_path):
    run = cen_lab.import_checkpoints(str(tiny_run.path / "checkpoints" / "step-*.pt"), tmp_path / "run",
                                     penalised="disjoint", threshold=tiny_run.threshold, progress=False)
    assert run.manifest["step_source"] == "file entry 'step'" and run.manifest["state_dict_key"] == "model"
    steps = sorted(run.gammas["step"].unique())
    assert steps == tiny_run.checkpoint_steps
    keys = ["step", "layer", "branch", "channel"]
    for table, cols in (("gammas", ["gamma", "beta", "penalised"]), ("exchange", ["exchanged", "source"])):
        mine = getattr(run, table).set_index(keys)[cols].sort_index()
        theirs = getattr(tiny_run, table).set_index(keys)[cols].sort_index().loc[mine.index]
        assert mine.equals(theirs), table


def test_keys_matching_no_layer_list_the_candidates(tmp_path):
    files, _ = _series(tmp_path, WRAPPERS["plain"])
    with pytest.raises(ObserveError, match=r"'\*\.bn9' matches no readable layer.*layers\.0\.0\.bn2"):
        cen_lab.import_checkpoints(files, tmp_path / "run", layers="*.bn9", penalised="none", progress=False)
    torch.save({"conv.kernel": torch.ones(2, 2), "head.w": torch.ones(1)}, tmp_path / "nobn.pt")
    with pytest.raises(ObserveError, match=r"no BatchNorm found.*its 2 keys begin \['conv.kernel', 'head.w'\]"):
        cen_lab.import_checkpoints(tmp_path / "nobn.pt", tmp_path / "run2", penalised="none", progress=False)
    torch.save({"epoch": 3, "optim": {"lr": 0.1}}, tmp_path / "nostate.pt")
    with pytest.raises(ObserveError, match="no state dict found"):
        cen_lab.import_checkpoints(tmp_path / "nostate.pt", tmp_path / "run3", penalised="none", progress=False)
    assert not (tmp_path / "run").exists()


def test_nan_gammas_are_refused_with_the_file_and_layer_before_anything_is_written(tmp_path):
    files, _ = _series(tmp_path, WRAPPERS["plain"])
    sd = torch.load(files[1], weights_only=True)
    sd["layers.0.0.bn2.bn_0.weight"][1] = float("nan")
    torch.save(sd, files[1])
    with pytest.raises(ObserveError, match=r"epoch-5.pth: layer 'layers.0.0.bn2.bn_0' has 1 gamma\(s\) that are NaN"):
        cen_lab.import_checkpoints(files, tmp_path / "run", penalised="none", progress=False)
    assert not (tmp_path / "run").exists()


class _Payload:
    """Unpickling this creates a file: proof of whether code in a checkpoint ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holding_a_pickled_callable_is_refused_and_nothing_runs(tmp_path):
    files, _ = _series(tmp_path, WRAPPERS["plain"], steps=(0,))
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": torch.load(files[0], weights_only=True), "hook": _Payload(marker)}, evil)
    with pytest.raises(ObserveError) as refused:
        cen_lab.import_checkpoints(evil, tmp_path / "run", penalised="none", progress=False)
    message = str(refused.value)
    # cen_lab's own message: what (the global), why, what to do; never torch's styled text or unsafe advice
    assert "refused: it pickles code (io.open)" in message and "Nothing in the file was executed" in message
    assert "torch.save({'state_dict': model.state_dict()" in message
    assert "\x1b" not in message and "weights_only=False" not in message and "will likely succeed" not in message
    assert not marker.exists() and not (tmp_path / "run").exists()
    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load does run it
    assert marker.exists()


def test_cli_import(tmp_path, capsys):
    _series(tmp_path, WRAPPERS["segmenter"], entry="epoch_start")
    out = tmp_path / "run"
    rc = main(["import", str(tmp_path / "epoch-*.pth"), "--out", str(out), "--layers", "*.bn2", "--penalised",
               "alternate-halves", "--modality-names", "rgb,depth", "--no-progress"])
    assert rc == 0
    assert "3 checkpoints as steps [0, 5, 10] (file entry 'epoch_start')" in capsys.readouterr().out
    assert cen_lab.load_run(out).branches == ["rgb", "depth"]
    assert main(["import", str(tmp_path / "epoch-*.pth"), "--out", str(out), "--penalised", "none"]) == 2
    err = capsys.readouterr().err
    # import has no resume, and the CLI spells overwrite as a flag
    assert "already holds a run (status complete); pass --update to add the files it does not hold yet, --overwrite to replace it" in err
    assert "resume" not in err and "=True" not in err
    with pytest.raises(cen_lab.RunExistsError,
                       match=r"pass update=True to add the files it does not hold yet, overwrite=True to replace it, or choose another directory$"):
        cen_lab.import_checkpoints(str(tmp_path / "epoch-*.pth"), out, penalised="none", progress=False)
    assert main(["import", str(tmp_path / "epoch-*.pth"), "--out", str(tmp_path / "x"), "--penalised", "none",
                 "--steps", "a,b"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_one_model_has_the_same_layer_names_however_it_is_wrapped(tmp_path):
    # torch.compile adds _orig_mod., DataParallel module.: observe, import and the check unwrap by one rule
    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    names = {}
    for label, wrapped in {"bare": model, "compiled": torch.compile(model), "dp": torch.nn.DataParallel(model),
                           "dp-compiled": torch.nn.DataParallel(torch.compile(model))}.items():
        with cen_lab.observe(wrapped, tmp_path / label, layers="*.bn2", penalised="alternate-halves") as obs:
            obs.log(0)
        run = cen_lab.load_run(tmp_path / label)
        names[label] = sorted(run.gammas["layer"].unique())
        assert run.manifest["model_class"] == "cen_lab.network.zoo.ReferenceStyleCEN"  # the inner model's class
    assert len(set(map(tuple, names.values()))) == 1 and names["bare"][0] == "layers.0.0.bn2"
    observed = cen_lab.load_run(tmp_path / "bare").gammas
    for label, prefix in {"compile": "_orig_mod.", "ddp-compile": "module._orig_mod."}.items():
        torch.save({prefix + k: v for k, v in model.state_dict().items()}, tmp_path / f"{label}.pth")
        run = cen_lab.import_checkpoints(tmp_path / f"{label}.pth", tmp_path / f"imp-{label}", layers="*.bn2",
                                         penalised="alternate-halves", progress=False)
        assert sorted(run.gammas["layer"].unique()) == names["bare"]
        assert np.array_equal(run.gammas["gamma"].to_numpy(), observed["gamma"].to_numpy())


class _Block(torch.nn.Module):
    """A plain single-modality ResNet-style block: conv1, bn1, conv2, bn2 (bn1 and bn2 of the same size)."""

    def __init__(self, c=8):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.BatchNorm2d(c)
        self.conv2, self.bn2 = torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.BatchNorm2d(c)


def test_unrelated_checkpoints_are_refused_without_layers_naming_the_candidates(tmp_path, capsys):
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8))
    resnet = torch.nn.Module()
    resnet.layer1 = torch.nn.Sequential(_Block(), _Block())
    for name, model, unsure in (("seq", seq, "['<root>']"), ("resnet", resnet, "['layer1.0', 'layer1.1']")):
        path = tmp_path / f"{name}-epoch-1.pth"
        torch.save(model.state_dict(), path)
        with pytest.raises(ObserveError, match=rf"no layout is certain: .* not named as branches \({re.escape(unsure)}"
                                               r".* name its per-branch layers: layers="):
            cen_lab.import_checkpoints(path, tmp_path / name, penalised="none", progress=False)
        assert not (tmp_path / name).exists()
        assert main(["import", str(path), "--out", str(tmp_path / name), "--penalised", "none", "--no-progress"]) == 2
        assert "--layers '*.bn2' (repeatable)" in capsys.readouterr().err and not (tmp_path / name).exists()
    # naming the layers is the user's word: the same file imports (bn1 and bn2 read as two branches, as asked)
    run = cen_lab.import_checkpoints(tmp_path / "resnet-epoch-1.pth", tmp_path / "named", layers=["layer1.0"],
                                     penalised="none", progress=False)
    assert run.manifest["layers"] == ["layer1.0"]
