"""Theorem 1 and Corollary 1 of the CEN paper, checked against controlled channels and trained networks.

What lives here
---------------
- ``formula``: the statement (``attraction_probability``), its statistics (intervals, calibration scores) and the
  checks where its assumptions hold by construction; its names are re-exported here, so
  ``cen_lab.theory.attraction_probability`` is the formula;
- ``networks``: the networks the checks train (exchange off) and how they are trained;
- ``local_checks``: each penalised gamma set to 0 in a trained network (cen_lab's or yours), ``dL/dgamma`` and
  ``||dL/dx'||`` measured, the prediction scored; the outcome at the end of training;
- ``corollary``: Corollary 1 (fine-tuning with and without exchange);
- ``verdicts``: the verdict table with each number's interval and regime;
- ``regimes``: the checks repeated for momentum 0 and 0.9 on both architectures;
- ``miscalibration``: why the prediction is miscalibrated, a check of its Gaussian form (a) and a corrected prediction (b), scored on held-out data;
- ``zoo_check``: the local check on the zoo's reference-style example.

What it may import: experiments, runs, network and everything below them; never views.
"""

from .formula import *  # noqa: F401,F403  (the formula module is this package's face: cen_lab.theory.<name>)
from .formula import __all__  # noqa: F401
