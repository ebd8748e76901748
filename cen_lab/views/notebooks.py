"""Run parameterised notebooks with papermill, after checking their parameters.

A notebook's ``parameters``-tagged cell is its signature (``name: type = literal  # help``). Unknown names and
values of the wrong type are rejected before any cell runs (papermill itself only warns), then papermill
executes the notebook; a failing cell raises ``NotebookExecutionError`` naming the notebook and the cell.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import CenLabError, ConfigError

__all__ = ["NotebookParameter", "NotebookParameterError", "NotebookExecutionError", "notebook_parameters",
           "validate_parameters", "run_notebook"]


class NotebookParameterError(CenLabError, ValueError):
    """An unknown parameter name or a value of the wrong type for a notebook."""


class NotebookExecutionError(CenLabError, RuntimeError):
    """A notebook cell raised; the partially executed notebook is kept at ``output``."""

    def __init__(self, notebook: Path, cell: int | None, ename: str, evalue: str, output: Path):
        self.notebook, self.cell, self.ename, self.evalue, self.output = notebook, cell, ename, evalue, output
        where = f"cell In [{cell}]" if cell is not None else "a cell"
        super().__init__(f"{notebook.name}: {where} failed with {ename}: {evalue} (executed notebook kept at {output})")


# -- notebook parameters --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotebookParameter:
    name: str
    default: Any
    help: str


def _read_notebook(path: Path):
    import nbformat

    if not path.is_file():
        raise NotebookParameterError(f"{path}: no such notebook")
    return nbformat.read(path, as_version=4)


def notebook_parameters(path: str | Path) -> dict[str, NotebookParameter]:
    """The parameters a notebook declares in its ``parameters``-tagged cell: ``name = literal  # help``."""
    path = Path(path)
    nb = _read_notebook(path)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise NotebookParameterError(f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}")
    source = cells[0].source
    lines = source.splitlines()
    params = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value = node.target.id, node.value
        else:
            raise NotebookParameterError(f"{path.name}: the parameters cell may hold only 'name = literal' lines")
        try:
            default = ast.literal_eval(value)
        except ValueError:
            raise NotebookParameterError(f"{path.name}: parameter {target!r} must have a literal default") from None
        line = lines[node.lineno - 1]
        help_text = line.split("#", 1)[1].strip() if "#" in line else ""
        params[target] = NotebookParameter(target, default, help_text)
    return params


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        return not default or all(_type_ok(v, default[0]) for v in value)
    return isinstance(value, type(default))


def _check_preset(value: Any) -> None:
    from ..config import PRESETS

    if value not in PRESETS:
        raise NotebookParameterError(f"parameter 'preset' must be one of {sorted(PRESETS)}, got {value!r}")


def _check_paths(value: Any) -> None:
    for p in [value] if isinstance(value, str) else value:
        if p and not Path(p).is_dir():
            raise NotebookParameterError(f"run directory {p!r} does not exist")


def _check_variants(value: Any) -> None:
    from ..experiments.fusion import VARIANTS

    unknown = [v for v in value if v not in VARIANTS]
    if unknown:
        raise NotebookParameterError(f"parameter 'variants': unknown variant {unknown[0]!r}; choose from {list(VARIANTS)}")


def _check_translation_variants(value: Any) -> None:
    from ..experiments.translation import TRANSLATION_VARIANTS

    unknown = [v for v in value if v not in TRANSLATION_VARIANTS]
    if unknown:
        raise NotebookParameterError(f"parameter 'translation_variants': unknown variant {unknown[0]!r}; choose "
                                     f"from {list(TRANSLATION_VARIANTS)}")


# parameters with a meaning across notebooks get a semantic check on top of the type check
_VALIDATORS: dict[str, Callable[[Any], None]] = {"preset": _check_preset, "run_dir": _check_paths,
                                                  "run_dirs": _check_paths, "variants": _check_variants,
                                                  "translation_variants": _check_translation_variants}


def validate_parameters(path: str | Path, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``parameters`` against the notebook's declared ones; return the full set (defaults filled in).

    Raises ``NotebookParameterError`` for an unknown name (with the closest valid one), a value whose type
    differs from the default's, an unknown preset, a missing run directory, or overrides the config rejects.
    """
    declared = notebook_parameters(path)
    name = Path(path).name
    for key, value in parameters.items():
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise NotebookParameterError(f"{name}: unknown parameter {key!r}{hint} (valid: {sorted(declared)})")
        default = declared[key].default
        if not _type_ok(value, default):
            raise NotebookParameterError(
                f"{name}: parameter {key!r} must be of type {type(default).__name__} like its default "
                f"{default!r}, got {value!r}")
        if key in _VALIDATORS:
            try:
                _VALIDATORS[key](value)
            except NotebookParameterError as e:
                raise NotebookParameterError(f"{name}: {e}") from None
    full = {k: p.default for k, p in declared.items()} | dict(parameters)
    if "overrides" in full and "preset" in full:
        from ..config import ExperimentConfig

        try:
            ExperimentConfig.preset(full["preset"]).override(full["overrides"])
        except ConfigError as e:
            raise NotebookParameterError(f"{name}: parameter 'overrides': {e}") from None
    return full


def run_notebook(path: str | Path, parameters: Mapping[str, Any] | None = None, out_dir: str | Path = ".", *,
                 progress_bar: bool = True, log_output: bool = False, kernel_name: str = "python3") -> Path:
    """Validate ``parameters``, then execute the notebook with papermill into ``out_dir/<name>``.

    The kernel runs in the notebook's folder with this Python. Training progress inside the notebook is
    printed as text (``CEN_LAB_PROGRESS=text``), which ``log_output=True`` echoes to the terminal, and the
    explorer shows still pictures instead of widgets (``CEN_LAB_HEADLESS=1``).

    Returns
    -------
    Path
        The executed notebook.

    Raises
    ------
    NotebookParameterError
        Before any cell runs.
    NotebookExecutionError
        Naming the notebook and the failing cell; the partially executed notebook is kept.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    path = Path(path)
    parameters = dict(parameters or {})
    validate_parameters(path, parameters)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / path.name
    # CEN_LAB_HEADLESS: no live frontend will ever show a widget (see widgets.Explorer)
    env = {"CEN_LAB_PROGRESS": "text", "CEN_LAB_HEADLESS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        papermill.execute_notebook(str(path), str(output), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(path.parent), progress_bar=progress_bar, log_output=log_output)
    except PapermillExecutionError as e:
        raise NotebookExecutionError(path, e.exec_count, e.ename, e.evalue, output) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return output
