"""Experiments: training cen_lab's own networks and measuring what they do, run by run and across runs.

What lives here
---------------
- ``training``: ``train(config)``, the loop (it reads the config once and hands each part its section);
- ``evaluation``: every prediction's validation loss and metric, and their names;
- ``precision``: the bf16 opt-in and ``compare_precisions``;
- ``sweeps``: ``sweep``, grids of runs in parallel (loky or Dask), resumable;
- ``regime``: the one-line regime every number is stated in (preset, architecture, steps, lam, optimiser);
- ``analysis``: per-run summaries of the logged tables;
- ``fusion``: the fusion benchmark (CEN against baselines and ablations, Welch intervals);
- ``learning_curves``: validation curves and when the exchange settles;
- ``zoo_example``: the zoo's reference-style CEN trained by a plain hand-written loop under ``observe``.

What it may import: runs, network and everything below them; never theory or views.
"""
