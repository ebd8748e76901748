"""Part ``startup`` (issue 34, item 10): what a command costs before it does anything, as a ratio to
``python -c "import torch"`` timed alternately in the same run (fresh interpreters each time).

- ``cli_help_over_torch_import``: ``cen-lab --help`` (``python -m cen_lab --help``); goal <= 0.3, so help needs no
  torch;
- ``cli_config_over_torch_import``: ``cen-lab config --preset tiny``; goal <= 0.3;
- ``import_cen_lab_over_torch_import``: ``python -c "import cen_lab"``; goal <= 1.2 (the front's names are
  imported on first use).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = {"torch": ["-c", "import torch"], "help": ["-m", "cen_lab", "--help"],
            "config": ["-m", "cen_lab", "config", "--preset", "tiny"], "import": ["-c", "import cen_lab"]}


def _seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_startup(repeats: int = 7, warmup: int = 1) -> dict:
    for _ in range(warmup):  # the OS's file cache holds the modules afterwards, for every command alike
        for args in COMMANDS.values():
            _seconds(args)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for i in range(repeats):
        order = list(COMMANDS)[i % len(COMMANDS):] + list(COMMANDS)[:i % len(COMMANDS)]  # rotating order
        for name in order:
            times[name].append(_seconds(COMMANDS[name]))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"cli_help_over_torch_import": med["help"] / med["torch"],
            "cli_config_over_torch_import": med["config"] / med["torch"],
            "import_cen_lab_over_torch_import": med["import"] / med["torch"],
            "startup_seconds": med}
