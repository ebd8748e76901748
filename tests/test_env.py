"""The set-up routes (Makefile/pip, environment.yml/conda, CI) install the same requirements."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_reads_the_requirement_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"]["file"] == ["requirements.txt"]
    # the tests drive JupyterLab, Voila, Dask, TensorBoard and Lightning, so the dev extra takes those files too
    assert dynamic["optional-dependencies"]["dev"]["file"] == ["requirements-dev.txt", "requirements-lab.txt",
                                                               "requirements-cluster.txt", "requirements-tensorboard.txt",
                                                               "requirements-lightning.txt"]
    assert dynamic["optional-dependencies"]["tensorboard"]["file"] == ["requirements-tensorboard.txt"]
    assert dynamic["optional-dependencies"]["lightning"]["file"] == ["requirements-lightning.txt"]
    assert project["project"]["scripts"]["cen-lab"] == "cen_lab.cli:main"


def test_environment_yml_installs_the_same_package_and_constraints():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-c constraints.txt" in pip_section and "-e .[dev]" in pip_section
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = map(int, python.split("=")[1].split(".")[:2])
    low = tuple(map(int, re.search(r">=\s*(\d+)\.(\d+)", required).groups()))
    assert (major, minor) >= low


def test_makefile_uses_the_same_install_and_ci_the_same_test_command():
    makefile = (ROOT / "Makefile").read_text()
    assert '-c constraints.txt -e ".[dev]"' in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.rstrip().endswith("make test")
    # CI installs the browser when it is missing and refuses to skip the browser tests
    assert "apt-get install -y -qq chromium chromium-driver" in ci and "export CEN_LAB_REQUIRE_BROWSER=1" in ci
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make report" in readme


def test_torch_is_pinned_in_the_constraints():
    lines = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    assert "torch==2.13.0" in lines
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch\b", requirements, re.M)


def test_make_lab_adds_allow_root_exactly_when_root():
    import os
    import subprocess

    proc = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    launch = [line for line in proc.stdout.splitlines() if "jupyter lab" in line]
    assert launch, proc.stdout
    assert ("--allow-root" in launch[0]) == (os.getuid() == 0)


def test_make_explore_serves_the_runs_folder():
    import subprocess

    proc = subprocess.run(["make", "-n", "explore", "RUNS=runs/a runs/b"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert any(line.endswith("cen-lab explore runs/a runs/b ") or line.endswith("cen-lab explore runs/a runs/b")
               for line in proc.stdout.splitlines()), proc.stdout
