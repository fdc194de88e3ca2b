"""Compression modules, one registry: ``create_source`` / ``create_server`` by name.

Importing this package registers every module: each file of this folder other than
the shared machinery below registers its own (a new module is one new file).
"""
import importlib
import pkgutil

from .base import Arrays, ServerPart, SourcePart
from .registry import (CompressionConfig, ModuleSpec, available, create_server, create_source, get, modules,
                       schedule_for)
from .schedules import BudgetSchedule

MACHINERY = {"base", "registry", "schedules", "shipping"}  # shared by the modules, registers nothing

for _found in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _found.name not in MACHINERY:
        importlib.import_module(f"{__name__}.{_found.name}")

__all__ = [
    "Arrays", "ServerPart", "SourcePart", "CompressionConfig", "ModuleSpec", "available", "create_server",
    "create_source", "get", "modules", "BudgetSchedule", "schedule_for",
]
