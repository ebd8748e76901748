import dataclasses
import json

import pytest

from cen_lab import ConfigError, ExperimentConfig
from cen_lab.config import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip(name):
    cfg = ExperimentConfig.preset(name)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_override_returns_new_validated_config(tiny):
    cfg = tiny.override({"train.lam": 1e-3, "seed": 3, "model.exchange_blocks": [1]})
    assert (cfg.train.lam, cfg.seed, cfg.model.exchange_blocks) == (1e-3, 3, (1,))
    assert tiny.train.lam != 1e-3  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 4  # type: ignore[misc]


def test_override_parses_command_line_strings(tiny):
    cfg = tiny.override({"train.lam": "1e-3", "log.grads": "true", "model.widths": "[4, 4]",
                         "data.modalities": "rgb,depth,edges", "model.exchange_blocks": "none", "train.optimizer": "adam"})
    assert cfg.train.lam == 1e-3 and cfg.log.grads is True and cfg.model.widths == (4, 4)
    assert cfg.data.modalities == ("rgb", "depth", "edges") and cfg.model.exchange_blocks is None
    assert cfg.train.optimizer == "adam"


@pytest.mark.parametrize(
    "updates, match",
    [({"train.lam": -1e-3}, "train.lam must be >= 0"),
     ({"model.threshold": -0.1}, "model.threshold must be >= 0"),
     ({"log.every": 0}, "log.every must be > 0"),
     ({"model.exchange": "swap"}, "model.exchange must be one of"),
     ({"train.sparsity": "half"}, "train.sparsity must be one of"),
     ({"train.l1_rule": "adamw"}, "train.l1_rule must be one of"),
     ({"data.modalities": ["rgb"]}, "needs M >= 2"),
     ({"train.lamda": 1.0}, "unknown config key 'train.lamda'.*did you mean 'lam'"),
     ({"trian.lam": 1.0}, "unknown config key 'trian'"),
     ({"train": 1.0}, "train is a section"),
     ({"train.steps": 1.5}, "train.steps must be an integer"),
     ({"train.lam": "abc"}, "cannot parse 'abc' for train.lam"),
     ({"model.exchange_blocks": [5]}, "model.exchange_blocks must be distinct block indices"),
     ({"data.source": "mnist"}, "data.source must be one of")],
)
def test_bad_values_name_the_field(tiny, updates, match):
    with pytest.raises(ConfigError, match=match):
        tiny.override(updates)


def test_from_dict_rejects_unknown_keys_at_any_depth():
    with pytest.raises(ConfigError, match="unknown config key 'data.scene.size'"):
        ExperimentConfig.from_dict({"data": {"scene": {"size": 3}}})
    with pytest.raises(ConfigError, match="unknown config key 'epochs'"):
        ExperimentConfig.from_dict({"epochs": 3})


def test_no_exchange_network_may_have_one_modality(tiny):
    cfg = tiny.override({"model.exchange": "none", "data.modalities": ["rgb"], "train.sparsity": "none"})
    assert cfg.data.modalities == ("rgb",)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        ExperimentConfig.preset("huge")


def test_a_config_written_before_lr_schedule_existed_reads_as_it_was_trained(tmp_path):
    # a run's config.json written in full by an older cen_lab has no train.lr_schedule: it trained at a constant rate
    old = ExperimentConfig.preset("collapse").to_dict()
    del old["train"]["lr_schedule"]
    assert ExperimentConfig.from_dict(old).train.lr_schedule == "constant"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    assert ExperimentConfig.from_json(str(path)) == ExperimentConfig.preset("collapse")
    # a partial dict is not an old file: it takes today's default
    assert ExperimentConfig.from_dict({"train": {"optimizer": "sgd"}}).train.lr_schedule == "cosine"
    assert ExperimentConfig.from_dict({}).train.lr_schedule == "cosine"
