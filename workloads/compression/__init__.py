"""Compression modules, one registry: ``create_source`` / ``create_server`` by name.

Importing this package registers every built-in module.
"""
from .base import Arrays, ServerPart, SourcePart
from .registry import CompressionConfig, ModuleSpec, available, create_server, create_source, get, modules
from . import cdc, crbq, entropic, feature_filter, identity, input_codecs, mcr2  # noqa: F401  (registration)
from .schedules import BudgetSchedule, schedule_for

__all__ = [
    "Arrays", "ServerPart", "SourcePart", "CompressionConfig", "ModuleSpec", "available", "create_server",
    "create_source", "get", "modules", "BudgetSchedule", "schedule_for",
]
