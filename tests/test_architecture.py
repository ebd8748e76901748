"""The package's shape: imports run one way (views -> theory -> experiments -> runs -> network -> data -> config ->
base), no import circle, no module far past ~400 lines, and every documented name imports, under its old path too.

The import graph is read from the source (every ``import`` statement, also inside functions and ``TYPE_CHECKING``
blocks), so a new module placed in the wrong layer, or an import that climbs back up, fails here before it is run.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cen_lab"

# layer of each part of the package, lowest first: a module may import its own layer and the layers below it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("cen_lab.errors", "cen_lab._version", "cen_lab._moved", "cen_lab._util")),
    ("config", ("cen_lab.config",)),
    ("data", ("cen_lab.data",)),
    ("network", ("cen_lab.network",)),
    ("runs", ("cen_lab.runs",)),
    ("experiments", ("cen_lab.experiments", "cen_lab.integrations")),
    ("theory", ("cen_lab.theory",)),
    ("views", ("cen_lab.views",)),
    ("front", ("cen_lab", "cen_lab.__main__", "cen_lab.cli", "cen_lab.cli_lambda", "cen_lab.cli_bench", "cen_lab.zoo")),  # the package's face and the CLI
]
MAX_LINES = 420  # STYLE's ~400


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (a folder named like its import name)."""
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (the most specific module each statement names)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    root = name.split(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (here[: len(here) - node.level + 1] if node.level else [])
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for t in targets:
            if t == root or t.startswith(root + "."):
                while t not in modules and "." in t:  # an attribute of a module, or an old (aliased) path
                    t = t.rsplit(".", 1)[0]
                if t != name:
                    found.add(t)
    return found


def layer_of(name: str, layers=LAYERS) -> int | None:
    best = None
    for rank, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            exact_front = p == name
            if exact_front or (name.startswith(p + ".") and p != "cen_lab"):
                if best is None or len(p) > len(best[1]):
                    best = (rank, p)
    return None if best is None else best[0]


def layering_problems(package: Path, layers=LAYERS) -> list[str]:
    """Every import that climbs up a layer, every module in no layer, and every import circle of ``package``."""
    modules = module_files(package)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    problems = []
    for name in sorted(graph):
        rank = layer_of(name, layers)
        if rank is None:
            problems.append(f"{name} is in no layer: put it in a subpackage (see the README's map)")
            continue
        for dep in sorted(graph[name]):
            dep_rank = layer_of(dep, layers)
            if dep_rank is not None and dep_rank > rank:
                problems.append(f"{name} ({layers[rank][0]}) imports {dep} ({layers[dep_rank][0]}), a layer above it")
    # circles: depth-first search, reporting each back edge's loop
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                loop = stack[stack.index(d):] + [d]
                problems.append("import circle: " + " -> ".join(loop))
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return problems


def test_imports_run_one_way_and_never_in_a_circle():
    assert layering_problems(PACKAGE) == []


def test_no_module_is_far_past_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "cen_lab"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for folder in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return pkg


def test_the_check_finds_an_upward_import_a_circle_and_a_stray_module(tmp_path):
    pkg = _fake_package(tmp_path, {
        "network/blocks.py": "def f():\n    from ..runs.writer import W  # deferred, still counted\n",
        "runs/writer.py": "from ..network.blocks import f\n",
        "theory/a.py": "from .b import x\n",
        "theory/b.py": "from . import a\n",
        "helpers.py": "",
    })
    problems = layering_problems(pkg)
    assert any("cen_lab.network.blocks (network) imports cen_lab.runs.writer (runs)" in p for p in problems)
    assert any(p.startswith("import circle:") and "cen_lab.theory.a" in p and "cen_lab.theory.b" in p
               for p in problems)
    assert any(p.startswith("import circle:") and "cen_lab.runs.writer" in p for p in problems)
    assert "cen_lab.helpers is in no layer: put it in a subpackage (see the README's map)" in problems


def test_the_check_accepts_imports_that_run_down(tmp_path):
    pkg = _fake_package(tmp_path, {
        "views/plots.py": "from ..theory.formula import p\nfrom ..runs import Run\n",
        "theory/formula.py": "import cen_lab.network.blocks\n",
        "runs/__init__.py": "from .reader import Run\n",
        "runs/reader.py": "from ..config import C\nfrom .._util.atomic import w\n",
        "config.py": "", "_util/atomic.py": "", "network/blocks.py": "",
    })
    assert layering_problems(pkg) == []


# -- the documented names ---------------------------------------------------------------------------------------

FRONT = ["train", "observe", "import_checkpoints", "load_run", "sweep", "ExperimentConfig", "Observer", "Run",
         "sparsity_mask", "exchange", "CenLabError", "ConfigError", "DataFormatError", "NonFiniteLossError",
         "ObserveError", "RunExistsError", "RunFormatError", "__version__"]
PUBLIC_MODULES = ["exchange", "theory", "theorem", "plots", "widgets", "reports", "zoo", "fusion", "miscalibration",
                  "config", "data"]


def resolve(dotted: str):
    """Import the longest module prefix of ``dotted`` and get the rest as attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def documented_names() -> list[str]:
    """Every ``cen_lab.<dotted>`` name the README and the notebooks' code cells use."""
    texts = [(ROOT / "README.md").read_text(encoding="utf-8")]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        texts += ["".join(c["source"]) for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]
                  if c["cell_type"] == "code"]
    names = set()
    for text in texts:
        names |= set(re.findall(r"\bcen_lab(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
        for module, items in re.findall(r"from (cen_lab[\w.]*) import ([\w, ]+)", text):
            names |= {f"{module}.{n.strip()}" for n in items.split(",") if n.strip()}
    # the CLI's `python -m cen_lab` and a package-data path are not names
    return sorted(n for n in names if not n.endswith((".py", ".ipynb")))


def test_the_front_and_the_public_modules_import():
    import cen_lab

    for name in FRONT:
        assert getattr(cen_lab, name) is not None, name
    for module in PUBLIC_MODULES:
        assert importlib.import_module(f"cen_lab.{module}") is not None


@pytest.mark.parametrize("name", documented_names())
def test_every_name_the_readme_and_the_notebooks_use_resolves(name):
    assert resolve(name) is not None


def test_old_module_paths_are_the_moved_modules_themselves():
    from cen_lab._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    # the old paths' names, as code of before imported them
    from cen_lab.models import CENNet, ModalBatchNorm2d  # noqa: F401
    from cen_lab.observer import BNLayer, Observer, observe  # noqa: F401
    from cen_lab.plots.gammas import compute_gamma_snapshot  # noqa: F401
    from cen_lab.runlog import SCHEMA_VERSION, TABLES, Run, RunWriter, load_run, validate_table  # noqa: F401
    from cen_lab.theorem import calibration_summary, local_check_model, theorem_config  # noqa: F401
    from cen_lab.theory import attraction_probability
    from cen_lab.training import evaluate, prediction_names, train  # noqa: F401

    assert attraction_probability(0.0, 1.0) == 0.0
    import cen_lab.training as training
    import cen_lab.experiments.training as moved

    assert training.train is moved.train is importlib.import_module("cen_lab").train


def test_old_modules_are_attributes_of_the_package_without_an_import():
    # user code of before wrote `import cen_lab` then `cen_lab.models.CENNet`: a fresh interpreter, no other import
    code = ("import cen_lab\n"
            "net = cen_lab.models.CENNet(2, 3, 4, 'seg', cen_lab.config.ModelConfig(widths=(4,), strides=(1,)))\n"
            "assert cen_lab.plots.plot_gamma_trajectories and cen_lab.theorem.local_check_model\n"
            "assert cen_lab.zoo.ReferenceStyleCEN and cen_lab.runlog.load_run is cen_lab.load_run\n"
            "try:\n    cen_lab.no_such_module\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "module 'cen_lab' has no attribute 'no_such_module'"
