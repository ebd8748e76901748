"""A run's checkpoints: ``checkpoints/step-<step>.pt``, plain dicts that ``torch.load(..., weights_only=True)`` reads
(the model's and the optimizer's state dicts, the step, the config as JSON, and a format marker)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from .._util.atomic import atomic_write_bytes
from ..config import ExperimentConfig
from ..errors import RunFormatError
from .schema import SCHEMA_VERSION

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "checkpoint_path"]

CHECKPOINT_FORMAT = "cen_lab.checkpoint"


def save_checkpoint(path: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config: ExperimentConfig) -> None:
    """Atomically save a plain-dict checkpoint that ``torch.load(..., weights_only=True)`` can read."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": json.dumps(config.to_dict(), sort_keys=True),
    }
    buf = io.BytesIO()  # serialised in memory first: a failed write is then an OSError of the file (RunWriteError)
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check that cen_lab wrote it."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunFormatError(f"{path}: no such checkpoint") from None
    except Exception as e:  # corrupt zip, pickle with forbidden globals, truncated file ...
        raise RunFormatError(f"{path}: not a readable cen_lab checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunFormatError(f"{path}: not a cen_lab checkpoint (no format marker {CHECKPOINT_FORMAT!r})")
    missing = [k for k in ("step", "model", "optimizer", "config") if k not in ckpt]
    if missing:
        raise RunFormatError(f"{path}: checkpoint lacks key {missing[0]!r}")
    return ckpt


def _checkpoint_steps(run_dir: Path) -> list[int]:  # sorted steps of the checkpoints in run_dir
    steps = []
    for p in (run_dir / "checkpoints").glob("step-*.pt"):
        try:
            steps.append(int(p.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return sorted(steps)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:09d}.pt"
