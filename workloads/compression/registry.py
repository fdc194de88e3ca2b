"""The registry of compression modules: a name -> everything known about the module.

A module's file declares its knobs (``workloads.option.knob``) and registers one
:class:`ModuleSpec` per name: the source and server parts, the paper, whether it
compresses the input itself, its budget schedule, the level ``--adapt`` may change
during a run, its server part's learning-rate scale, what runs where, and its
deviations from its paper. Nothing outside a module's file branches on its name.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

from ..option import Option
from .base import ServerPart, SourcePart
from .schedules import BudgetSchedule, Phases, parse_schedule


@dataclass(frozen=True)
class Levels:
    """What ``--adapt`` may change while a module runs (``workloads/adapt.py``): its level,
    whose source part implements ``set_level`` and ``level_bytes``."""
    name: str                                         # as decisions and figures name it ("budget")
    default: Callable[[dict, int], tuple[int, ...]]   # (settings by dest, maps at the cut) -> the levels (check orders them)
    low: int                                          # the smallest value allowed
    high: int | None = None                           # the largest (None: the maps at the cut)
    descending: bool = False                          # a larger value compresses more (cdc's mask number)

    def check(self, values, maps: int) -> tuple[int, ...]:
        """``values`` in order of compression, most first; a ValueError names a value out of range."""
        high = self.high if self.high is not None else maps
        for value in values:
            if not self.low <= value <= high:
                raise ValueError(f"--adapt-levels: {self.name} {value} is not in {self.low}..{high}")
        if len(set(values)) < 2:
            raise ValueError(f"--adapt-levels needs at least two different values of the {self.name}, got "
                             f"{','.join(map(str, values)) or 'nothing'}")
        return tuple(sorted(set(values), reverse=self.descending))


@dataclass(frozen=True)
class Deviation:
    """One way a module differs from the paper it names: what the paper does, what this
    module does instead, and why (`testbed modules` and the README's table show them, so a
    reader sees how every arm of a plot differs from its paper)."""
    paper: str                                        # what the paper does
    ours: str                                         # what this module does
    why: str                                          # why it must differ here


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    paper: str                      # which paper it comes from ("002", "004 baseline", ...)
    description: str                # one line: what crosses the cut
    source: Callable[..., SourcePart]
    server: Callable[..., ServerPart]
    knobs: tuple[Option, ...] = ()  # the options it reads
    at_source: str = ""             # what runs at the source (after the head)
    at_server: str = ""             # what runs at the server (before the tail)
    input_only: bool = False        # compresses the input image itself: its arm runs at split 0
    # budget schedule: (budget B, maps at the cut, epochs) -> phases; None: all maps throughout
    schedule: Callable[[int, int, int], Phases] | None = None
    server_lr_scale: float = 1.0    # factor on the lr of the server part's own parameters (a shipped decoder), never the tail's
    levels: Levels | None = None    # what --adapt may change during a run; None: the module has no level
    check: Callable[["CompressionConfig"], None] | None = None  # constraints between knobs
    deviations: tuple[Deviation, ...] = ()  # how it differs from its paper, and why

    def check_config(self, config: "CompressionConfig") -> None:
        """Raise ValueError when the knobs do not go together (each knob's own range is
        checked by its declaration)."""
        if self.check is not None:
            self.check(config)

    def split_for(self, split: int) -> int:
        return 0 if self.input_only else split


_MODULES: dict[str, ModuleSpec] = {}


def register(spec: ModuleSpec) -> ModuleSpec:
    if spec.name in _MODULES:
        raise ValueError(f"compression module {spec.name!r} is registered twice")
    _MODULES[spec.name] = spec
    return spec


def available() -> list[str]:
    return sorted(_MODULES)


def modules() -> list[ModuleSpec]:
    return [_MODULES[name] for name in available()]


def get(name: str) -> ModuleSpec:
    try:
        return _MODULES[name]
    except KeyError:
        raise ValueError(f"unknown compression module {name!r}; known modules: {', '.join(available())}") from None


def knobs() -> list[Option]:
    """Every module's knobs, each once, in registration order."""
    seen: dict[int, Option] = {}
    for spec in _MODULES.values():
        for option in spec.knobs:
            seen.setdefault(id(option), option)
    return list(seen.values())


def readers(option: Option) -> list[str]:
    """The modules that read the knob ``option``."""
    return [spec.name for spec in modules() if any(k is option for k in spec.knobs)]


class CompressionConfig(SimpleNamespace):
    """The knob values a module's parts are built with: every declared knob at its
    default unless given (each given value checked by its declaration), plus the
    dataset's ``classes`` and the split ``model``. ``program``: the program that builds
    the part; a knob that program does not read (its declaration's roles) is absent, so a
    part that reads it fails loudly instead of silently getting the default."""

    def __init__(self, *, classes: int = 10, model: str = "vgg11", program: str | None = None, **values):
        declared = {k.dest: k for k in knobs() if program is None or program in k.roles}
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise ValueError(f"unknown knob(s) {', '.join(unknown)}; known: {', '.join(sorted(declared))}")
        resolved = {dest: (option.check(values[dest]) if dest in values else option.default)
                    for dest, option in declared.items()}
        super().__init__(classes=classes, model=model, **resolved)
        object.__setattr__(self, "_program", program)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"knob {name!r} is not read by the {self._program or 'this'} program: add "
                             f"{self._program!r} to its declaration's roles")


def create_source(name: str, cut_shape, config: CompressionConfig) -> SourcePart:
    spec = get(name)
    spec.check_config(config)
    return spec.source(cut_shape, config)


def create_server(name: str, cut_shape, config: CompressionConfig) -> ServerPart:
    """The server part (the constraints between knobs were checked where the run was
    validated and at the source, which reads every knob a constraint names)."""
    return get(name).server(cut_shape, config)


def schedule_for(module: str, budget: int, maps: int, epochs: int, *, text: str | None = None,
                 boost: float = 1.0, boost_epochs: int = 0) -> BudgetSchedule:
    """The budget schedule of ``module`` over ``epochs`` (its registry entry's), or the
    one given as text; modules without a budget send all maps throughout."""
    default = get(module).schedule
    if text and default is not None:
        phases = parse_schedule(text)
    elif default is not None:
        phases = default(budget, maps, epochs)
    else:
        phases = ((maps, epochs),)
    return BudgetSchedule(tuple((min(b, maps), e) for b, e in phases), boost, boost_epochs)
