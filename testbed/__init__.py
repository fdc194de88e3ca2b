"""Orchestration: run specs, backends, CPU caps, run directories and the ``testbed`` CLI."""
__version__ = "0.1.0"
