import json

import numpy as np
import pytest

from cen_lab import DataFormatError
from cen_lab.config import DataConfig, SceneParams
from cen_lab.data import (CANONICAL, canonical_path, class_names, content_sha256, generate_scenes, load_data,
                          load_dataset, save_dataset, write_canonical)
from cen_lab.data.scenes import class_grid

SMALL = SceneParams(image_size=16, n_train=24, n_val=8, seed=5)


def test_generator_is_bit_identical_for_a_seed():
    a, b = generate_scenes(SMALL), generate_scenes(SMALL)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = generate_scenes(SceneParams(image_size=16, n_train=24, n_val=8, seed=6))
    assert not np.array_equal(a["rgb"], c["rgb"])


def test_generator_shapes_and_labels():
    a = generate_scenes(SMALL)
    assert a["rgb"].shape == (32, 3, 16, 16) and a["depth"].shape == (32, 1, 16, 16) and a["edges"].shape == (32, 1, 16, 16)
    assert a["labels"].shape == (32, 16, 16) and a["labels"].max() < SMALL.num_classes
    assert a["split"].tolist() == [0] * 24 + [1] * 8
    cls = generate_scenes(SceneParams(task="cls", image_size=16, n_train=24, n_val=8))
    assert cls["labels"].shape == (32,) and cls["labels"].min() >= 1


def test_neither_modality_alone_identifies_the_class():
    """rgb is the same for two geometries of one material; depth is the same for two materials of one geometry."""
    p = SceneParams(n_train=400, n_val=1, rgb_noise=0.0, depth_noise=0.0, depth_dropout=0.0, camouflage=0.0)
    a = generate_scenes(p)
    grid = class_grid(p.num_classes)  # class k+1 -> (material, geometry)
    assert grid == [(0, 0), (1, 0), (0, 1), (1, 1)]
    labels = a["labels"]
    rgb = a["rgb"].transpose(0, 2, 3, 1)  # [N, H, W, 3]
    mean_rgb = {c: rgb[labels == c].mean(0) for c in range(1, 5)}
    assert np.abs(mean_rgb[1] - mean_rgb[3]).max() < 3  # red box vs red dome: same colour (uint8 units)
    assert np.abs(mean_rgb[1] - mean_rgb[2]).max() > 50  # red box vs blue box: different colour
    depth = a["depth"][:, 0]
    # depth profile: the box is flat, the dome is not; material does not change it
    spread = {c: np.std(depth[labels == c]) for c in range(1, 5)}
    assert abs(spread[1] - spread[2]) < 0.25 * spread[1]  # red box ~ blue box
    assert abs(spread[3] - spread[4]) < 0.25 * spread[3]  # red dome ~ blue dome
    assert class_names(5) == ["background", "red box", "blue box", "red dome", "blue dome"]


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_committed_canonical_data_regenerates_identically(name, tmp_path):
    committed = canonical_path(name)
    manifest = json.loads(committed.with_suffix(".json").read_text())
    assert manifest["sha256"] == content_sha256(generate_scenes(CANONICAL[name]))
    fresh = write_canonical(name, tmp_path)
    assert fresh.read_bytes() == committed.read_bytes()  # byte-identical files
    assert fresh.with_suffix(".json").read_bytes() == committed.with_suffix(".json").read_bytes()


def test_canonical_loads_with_modality_selection():
    ds = load_data(DataConfig(source="scenes-seg", modalities=("depth", "rgb")))
    assert ds.modalities == ("depth", "rgb") and ds.channels == {"depth": 1, "rgb": 3}
    x, y = ds.stacked(0)
    assert x.shape == (2, 512, 3, 32, 32) and y.shape == (512, 32, 32)
    assert np.all(x[0, :, 1:] == 0)  # depth zero-padded to 3 channels
    assert 0.0 <= x.min() and x.max() <= 1.0


def _arrays(n=6, seg=True):
    rng = np.random.default_rng(0)
    return {
        "rgb": rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8),
        "depth": rng.random((n, 1, 8, 8)).astype(np.float32),
        "labels": rng.integers(0, 3, (n, 8, 8) if seg else (n,)).astype(np.int64),
        "split": np.array([0] * (n - 2) + [1] * 2, np.uint8),
    }


def test_users_own_arrays_load_without_manifest(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, **_arrays())
    ds = load_dataset(path)
    assert ds.task == "seg" and ds.num_classes == 3 and ds.modalities == ("rgb", "depth")
    assert ds.inputs["rgb"].dtype == np.float32 and ds.inputs["rgb"].max() <= 1.0
    cls_path = tmp_path / "cls.npz"
    np.savez(cls_path, **_arrays(seg=False))
    assert load_dataset(cls_path).task == "cls"


def test_save_and_load_round_trip(tmp_path):
    arrays = _arrays()
    path = save_dataset(tmp_path / "d.npz", arrays, {"task": "seg", "num_classes": 3, "modalities": ["rgb", "depth"]})
    ds = load_dataset(path)
    assert np.array_equal(ds.labels, arrays["labels"]) and ds.manifest["sha256"] == content_sha256(arrays)


@pytest.mark.parametrize(
    "mutate, match",
    [(lambda a: a.pop("labels"), "missing key 'labels'"),
     (lambda a: a.pop("split"), "missing key 'split'"),
     (lambda a: a.update(depth=a["depth"][:, :, :4]), "modality 'depth' has shape .* does not match 'rgb'"),
     (lambda a: a.update(depth=a["depth"][:5]), "modality 'depth' has shape"),
     (lambda a: a["depth"].__setitem__((0, 0, 0, 0), np.nan), "modality 'depth' contains NaN"),
     (lambda a: a.update(labels=a["labels"][:, :4]), "'labels' must have shape"),
     (lambda a: a.update(labels=a["labels"] - 5), "'labels' has negative values"),
     (lambda a: a.update(split=np.full(6, 2, np.uint8)), "'split' must be"),
     (lambda a: a.update(rgb=a["rgb"][0]), "modality 'rgb' must have shape \\[N, C, H, W\\]")],
)
def test_bad_files_name_the_problem(tmp_path, mutate, match):
    arrays = _arrays()
    mutate(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataFormatError, match=match):
        load_dataset(path)


def test_manifest_disagreements_and_corruption(tmp_path):
    path = save_dataset(tmp_path / "d.npz", _arrays(), {"task": "seg", "num_classes": 3})
    manifest = json.loads(path.with_suffix(".json").read_text())
    np.savez(path, **{**_arrays(), "labels": np.zeros((6, 8, 8), np.int64)})
    with pytest.raises(DataFormatError, match="do not match the sha256"):
        load_dataset(path)
    manifest.pop("sha256")
    manifest["num_classes"] = 2
    path.with_suffix(".json").write_text(json.dumps(manifest))
    np.savez(path, **_arrays())
    with pytest.raises(DataFormatError, match="'labels' has value 2 >= num_classes = 2"):
        load_dataset(path)
    path.with_suffix(".json").write_text(json.dumps({**manifest, "format": "other"}))
    with pytest.raises(DataFormatError, match="'format' must be"):
        load_dataset(path)
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_dataset(path)
    with pytest.raises(DataFormatError, match="no such dataset file"):
        load_dataset(tmp_path / "missing.npz")


def test_missing_modality_is_named():
    with pytest.raises(DataFormatError, match="no modality 'thermal'"):
        load_data(DataConfig(source="scenes-seg", modalities=("rgb", "thermal")))


# sha256 of each array's bytes as committed before the translation target existed: adding ``shade`` must not
# change a bit of them (the generator draws nothing for it)
_ARRAYS_BEFORE_SHADE = {
    "scenes-seg": {"rgb": "cf7197e4279cc014", "depth": "00d9e9d5f4151256", "edges": "63834a7033747e2b",
                   "labels": "1dd6757235107460", "split": "b4e3e68c401673d8"},
    "scenes-cls": {"rgb": "830cf56fff777f06", "depth": "be8b24c8cd25a023", "edges": "5a8fef1e0a83abc7",
                   "labels": "a97a7e402947b0ce", "split": "c405fbe25b08f4ec"},
}


@pytest.mark.parametrize("name", sorted(_ARRAYS_BEFORE_SHADE))
def test_shade_target_is_added_and_the_other_arrays_are_unchanged(name):
    import hashlib

    with np.load(canonical_path(name)) as z:
        arrays = {k: z[k] for k in z.files}
    for key, digest in _ARRAYS_BEFORE_SHADE[name].items():
        assert hashlib.sha256(np.ascontiguousarray(arrays[key]).tobytes()).hexdigest()[:16] == digest, key
    shade, rgb = arrays["shade"], arrays["rgb"]
    assert shade.dtype == np.uint8 and shade.shape == rgb.shape
    fresh = generate_scenes(CANONICAL[name])["shade"]
    assert np.array_equal(fresh, shade)  # reproducible bit for bit


def test_shade_is_lambertian_over_the_noise_free_scene():
    from cen_lab.data.scenes import AMBIENT, LIGHT, shade_scene

    albedo = np.full((3, 8, 8), 0.5)
    flat = shade_scene(albedo, np.zeros((8, 8)))
    assert np.allclose(flat, 0.5 * (AMBIENT + (1 - AMBIENT) * LIGHT[2]))  # normal (0, 0, 1)
    # a slope falling to the right faces right, away from a light on the left: darker than flat; rising, brighter
    assert (shade_scene(albedo, np.tile(np.linspace(1, 0, 8), (8, 1))) < flat).all()
    assert (shade_scene(albedo, np.tile(np.linspace(0, 1, 8), (8, 1))) > flat).all()
    steep = shade_scene(albedo, np.tile(np.linspace(50, 0, 8), (8, 1)))  # facing away entirely: ambient only
    assert np.allclose(steep, 0.5 * AMBIENT, atol=1e-2)
