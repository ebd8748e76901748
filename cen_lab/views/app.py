"""The explorer as a standalone web app: ``notebooks/explorer.ipynb`` served by Voilà, without the notebook UI.

``serve_explorer(run_dirs)`` (and ``cen-lab explore RUN_DIR...``, ``make explore``) checks that every folder
holds a readable run, writes a copy of the explorer notebook with ``run_dirs`` injected (as papermill does), and
runs Voilà on it, listening on 127.0.0.1 only and asking for a token. Each browser tab gets its own kernel with
the same live ``cen_lab.widgets.explore`` that JupyterLab shows; Voilà hides the code cells.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Sequence

from ..errors import CenLabError

log = logging.getLogger(__name__)

__all__ = ["ExploreError", "explorer_notebook", "voila_command", "serve_explorer", "free_port"]

HOST = "127.0.0.1"  # never another interface: the app runs code on the machine of whoever opens it
# a Jupyter data folder holding the Voila template "cen_lab_app" (the "lab" template without CDN style sheets)
JUPYTER_DATA = Path(__file__).resolve().parent / "templates"
TEMPLATE = "cen_lab_app"


class ExploreError(CenLabError, ValueError):
    """A run folder the explorer app cannot show, or a Voilà that cannot start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def explorer_notebook(run_dirs: Sequence[str | Path], dest_dir: str | Path) -> Path:
    """Write ``dest_dir/explorer.ipynb``: the repository's explorer notebook with ``run_dirs`` (made absolute)
    injected after its parameters cell, so that it shows those runs and never trains one.

    Raises
    ------
    ExploreError
        No folders given, or a folder that holds no readable cen_lab run.
    """
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from .notebooks import validate_parameters
    from .reports import NOTEBOOK_DIR
    from .widgets import runs_under

    if not run_dirs:
        raise ExploreError("give at least one run folder (or a folder of runs), e.g. runs/")
    absolute = [str(Path(d).resolve()) for d in run_dirs]
    for d in absolute:
        try:
            runs_under(d)  # fails here, with the folder's name, rather than inside the page
        except (FileNotFoundError, ValueError) as e:
            raise ExploreError(str(e)) from None
    source = NOTEBOOK_DIR / "explorer.ipynb"
    parameters = validate_parameters(source, {"run_dirs": absolute, "progress": False})
    nb = parameterize_notebook(load_notebook_node(str(source)), parameters)  # papermill's reader adds empty tags
    dest = Path(dest_dir) / source.name
    nbformat.write(nb, dest)
    return dest


def voila_command(notebook: str | Path, port: int, token: str, open_browser: bool = False) -> list[str]:
    """The Voilà command line serving ``notebook`` on 127.0.0.1:``port`` behind ``token``."""
    return [sys.executable, "-m", "voila", str(notebook), f"--port={port}", f"--Voila.ip={HOST}",
            f"--Voila.token={token}", f"--Voila.open_browser={open_browser}", "--Voila.port_retries=0",
            f"--template={TEMPLATE}", "--theme=light"]


def serve_explorer(run_dirs: Sequence[str | Path], port: int = 8866, token: str | None = None,
                   open_browser: bool = False, echo: Callable[[str], None] = print) -> int:
    """Serve the explorer of ``run_dirs`` with Voilà until interrupted (Ctrl-C or SIGTERM); return its exit code.

    Parameters
    ----------
    run_dirs : run folders, or folders of runs (every run below them is offered in the run picker)
    port : TCP port on 127.0.0.1; 0 picks a free one
    token : the token the page asks for; default a new random one, printed in the URL
    open_browser : open the URL in this machine's browser
    """
    token = token or secrets.token_urlsafe(16)
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="cen_lab_explore_") as tmp:
        notebook = explorer_notebook(run_dirs, tmp)
        # Voilà's kernels start in the notebook's folder
        jupyter_path = os.pathsep.join(filter(None, [str(JUPYTER_DATA), os.environ.get("JUPYTER_PATH")]))
        proc = subprocess.Popen(voila_command(notebook, port, token, open_browser), cwd=tmp,
                                env={**os.environ, "JUPYTER_PATH": jupyter_path})
        echo(f"cen-lab explore: serving {len(run_dirs)} folder(s) at http://{HOST}:{port}/?token={token}  "
             "(Ctrl-C stops it)")
        main_thread = threading.current_thread() is threading.main_thread()
        # a SIGTERM also stops Voilà and removes the temporary notebook (handlers can only be set in the main thread)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
