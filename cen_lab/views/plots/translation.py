"""The translation figure: a grid of example outputs of a translation run (each input domain, the target, each
domain's output and the ensemble), one row per validation image
(``cen_lab.experiments.translation.translation_examples``)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ._common import check_backend, mpl_figure, takes

__all__ = ["compute_translation_examples", "plot_translation_examples"]


def _rgb(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> ``[H, W, 3]`` (one channel repeated as grey)."""
    image = np.clip(np.asarray(image, dtype=float), 0.0, 1.0)
    return np.repeat(image, 3, 0).transpose(1, 2, 0) if image.shape[0] == 1 else image[:3].transpose(1, 2, 0)


def compute_translation_examples(run, samples: Sequence[int] = (0, 1, 2, 3), step: int | None = None) -> pd.DataFrame:
    """The frame of ``plot_translation_examples``: one row per validation image and panel, with ``sample`` (the
    index into the validation split), ``panel`` (``input: rgb``, ..., ``target``, then each branch's output ``from rgb``, ... and ``ensemble``),
    ``kind`` (``input``, ``target``, ``prediction``), ``image`` (``[H, W, 3]`` float in [0, 1]), ``l1`` (the
    panel's mean absolute difference to the target; NaN for the inputs and the target) and ``step`` (the checkpoint)."""
    from ...experiments.translation import translation_examples

    ex = translation_examples(run, samples, step)
    rows = []
    for i, sample in enumerate(samples):
        target = ex["target"][i]
        panels: list[tuple[str, str, Any]] = [(f"input: {m}", "input", a[i]) for m, a in ex["inputs"].items()]
        panels.append(("target", "target", target))
        panels += [(name if name == "ensemble" else f"from {name}", "prediction", p[i])
                   for name, p in ex["predictions"].items()]
        for panel, kind, image in panels:
            l1 = float(np.abs(image - target).mean()) if kind == "prediction" else float("nan")
            rows.append({"sample": int(sample), "panel": panel, "kind": kind, "image": _rgb(image), "l1": l1,
                         "step": int(ex["step"])})
    return pd.DataFrame(rows)


@takes("compute_translation_examples", ("sample", "panel", "kind", "image", "l1", "step"))
def plot_translation_examples(frame: pd.DataFrame, *, title: str | None = None, backend: str = "matplotlib",
                              panel_size=(1.6, 1.75)):
    """Rows: validation images; columns: the inputs, the target, then each prediction, titled with its L1 to the
    target. Images are drawn as they are (no rescaling), so the panels compare directly."""
    check_backend(backend)
    if frame.empty:
        raise ValueError("no example images to plot")
    panels = list(dict.fromkeys(frame["panel"]))
    samples = list(dict.fromkeys(frame["sample"]))
    cell = frame.set_index(["sample", "panel"])
    title = title or f"Translation examples (validation images, checkpoint of step {int(frame['step'].iloc[0])})"

    def label(s, p) -> str:
        l1 = cell.loc[(s, p), "l1"]
        return p if np.isnan(l1) else f"{p}\nL1 {l1:.3f}"

    if backend == "plotly":
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        titles = [label(s, p).replace("\n", "<br>") for s in samples for p in panels]
        fig = make_subplots(rows=len(samples), cols=len(panels), subplot_titles=titles,
                            horizontal_spacing=0.01, vertical_spacing=0.06)
        for r, s in enumerate(samples, 1):
            for c, p in enumerate(panels, 1):
                image = np.round(cell.loc[(s, p), "image"] * 255).astype(np.uint8)
                fig.add_trace(go.Image(z=image, name=f"image {s}, {p}"), row=r, col=c)
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.update_annotations(font_size=10)
        fig.update_layout(title=title, height=110 + 150 * len(samples), width=110 * len(panels) + 60,
                          template="plotly_white", margin=dict(t=90, l=10, r=10, b=10))
        return fig
    fig, axes = mpl_figure(len(samples), len(panels), panel_size)
    for r, s in enumerate(samples):
        for c, p in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(cell.loc[(s, p), "image"], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label(s, p), fontsize=8)
        axes[r, 0].set_ylabel(f"image {s}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig
