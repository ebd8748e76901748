"""Integrations with the tools researchers already train in: ``lightning`` (a ``Trainer`` callback that observes a
``LightningModule``'s CEN). TensorBoard export is ``cen_lab.export`` (``cen_lab.runs.export``).

What it may import: runs, network and everything below them (the same layer as ``cen_lab.experiments``); each
integration imports its framework when it is imported, never before (they are optional extras).
"""
