"""Training pools (data.train_pool): the same scenes from the same settings in every process, validation
unchanged and never trained on, the cache verified, and the long preset."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import cen_lab
from cen_lab import ConfigError
from cen_lab.data import generate_scenes, load_data, save_dataset
from cen_lab.data import pool as pool_mod
from cen_lab.errors import DataFormatError
from cen_lab.runs import TABLES


@pytest.fixture
def pooled(tiny):
    """The tiny preset on a pool of 100 fresh scenes (not a whole number of chunks when CHUNK is 32)."""
    return tiny.override({"data.train_pool": 100})


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(pool_mod, "CHUNK", 32)


def _same_runs(a, b):
    for t in TABLES:
        pd.testing.assert_frame_equal(getattr(a, t), getattr(b, t), check_exact=True)


def test_the_same_settings_give_the_same_pool_in_any_number_of_processes(tiny, small_chunks):
    params = tiny.data.scene
    one = pool_mod.draw_pool(params, 100)
    again = pool_mod.draw_pool(params, 100)
    two = pool_mod.draw_pool(params, 100, n_jobs=2)
    for name in one:
        np.testing.assert_array_equal(one[name], again[name])
        np.testing.assert_array_equal(one[name], two[name])
    assert not np.array_equal(one["rgb"], pool_mod.draw_pool(params.__class__(**{**params.__dict__, "seed": 5}), 100)["rgb"])


def test_a_pool_trains_on_fresh_scenes_and_validates_on_the_source_split(pooled, tiny):
    ds, source = load_data(pooled.data), load_data(tiny.data)
    assert int((ds.split == 0).sum()) == 100 and int((ds.split == 1).sum()) == int((source.split == 1).sum())
    for m in ds.modalities:  # validation unchanged, bit for bit
        np.testing.assert_array_equal(ds.inputs[m][ds.split == 1], source.inputs[m][source.split == 1])
    np.testing.assert_array_equal(ds.labels[ds.split == 1], source.labels[source.split == 1])
    train = pool_mod._scene_digests(ds, ds.split == 0)
    assert len(train) == 100  # no scene repeated inside the pool
    assert not train & pool_mod._scene_digests(source, source.split == 1)  # never a validation scene
    assert not train & pool_mod._scene_digests(source, source.split == 0)  # nor one of the source's own training scenes
    seen = ds.manifest["seen"]
    assert seen["train"]["kind"] == "pool" and seen["train"]["scenes"] == 100
    assert seen["val"] == {"kind": "split", "scenes": 32, "source": "generate", "sha256": None,
                           "generator": seen["train"]["generator"]}


def test_a_run_records_which_data_it_saw_and_is_deterministic_under_resume(pooled, tmp_path):
    run = cen_lab.train(pooled, tmp_path / "a", progress=False)
    data = run.manifest["data"]
    assert data["train"]["kind"] == "pool" and data["train"]["scenes"] == 100 and len(data["train"]["sha256"]) == 64
    assert data["val"]["kind"] == "split" and run.manifest["n_train"] == 100
    cen_lab.train(pooled, tmp_path / "b", progress=False, stop_at=6)
    resumed = cen_lab.train(pooled, tmp_path / "b", progress=False, resume=True)
    _same_runs(run, resumed)
    plain = cen_lab.train(pooled.override({"data.train_pool": 0}), tmp_path / "c", progress=False)
    assert plain.manifest["data"]["train"] == {"kind": "split", "scenes": 64, "source": "generate", "sha256": None,
                                               "generator": data["train"]["generator"]}
    assert not run.gammas["gamma"].equals(plain.gammas["gamma"])  # the pool is what it trained on


def test_serial_loky_and_dask_sweeps_train_the_same_pooled_runs(pooled, tmp_path):
    from dask.distributed import Client, LocalCluster

    base, grid = pooled.override({"train.steps": 4, "log.every": 1}), {"seed": [0, 1]}
    serial = cen_lab.sweep(base, grid, tmp_path / "serial", backend="serial", progress=False)
    loky = cen_lab.sweep(base, grid, tmp_path / "loky", backend="loky", n_jobs=2, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dask = cen_lab.sweep(base, grid, tmp_path / "dask", backend="dask", scheduler=client, progress=False)
    for table in (serial, loky, dask):
        assert table["status"].tolist() == ["complete"] * 2
    for a, b, c in zip(serial["path"], loky["path"], dask["path"]):
        _same_runs(cen_lab.load_run(a), cen_lab.load_run(b))
        _same_runs(cen_lab.load_run(a), cen_lab.load_run(c))


def test_a_pool_holding_validation_scenes_is_refused_before_a_run_is_written(pooled, tmp_path, monkeypatch):
    params = pooled.data.scene
    val = {k: v[params.n_train:] for k, v in generate_scenes(params).items() if k != "split"}
    monkeypatch.setattr(pool_mod, "draw_scenes", lambda p, n, rng: {k: v[:n] for k, v in val.items()})
    monkeypatch.setenv("CEN_LAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataFormatError, match="32 scene.s. of the training pool equal validation scenes"):
        cen_lab.train(pooled.override({"data.train_pool": 32}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "manifest.json").exists()


def test_a_cache_that_does_not_match_its_hash_is_reported_and_generated_again(pooled, tmp_path, monkeypatch):
    monkeypatch.setenv("CEN_LAB_CACHE", str(tmp_path))
    first = load_data(pooled.data)
    path = pool_mod.pool_path(pooled.data.scene, 100)
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    manifest = json.loads(path.with_suffix(".json").read_text())
    arrays["rgb"][3, 0, 0, 0] ^= 1  # one bit of one pixel
    save_dataset(path, arrays, {k: v for k, v in manifest.items() if k not in ("format", "format_version", "sha256")})
    path.with_suffix(".json").write_text(json.dumps(manifest))  # the old hash beside the changed arrays
    with pytest.warns(pool_mod.PoolCacheWarning, match="does not match|do not match"):
        again = load_data(pooled.data)
    np.testing.assert_array_equal(again.inputs["rgb"], first.inputs["rgb"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_data(pooled.data)  # rebuilt: no warning now


def test_a_pool_of_a_file_without_generator_parameters_is_refused(tiny, tmp_path):
    arrays = generate_scenes(tiny.data.scene)
    save_dataset(tmp_path / "mine.npz", {k: arrays[k] for k in ("rgb", "depth", "labels", "split")}, {"task": "seg"})
    cfg = tiny.override({"data.source": str(tmp_path / "mine.npz"), "data.train_pool": 50})
    with pytest.raises(ConfigError, match="records none .*cannot be regenerated"):
        cen_lab.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()
    # a file that records its generator can give a pool
    save_dataset(tmp_path / "gen.npz", {k: arrays[k] for k in ("rgb", "depth", "labels", "split")},
                 {"task": "seg", "generator": tiny.data.scene.__dict__})
    ds = load_data(tiny.override({"data.source": str(tmp_path / "gen.npz"), "data.train_pool": 50}).data)
    assert int((ds.split == 0).sum()) == 50


@pytest.mark.parametrize("value", [-1, 2.5, "many"])
def test_train_pool_must_be_a_whole_number(tiny, value):
    with pytest.raises(ConfigError, match="data.train_pool"):
        tiny.override({"data.train_pool": value})


def test_the_long_preset_validates_and_trains_at_tiny_size(tiny, tmp_path):
    long = cen_lab.ExperimentConfig.preset("long")
    assert (long.train.steps, long.train.lam, long.data.train_pool, long.log.grads) == (10000, 2e-4, 65536, True)
    assert (long.train.optimizer, long.train.lr_schedule, long.data.source) == ("adam", "cosine", "scenes-seg")
    scene = {f"data.scene.{k}": v for k, v in tiny.data.scene.__dict__.items()}
    small = long.override({"data.source": "generate", **scene, "data.train_pool": 64,
                           "model.widths": [8, 8], "model.strides": [1, 2], "train.steps": 12,
                           "train.batch_size": 16, "train.ckpt_every": 6, "log.every": 2, "log.eval_every": 6})
    run = cen_lab.train(small, tmp_path / "long", progress=False)
    assert run.manifest["status"] == "complete" and run.manifest["data"]["train"]["kind"] == "pool"
    assert not run.grads.empty
