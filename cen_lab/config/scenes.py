"""The scene generator's parameters and the canonical datasets made from them (split from ``sections``, which
validates ``data.source`` against their names)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .validation import _choice, _positive

__all__ = ["TASKS", "SceneParams", "CANONICAL_SCENES"]

TASKS = ("seg", "cls")  # what a dataset's labels are for


@dataclass(frozen=True)
class SceneParams:
    """Parameters of the procedural RGB-D-like scene generator (``cen_lab.data.scenes``).

    Object classes combine a *material* (seen only in rgb) with a *geometry* (seen only in depth), so
    neither modality alone identifies the class; camouflaged scenes hide object outlines in rgb.
    """

    task: str = "seg"  # "seg": per-pixel labels; "cls": label of the largest object
    image_size: int = 32  # height = width, pixels
    num_classes: int = 5  # including background (class 0)
    n_train: int = 512
    n_val: int = 128
    max_objects: int = 3  # objects per scene, uniform in 1..max_objects
    rgb_noise: float = 0.08  # std of additive Gaussian noise, in [0, 1] intensity units
    depth_noise: float = 0.05
    edges_noise: float = 0.1
    depth_dropout: float = 0.02  # fraction of depth pixels lost (set to 0), as in real sensors
    camouflage: float = 0.3  # probability that a scene's background takes one material's colour
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("data.scene.task", self.task, TASKS)
        if self.image_size < 8:
            raise ConfigError(f"data.scene.image_size must be >= 8, got {self.image_size}")
        if not 3 <= self.num_classes <= 17:
            raise ConfigError(f"data.scene.num_classes must be in 3..17, got {self.num_classes}")
        _positive("data.scene.n_train", self.n_train)
        _positive("data.scene.n_val", self.n_val)
        _positive("data.scene.max_objects", self.max_objects)
        for name in ("rgb_noise", "depth_noise", "edges_noise"):
            _positive(f"data.scene.{name}", getattr(self, name), strict=False)
        for name in ("depth_dropout", "camouflage"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"data.scene.{name} must be in [0, 1], got {value!r}")


# the canonical datasets committed in data/, by name (written and read by cen_lab.data.canonical): here, below the
# data package, because DataConfig validates data.source against their names
CANONICAL_SCENES: dict[str, SceneParams] = {
    "scenes-seg": SceneParams(task="seg", image_size=32, num_classes=5, n_train=512, n_val=128, seed=0),
    "scenes-cls": SceneParams(task="cls", image_size=32, num_classes=5, n_train=256, n_val=128, seed=1),
}
