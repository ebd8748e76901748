"""The network: what a CEN is made of, independent of how it is trained or logged.

What lives here
---------------
- ``blocks``: the shared convolution, the per-branch BatchNorm, and the exchanging blocks built from them;
- ``exchange``: the channel exchange itself (``channel_exchange``), its donor rules and branch grids;
- ``penalty``: which gammas carry the L1 penalty (``sparsity_mask``, the reference's alternate halves) and the two
  ways of applying it;
- ``layouts``: where the gammas are in any model (cen_lab's, the reference code's ``bn_0 ... bn_{M-1}``, a list);
- ``hooks``: ``||dL/dx'||`` of a BN output through a hook that a context manager removes;
- ``tasks``: what each task head predicts, its loss and its metric;
- ``architectures``: cen_lab's ``CENNet`` (``plain`` and ``bottleneck``) and ``build_model``;
- ``zoo``: a CEN in the reference code's layout (a foreign model, for ``observe`` and the import).

What it may import: ``cen_lab.errors``, ``cen_lab._util``, ``cen_lab.config``, ``cen_lab.data``. Nothing here
knows about run directories, training loops or figures.
"""
