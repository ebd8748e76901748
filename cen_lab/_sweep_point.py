"""A sweep worker's training process (``cen_lab.sweeps._Trainer``).

``python -m cen_lab._sweep_point`` reads one JSON request per line on standard input,
``{"config": ..., "path": ..., "threads": ...}``, trains that run (resuming what is there) and answers with one
JSON line ``{"status": ..., "error": ...}``. It ends when its input closes (its worker is gone).
"""

import json
import sys

from cen_lab.sweeps import _train_one

if __name__ == "__main__":
    answers, sys.stdout = sys.stdout, sys.stderr  # anything else printed goes to stderr, not into the answers
    for line in sys.stdin:
        request = json.loads(line)
        result = _train_one(request["config"], request["path"], int(request["threads"]))
        answers.write(json.dumps({k: v for k, v in result.items() if k != "seconds"}) + "\n")
        answers.flush()
