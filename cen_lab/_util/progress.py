"""Progress bars: tqdm, notebook-aware in a live kernel, plain text when notebooks run headless.

``CEN_LAB_PROGRESS=text`` (set by ``cen_lab.views.notebooks`` for papermill runs) gives plain-text bars every few
seconds: papermill's log shows text but not widgets, and a widget bar saved in an executed notebook renders as an
empty box in its HTML page.
"""

from __future__ import annotations

import os
import sys


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)``, as a widget in a live notebook and as text when ``CEN_LAB_PROGRESS=text``."""
    if os.environ.get("CEN_LAB_PROGRESS") == "text":
        from tqdm.std import tqdm

        kwargs = {"mininterval": 3.0, "ascii": True, "file": sys.stdout, **kwargs}
        return tqdm(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
