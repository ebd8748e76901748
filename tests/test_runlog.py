import json
import shutil

import pandas as pd
import pytest
import torch

import cen_lab
from cen_lab import RunFormatError
from cen_lab.runs import validate_table


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_run.path, dst)
    return dst


def test_tables_are_readable_as_parquet_folders(tiny_run):
    df = pd.read_parquet(tiny_run.path / "gammas")
    assert len(df) == len(tiny_run.gammas)


def test_corrupt_parquet_part_is_named(run_copy):
    part = sorted((run_copy / "gammas").glob("part-*.parquet"))[0]
    part.write_bytes(b"PAR1 garbage")
    with pytest.raises(RunFormatError, match=f"{part.name}: not a readable Parquet file"):
        cen_lab.load_run(run_copy)


def test_foreign_parquet_part_is_named(run_copy):
    part = sorted((run_copy / "metrics").glob("part-*.parquet"))[0]
    pd.DataFrame({"a": [1], "b": [2.0]}).to_parquet(part)
    with pytest.raises(RunFormatError, match=f"{part.name}: missing column 'step'"):
        cen_lab.load_run(run_copy)


def test_wrong_dtype_is_named(run_copy):
    part = sorted((run_copy / "gammas").glob("part-*.parquet"))[0]
    df = pd.read_parquet(part)
    df["gamma"] = df["gamma"].astype("float64")
    df.to_parquet(part)
    with pytest.raises(RunFormatError, match="column 'gamma' has dtype float64, expected float32"):
        cen_lab.load_run(run_copy)


def test_bad_manifest_and_config(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    (run_copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(RunFormatError, match="schema_version 99 is not supported"):
        cen_lab.load_run(run_copy)
    (run_copy / "manifest.json").write_text("{not json")
    with pytest.raises(RunFormatError, match="manifest.json: not valid JSON"):
        cen_lab.load_run(run_copy)
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    config = json.loads((run_copy / "config.json").read_text())
    config["train"]["lamda"] = 1
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFormatError, match="config.json: unknown config key 'train.lamda'"):
        cen_lab.load_run(run_copy)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunFormatError, match="not a cen_lab run directory"):
        cen_lab.load_run(tmp_path)


class Evil:
    pass


@pytest.mark.parametrize(
    "payload, match",
    [(b"garbage", "not a readable cen_lab checkpoint"),
     ({"weights": torch.zeros(2)}, "not a cen_lab checkpoint"),
     (Evil(), "not a readable cen_lab checkpoint")],  # refused by weights_only=True
)
def test_corrupt_or_foreign_checkpoint(run_copy, payload, match):
    run = cen_lab.load_run(run_copy)
    path = run_copy / "checkpoints" / f"step-{run.checkpoint_steps[-1]:09d}.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    with pytest.raises(RunFormatError, match=match):
        run.checkpoint()


def test_validate_table_on_write_rejects_missing_columns():
    with pytest.raises(RunFormatError, match="missing column 'value'"):
        validate_table("metrics", pd.DataFrame({"step": [0], "epoch": [0], "split": ["val"], "name": ["x"]}))


def test_a_damaged_config_is_refused_not_read_as_the_defaults(tiny_run, tmp_path):
    import json
    import shutil

    from cen_lab.errors import RunFormatError
    from cen_lab.runs import load_run
    from cen_lab.runs.schema import config_digest

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config_sha256"] == config_digest(json.loads((run_dir / "config.json").read_text()))
    (run_dir / "config.json").write_text(json.dumps(json.loads((run_dir / "config.json").read_text()), indent=4))
    assert load_run(run_dir).config == tiny_run.config  # re-indented: the same content, the same digest
    (run_dir / "config.json").write_text("{}")  # truncated: a valid config of defaults, but not this run's
    with pytest.raises(RunFormatError, match=r"run/config.json does not match the config this run was written with"):
        load_run(run_dir)
    del manifest["config_sha256"]  # a run written before the digest existed loads as before
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert load_run(run_dir).config.name == "default"


def test_a_runs_repr_says_what_its_step_numbers_are(tiny_run, tmp_path):
    from cen_lab.zoo import ReferenceStyleCEN

    assert f"trained, status='complete', steps=12/12," in repr(tiny_run)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    with cen_lab.observe(model, tmp_path / "obs", layers="*.bn2", penalised="alternate-halves", total_steps=30) as obs:
        for step in range(30):
            obs.log(step)
    assert "observed, status='complete', last_step=29, total_steps=30," in repr(cen_lab.load_run(tmp_path / "obs"))
