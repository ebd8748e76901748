"""A sweep worker's training process (``cen_lab.experiments.sweeps._Trainer``).

``python -m cen_lab.experiments._sweep_point [--die-with-parent]`` reads one JSON request per line on standard input,
``{"config": ..., "path": ..., "threads": ...}``, trains that run (resuming what is there) and answers with one
JSON line ``{"status": ..., "error": ...}``. It ends when its input closes (its worker is gone).
"""

import json
import sys


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the thread that started it dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import os
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child outlives a killed worker until its input closes
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


if __name__ == "__main__":
    if "--die-with-parent" in sys.argv:
        _die_with_parent()
    answers, sys.stdout = sys.stdout, sys.stderr  # anything else printed goes to stderr, not into the answers
    try:
        from cen_lab.experiments.sweeps import _train_one

        for line in sys.stdin:
            request = json.loads(line)
            result = _train_one(request["config"], request["path"], int(request["threads"]))
            answers.write(json.dumps({k: v for k, v in result.items() if k != "seconds"}) + "\n")
            answers.flush()
    except KeyboardInterrupt:  # an interrupt of the process group (a Jupyter kernel shutting down, Ctrl-C): the
        sys.exit(130)  # parent says what was stopped; a traceback of the idle loop here would only look like an error
