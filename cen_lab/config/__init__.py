"""The description of a run: one frozen, validated ``ExperimentConfig`` with its sections (data, model, train, log).

What lives here
---------------
- ``sections``: the dataclasses, the presets, and the choices each field takes (``scenes``: the generator's
  parameters and the canonical datasets);
- ``validation``: the field checks and the dict <-> dataclass conversion (unknown keys refused, with a suggestion);
- ``overrides``: dotted-key changes (``--set train.lam=1e-3``, notebook parameters, ``override``).

What it may import: ``cen_lab.errors`` only. Everything else reads its section of a config, so the config sits
below every other subpackage and knows nothing of torch.
"""

from ..errors import ConfigError  # noqa: F401  (raised by every section; importable from here as before)
from .overrides import apply_overrides, dotted
from .sections import (ARCHS, MODEL_ARCHS, NORMS, CANONICAL_SCENES, COLLAPSE_TRAIN, EXCHANGE_BETWEEN, EXCHANGE_MODES, FUSIONS, L1_RULES, MODALITY_NAMES,
                       LR_SCHEDULES, OPTIMIZERS, PRECISIONS, PREDICTION_TASKS, PRESETS, SPARSITY_SCHEMES, TASKS, DataConfig,
                       ExperimentConfig, LogConfig, ModelConfig, SceneParams, TrainConfig, resolve_between)

__all__ = ["SceneParams", "DataConfig", "ModelConfig", "TrainConfig", "LogConfig", "ExperimentConfig", "PRESETS",
           "CANONICAL_SCENES", "ARCHS", "MODEL_ARCHS", "NORMS", "EXCHANGE_BETWEEN", "EXCHANGE_MODES", "FUSIONS", "L1_RULES", "MODALITY_NAMES",
           "OPTIMIZERS", "PRECISIONS", "PREDICTION_TASKS", "SPARSITY_SCHEMES", "TASKS", "apply_overrides", "dotted",
           "resolve_between", "COLLAPSE_TRAIN", "LR_SCHEDULES"]
