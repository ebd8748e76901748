"""Helpers that every layer may use: atomic file writes (``atomic``), progress bars that stay text under headless
notebook runs (``progress``), and glibc's malloc thresholds for training (``malloc``).

What it may import: the standard library, ``cen_lab.errors`` and third-party packages; nothing else of cen_lab.
"""
