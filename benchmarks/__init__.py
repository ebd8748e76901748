"""Benchmarks of cen_lab: ``python -m benchmarks`` or ``make bench`` (see README.md here)."""
