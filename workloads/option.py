"""What one option is: :class:`Option`, the declaration every setting of the programs and
of the testbed is written as (its type, default, range, help, readers, environment variable
and chart value), and :func:`knob`, a compression module's option. The machinery only:
the programs' options are declared in :mod:`workloads.settings`, the testbed's in
``testbed/options.py``, a module's knobs in its own file."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

ENV_PREFIX = "SPLITTEST_"
PROGRAMS = ("source", "server")


def flag(text: str) -> bool:
    """A boolean from the command line or the environment."""
    value = str(text).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Option:
    """One setting. ``roles``: the programs that read it ("source", "server") and/or
    "testbed" (the testbed itself reads it; ``testbed run`` offers every option that is
    not ``per_process``, since it passes them to the programs). ``chart``: its path in
    the chart's values (None: the chart's templates set it per pod, or it is
    ``local_only``). ``per_process``: the backend sets it for each process, it is not a
    choice of a run."""
    name: str
    type: type
    default: Any
    help: str
    roles: tuple[str, ...] = PROGRAMS
    choices: Sequence | Callable[[], Sequence] | None = None
    min: float | None = None
    max: float | None = None
    positive: bool = False                      # > 0 (an exclusive minimum of 0)
    validate: Callable[[Any], Any] | None = None  # a further check (e.g. a schedule's grammar)
    chart: str | None = None
    chart_schema: dict | None = None            # the JSON schema of the chart value, when not derived
    per_process: bool = False
    local_only: bool = False                    # no meaning on Kubernetes: refused there unless at its default
    many: bool = False                          # testbed run takes a comma-separated list (one arm each)
    per_source: bool = False                    # a comma-separated list gives one value per source, cycled
    run_default: Any = None                     # testbed run's default, when it differs from the programs'
    group: str = "workload"                     # the heading it is listed under

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    def allowed(self) -> list | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def convert(self, text: Any) -> Any:
        """A value of this option's type from text (or a value of the right type)."""
        if self.type is bool:
            return text if isinstance(text, bool) else flag(text)
        if self.type is int and isinstance(text, float) and text.is_integer():
            return int(text)
        if self.per_source and isinstance(text, str) and "," in text:
            return tuple(self.convert(item.strip()) for item in text.split(","))
        if self.per_source and isinstance(text, (tuple, list)):
            return tuple(self.convert(item) for item in text)
        try:
            return self.type(text)
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number", str: "text"}.get(self.type, self.type.__name__)
            raise ValueError(f"{self.flag} must be {kind}, got {text!r}") from None

    def check(self, value: Any) -> Any:
        """``value`` when it is valid, else a ValueError naming the option and the range."""
        if (self.many or self.per_source) and isinstance(value, (tuple, list)):
            for one in value:
                self.check(one)
            return value
        if self.type in (int, float) and isinstance(value, bool) or \
                self.type is float and not isinstance(value, (int, float)) or \
                self.type is int and not isinstance(value, int) or \
                self.type is str and not isinstance(value, str) or \
                self.type is bool and not isinstance(value, bool):
            raise ValueError(f"{self.flag} must be of type {self.type.__name__}, got {value!r}")
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            known = ", ".join("''" if v == "" else str(v) for v in allowed)
            raise ValueError(f"unknown {self.name} {value!r}; known: {known}")
        if self.positive and not value > 0:
            raise ValueError(f"{self.flag} must be positive, got {value}")
        if self.min is not None and self.max is not None and not self.min <= value <= self.max:
            raise ValueError(f"{self.flag} must be between {_num(self.min)} and {_num(self.max)}, got {value}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{self.flag} must be at least {_num(self.min)}, got {value}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{self.flag} must be at most {_num(self.max)}, got {value}")
        if self.validate is not None and value not in ("", None):
            try:
                self.validate(value)
            except ValueError as exc:  # named once: a parser shared with other options names its own
                text = str(exc)
                raise ValueError(text if text.startswith(f"{self.flag}:") else f"{self.flag}: {text}") from None
        return value

    def parse(self, text: Any) -> Any:
        return self.check(self.convert(text))

    def describe_range(self) -> str:
        """The valid values in words, for help texts and tables."""
        allowed = self.allowed()
        if allowed is not None:
            return "one of " + ", ".join(map(str, allowed))
        if self.positive:
            return "> 0"
        if self.min is not None and self.max is not None:
            return f"{_num(self.min)}..{_num(self.max)}"
        if self.min is not None:
            return f">= {_num(self.min)}"
        return ""

    def text(self, value: Any) -> str:
        """``value`` as a program's command line or environment gives it."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (tuple, list)):
            return ",".join(map(str, value))
        return str(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def camel(name: str) -> str:
    """``batch-size`` -> ``batchSize`` (the chart's spelling)."""
    head, *rest = name.split("-")
    return head + "".join(part.capitalize() for part in rest)


def knob(name: str, type_: type, default: Any, help: str, roles: tuple[str, ...] = PROGRAMS, **kwargs) -> Option:
    """A compression module's knob: a workload option with its chart value under ``workload``."""
    return Option(name, type_, default, help, roles, chart=f"workload.{camel(name)}", group="knob", **kwargs)
