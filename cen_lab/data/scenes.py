"""Procedural RGB-D-like scenes in which neither modality alone suffices.

Each object class is a pair (material, geometry):

- the **material** is a colour; it is visible only in ``rgb`` (objects are flat-shaded, so rgb shows no shape);
- the **geometry** is a height profile (box, dome, cone, wedge); it is visible only in ``depth``
  (a height map over a tilted ground plane; depth carries no colour);
- the footprint (disc or square) is drawn independently of the class, so outlines carry no class
  information either.

So rgb alone cannot tell a red box from a red dome, depth alone cannot tell a red box from a blue box, and
with probability ``camouflage`` the background takes the colour of one of the materials, which hides the
outlines of those objects in rgb (depth still shows them). A third modality, ``edges``, shows the
class-agnostic object boundaries (for M = 3 experiments).

A fourth array, ``shade``, is the target of the translation task (``cen_lab.network.tasks``): the scene rendered
with Lambertian shading, ``albedo * (AMBIENT + (1 - AMBIENT) * max(0, n . LIGHT))``, from the noise-free colours
(the albedo that rgb shows with noise) and the surface normals of the noise-free height map (the shape that depth
shows with noise and holes). Neither input alone determines it: rgb has no shape, depth no colour (the toy
analogue of the TPAMI paper's shade + texture -> RGB). It is computed without drawing from the generator, so the
other arrays are the same bit for bit as before it existed.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``SceneParams.seed`` in a fixed order,
and arrays are quantised to uint8, so the same parameters give bit-identical arrays.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import MODALITY_NAMES, SceneParams

__all__ = ["MATERIALS", "GEOMETRIES", "MODALITY_CHANNELS", "TARGET_CHANNELS", "class_names", "class_grid",
           "shade_scene", "generate_scenes", "draw_scenes"]

# name -> rgb colour in [0, 1]
MATERIALS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.20, 0.20),
    "blue": (0.20, 0.30, 0.80),
    "green": (0.20, 0.70, 0.30),
    "yellow": (0.85, 0.80, 0.20),
}
GEOMETRIES = ("box", "dome", "cone", "wedge")
MODALITY_CHANNELS = {"rgb": 3, "depth": 1, "edges": 1}
TARGET_CHANNELS = {"shade": 3}  # arrays made to be predicted (translation targets), not fed as input by default
LIGHT = np.array([-1.0, -1.0, 1.5]) / np.sqrt(4.25)  # (x, y, z) direction towards the light: from the top left
AMBIENT = 0.3  # the shade of a surface facing away from the light, relative to its albedo
RELIEF = 0.25  # a height change of 1 (heights are [0, 1] intensities) rises RELIEF * image side pixels


def class_grid(num_classes: int) -> list[tuple[int, int]]:
    """(material index, geometry index) of each object class 1..num_classes-1."""
    k = num_classes - 1
    n_mat = math.ceil(math.sqrt(k))
    return [(c % n_mat, c // n_mat) for c in range(k)]


def class_names(num_classes: int) -> list[str]:
    """Human-readable class names; class 0 is the background."""
    mats, geos = list(MATERIALS), GEOMETRIES
    return ["background"] + [f"{mats[m]} {geos[g]}" for m, g in class_grid(num_classes)]


def _profile(geometry: int, rho: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Relative height in [0.3, 1] inside the footprint; rho in [0, 1] is the normalised distance to the centre,
    u in [-1, 1] the normalised horizontal offset. The 0.3 floor keeps a step at every outline in depth."""
    if geometry == 0:  # box: flat top
        shape = np.ones_like(rho)
    elif geometry == 1:  # dome
        shape = np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))
    elif geometry == 2:  # cone
        shape = 1.0 - rho
    else:  # wedge: height rises left to right
        shape = (u + 1.0) / 2.0
    return 0.3 + 0.7 * np.clip(shape, 0.0, 1.0)


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def shade_scene(albedo: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Lambertian rendering ``[3, H, W]`` in [0, 1] of an albedo ``[3, H, W]`` over a height map ``[H, W]``.

    The normal of the surface ``z = height * RELIEF * H`` (in pixel units) is dotted with ``LIGHT``; the shade
    is ``albedo * (AMBIENT + (1 - AMBIENT) * max(0, n . LIGHT))``.
    """
    z = height * (RELIEF * height.shape[0])
    dz_dy, dz_dx = np.gradient(z)
    normal = np.stack([-dz_dx, -dz_dy, np.ones_like(z)])
    normal /= np.linalg.norm(normal, axis=0, keepdims=True)
    lit = np.clip(np.tensordot(LIGHT, normal, axes=1), 0.0, None)
    return np.clip(albedo, 0.0, 1.0) * (AMBIENT + (1.0 - AMBIENT) * lit)[None]


def generate_scenes(params: SceneParams) -> dict[str, np.ndarray]:
    """Generate ``params.n_train + params.n_val`` scenes.

    Parameters
    ----------
    params : SceneParams
        Generator settings (size, classes, noise, camouflage, seed).

    Returns
    -------
    dict of numpy arrays
        ``rgb`` uint8 ``[N, 3, H, W]``, ``depth`` uint8 ``[N, 1, H, W]``, ``edges`` uint8 ``[N, 1, H, W]``
        (intensity = value / 255); ``labels`` uint8 ``[N, H, W]`` for ``task="seg"`` or ``[N]`` for
        ``task="cls"`` (the class of the object with the most visible pixels); ``shade`` uint8 ``[N, 3, H, W]``
        (the translation target, see the module docstring); ``split`` uint8 ``[N]``,
        0 for the first ``n_train`` (train) and 1 for the rest (validation).
    """
    arrays = draw_scenes(params, params.n_train + params.n_val, np.random.default_rng(params.seed))
    arrays["split"] = np.repeat(np.array([0, 1], np.uint8), [params.n_train, params.n_val])
    return arrays


def draw_scenes(params: SceneParams, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw ``n`` scenes of ``params`` (all but its sizes and seed) from ``rng``, in order.

    ``generate_scenes`` draws its ``n_train + n_val`` scenes with this from ``default_rng(params.seed)``;
    ``cen_lab.data.pool`` draws each chunk of a training pool from a generator of its own.

    Returns
    -------
    dict of numpy arrays
        As ``generate_scenes`` without ``split``.
    """
    s = params.image_size
    grid = class_grid(params.num_classes)
    palette = np.array(list(MATERIALS.values()), dtype=np.float64)  # (4, 3)
    yy, xx = np.meshgrid(np.arange(s, dtype=np.float64), np.arange(s, dtype=np.float64), indexing="ij")

    rgb = np.empty((n, 3, s, s), np.uint8)
    depth = np.empty((n, 1, s, s), np.uint8)
    edges = np.empty((n, 1, s, s), np.uint8)
    shade = np.empty((n, 3, s, s), np.uint8)
    seg = np.zeros((n, s, s), np.uint8)
    cls = np.zeros(n, np.uint8)

    for i in range(n):
        n_obj = int(rng.integers(1, params.max_objects + 1))
        classes = rng.integers(1, params.num_classes, size=n_obj)
        # background: grey-ish colour with a low-frequency tint, or camouflage in one object's material colour
        if rng.random() < params.camouflage:
            bg_colour = palette[grid[int(rng.choice(classes)) - 1][0]]
        else:
            bg_colour = rng.uniform(0.35, 0.65, size=3)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        tint = 0.05 * np.sin(2 * np.pi * xx / s + phase[0]) * np.cos(2 * np.pi * yy / s + phase[1])
        img = bg_colour[:, None, None] + tint[None]  # (3, H, W)
        slope = rng.uniform(-0.1, 0.1, size=2)
        ground = 0.15 + slope[0] * (xx / s - 0.5) + slope[1] * (yy / s - 0.5)  # tilted ground plane, (H, W)
        height = ground.copy()
        label = np.zeros((s, s), np.uint8)
        instance = np.zeros((s, s), np.int32)

        for j, c in enumerate(classes):
            material, geometry = grid[int(c) - 1]
            radius = rng.uniform(0.15, 0.3) * s
            cy, cx = rng.uniform(radius * 0.5, s - radius * 0.5, size=2)
            square = rng.random() < 0.5
            peak = rng.uniform(0.35, 0.8)
            jitter = rng.uniform(-0.05, 0.05, size=3)
            dy, dx = (yy - cy) / radius, (xx - cx) / radius
            rho = np.maximum(np.abs(dx), np.abs(dy)) if square else np.sqrt(dx**2 + dy**2)
            inside = rho <= 1.0
            # later objects occlude earlier ones (painter's order) in every modality
            img[:, inside] = (palette[material] + jitter)[:, None]
            height[inside] = ground[inside] + peak * _profile(geometry, rho[inside], dx[inside])
            label[inside] = c
            instance[inside] = j + 1

        boundary = np.zeros((s, s), bool)
        boundary[:, 1:] |= instance[:, 1:] != instance[:, :-1]
        boundary[1:, :] |= instance[1:, :] != instance[:-1, :]

        shade[i] = _quantise(shade_scene(img, height))  # noise-free colours and shape; draws nothing
        img = img + rng.normal(0.0, params.rgb_noise, size=img.shape)
        height = height + rng.normal(0.0, params.depth_noise, size=height.shape)
        height[rng.random(size=height.shape) < params.depth_dropout] = 0.0  # sensor holes
        edge = boundary.astype(np.float64) + rng.normal(0.0, params.edges_noise, size=boundary.shape)

        rgb[i] = _quantise(img)
        depth[i, 0] = _quantise(height)
        edges[i, 0] = _quantise(edge)
        seg[i] = label
        visible = np.bincount(label.ravel(), minlength=params.num_classes)[1:]
        cls[i] = 1 + int(np.argmax(visible))

    out = {"rgb": rgb, "depth": depth, "edges": edges}
    assert tuple(out) == MODALITY_NAMES
    out["shade"] = shade
    out["labels"] = seg if params.task == "seg" else cls
    return out
