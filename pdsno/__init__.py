"""PDSNO: Partially Distributed Software-Defined Network Orchestrator."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pdsno")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
