"""The explorer web app's set-up (cen_lab.app); the browser test in test_browser.py serves and opens it."""

import shutil
import subprocess
import sys

import nbformat
import pytest

from cen_lab.views.app import HOST, ExploreError, explorer_notebook, free_port, voila_command
from cen_lab.cli import main
from cen_lab.views.reports import obtain_runs


def test_the_app_notebook_is_the_explorer_with_the_runs_injected(tiny_run, tmp_path):
    path = explorer_notebook([tiny_run.path], tmp_path)
    nb = nbformat.read(path, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f'run_dirs = ["{tiny_run.path.resolve()}"]' in injected[0].source
    assert "progress = False" in injected[0].source
    # everything else is the committed explorer notebook, cell for cell
    committed = nbformat.read("notebooks/explorer.ipynb", as_version=4)
    assert [c.source for c in nb.cells if c not in injected] == [c.source for c in committed.cells]


def test_the_app_refuses_folders_without_runs_before_serving(tmp_path, capsys):
    with pytest.raises(ExploreError, match="at least one run folder"):
        explorer_notebook([], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExploreError, match="no cen_lab run in"):
        explorer_notebook([tmp_path / "empty"], tmp_path)
    assert main(["explore", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_voila_listens_on_loopback_only_behind_a_token(tmp_path):
    cmd = voila_command(tmp_path / "explorer.ipynb", 8123, "secret")
    assert HOST == "127.0.0.1" and f"--Voila.ip={HOST}" in cmd and "--Voila.token=secret" in cmd
    assert "--port=8123" in cmd and "--Voila.open_browser=False" in cmd and "--template=cen_lab_app" in cmd
    import socket

    port = free_port()
    with socket.socket() as sock:  # free indeed: a server can listen on it on the loopback address
        sock.bind((HOST, port))
        sock.listen()
        assert sock.getsockname() == (HOST, port)


def test_the_app_template_loads_nothing_from_a_cdn():
    from cen_lab.views.app import JUPYTER_DATA, TEMPLATE

    page = (JUPYTER_DATA / "voila" / "templates" / TEMPLATE / "index.html.j2").read_text()
    assert "extends 'lab/index.html.j2'" in page and "https://" not in page.split("-#}", 1)[1]


def test_run_dirs_may_be_folders_of_runs(tiny_run, tmp_path):
    shutil.copytree(tiny_run.path, tmp_path / "sweep" / "seed=0")
    shutil.copytree(tiny_run.path, tmp_path / "sweep" / "seed=1")
    shutil.copytree(tiny_run.path, tmp_path / "other" / "seed=0")
    runs = obtain_runs(run_dirs=[str(tmp_path / "sweep"), str(tiny_run.path), str(tmp_path / "other")])
    # labels relative to the folder given; the full path where a label repeats
    assert list(runs) == ["seed=0", "seed=1", tiny_run.path.name, str(tmp_path / "other" / "seed=0")]


def test_explore_command_is_listed():
    out = subprocess.run([sys.executable, "-m", "cen_lab", "explore", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "127.0.0.1" in out.stdout and "RUN_DIR" in out.stdout
