"""The version of cen_lab (one place, read by the package, the manifests and the reports)."""

__version__ = "0.1.0"
