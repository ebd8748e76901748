"""Showing figures in Jupyter without pyplot.

IPython renders a matplotlib figure as an image only after pyplot has set up the inline backend; cen_lab's
figures are built without pyplot, so they are shown through an explicit PNG bundle instead.
"""

from __future__ import annotations

import base64
import io
from typing import Any

__all__ = ["display_figure", "figure_mimebundle"]


def figure_mimebundle(fig: Any, dpi: int = 110) -> dict[str, str]:
    """``{"image/png": base64, "text/plain": ...}`` for a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": repr(fig)}


def display_figure(fig: Any) -> None:
    """Display a matplotlib figure as a PNG, or any other object as IPython would."""
    from IPython.display import display

    if type(fig).__module__.startswith("matplotlib"):
        display(figure_mimebundle(fig), raw=True)
    else:
        display(fig)
