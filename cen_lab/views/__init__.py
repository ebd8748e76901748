"""Views: what people look at, built on the analyses below.

What lives here
---------------
- ``plots``: every figure as a ``compute_*`` / ``plot_*`` pair (matplotlib or plotly);
- ``widgets``: the ipywidgets explorer of one or many runs;
- ``app``: the explorer served as a Voila web app (``cen-lab explore``);
- ``notebooks``: running a notebook headlessly with checked parameters (papermill);
- ``reports``: the figure report (``make report``): notebooks, pages, figures and ``summary.json``;
- ``display``: showing a figure in a notebook or a report;
- ``templates``: the offline page template and the Voila app's.

What it may import: anything below it (theory, experiments, runs, network, data, config). Nothing imports views
but the command line and the package's front (``cen_lab``).
"""
