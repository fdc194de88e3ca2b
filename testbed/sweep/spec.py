"""A sweep spec: experiment settings as data (TOML or YAML under ``experiments/``), expanded
into trials.

A spec names the settings every trial shares (``[base]``), the arms (``[[arms]]``: a
module and its knobs; a list gives one trial per value: the arm's knob), a grid every arm
is repeated over (``[grid]``: seeds, datasets, bandwidths) and overrides per scale
(``[scale.smoke]``, ``[scale.medium]``, ``[scale.paper]``; ``[scale.smoke.arms.NAME]`` for one arm, by its label or
module). Keys are ``testbed run``'s options, spelt as the
flag without its dashes (``batch-size`` or ``batch_size``). A trial is one arm's run with
one value of each list: an ordinary run directory of one arm. A trace file a spec names
(``link-trace``) is relative to the spec's folder.

The README ("Sweeps on Ray") shows one; ``experiments/`` holds more.
"""
from __future__ import annotations

import difflib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import backends
from ..errors import BadInput
SCALES = ("smoke", "medium", "paper")  # minutes on 2 cores; at most 30 of them, 2 seeds; the paper's settings
TOP_LEVEL = {"name", "description", "backend", "cpus_per_trial", "gpus_per_trial", "timeout_s", "base", "grid",
             "arms", "scale", "reproduce"}
ARM_ONLY = {"label"}
NOT_IN_SPEC = {"out", "quiet", "backend", "sweep_bandwidth"}  # the sweep sets these for every trial
SHORTHAND = "--sweep-bandwidth"  # how a spec without a file (bandwidth_sweep's) is named in messages


class SweepSpecError(BadInput):
    """A bad sweep spec; the message names the file and the problem."""


@dataclass(frozen=True)
class Trial:
    """One run of one arm: its id (its folder under ``trials/``), the settings the spec gave
    it (dests), the line it belongs to (``series``) and the knob it varies."""
    id: str
    settings: dict
    series: str
    knob: str | None

    @property
    def module(self) -> str:
        return self.settings["module"]

    @property
    def knob_value(self):
        return self.settings.get(self.knob) if self.knob else None

    @property
    def seed(self) -> int:
        return self.settings.get("seed", 0)


@dataclass
class SweepSpec:
    name: str
    path: Path | None  # its file (None: the spec of testbed run --sweep-bandwidth)
    backend: str
    trials: list[Trial]
    scale: str | None = None
    description: str = ""
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    timeout_s: float | None = None
    vary: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # the parsed file (the reproduce command reads its own table)

    @property
    def where(self) -> str:
        """How messages name it: its file, or the option it came from."""
        return str(self.path) if self.path else SHORTHAND


def load_spec(path: str | os.PathLike, scale: str | None = None, override: dict | None = None) -> SweepSpec:
    """The spec at ``path`` expanded into its trials, every setting checked against its
    declaration; a SweepSpecError (one line, naming the file) for anything wrong.
    ``override`` (settings by dest) apply to every trial, over the spec's own."""
    path = Path(path)
    return expand(_read(path), path, scale, override)


def bandwidth_sweep(run) -> SweepSpec:
    """The sweep ``testbed run --sweep-bandwidth R1,R2 ...`` is short for: the run's other
    settings as ``[base]`` (those not at their defaults), each of its arms an ``[[arms]]``,
    the rates a ``[grid]`` of ``bandwidth``; named ``bandwidth``."""
    from ..options import run_options

    defaults = {o.dest: o.run_default if o.run_default is not None else o.default for o in run_options()}
    base = {dest: value for dest, value in run.values.items()
            if dest not in NOT_IN_SPEC and dest != "module" and value != defaults[dest]}
    raw = {"name": "bandwidth", "backend": run.backend, "base": base,
           "grid": {"bandwidth": [rate.strip() for rate in run.sweep_bandwidth.split(",")]},
           "arms": [{"module": module} for module in run.modules]}
    return expand(raw, None)


def expand(raw: dict, path: Path | None, scale: str | None = None, override: dict | None = None) -> SweepSpec:
    """A parsed spec (``path``: its file; None for the one ``--sweep-bandwidth`` makes)
    expanded into its trials, every setting checked; a SweepSpecError naming the problem."""
    where = str(path) if path else SHORTHAND
    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        raise SweepSpecError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(TOP_LEVEL))}")
    backend = raw.get("backend", backends.SWEEP_DEFAULT)
    if backend not in backends.BACKENDS:
        raise SweepSpecError(f"{where}: backend must be one of {', '.join(backends.BACKENDS)}, got {backend!r}")
    if scale is not None and scale not in SCALES:
        raise SweepSpecError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    scales = raw.get("scale") or {}
    _table(scales, f"{where}: [scale]")
    if scale is not None and scale not in scales and scales:
        raise SweepSpecError(f"{where} has no [scale.{scale}]; it has {', '.join(sorted(scales)) or 'no scales'}")
    overrides = scales.get(scale, {}) if scale else {}
    base = {**_settings(raw.get("base") or {}, f"{where}: [base]"),
            **_settings({k: v for k, v in overrides.items() if k not in ("grid", "arms")}, f"{where}: [scale.{scale}]")}
    given = _settings(override or {}, "the command line")
    grid = {**_settings(raw.get("grid") or {}, f"{where}: [grid]"),
            **_settings(overrides.get("grid") or {}, f"{where}: [scale.{scale}.grid]")}
    arms = raw.get("arms") or []
    if not isinstance(arms, list) or not arms:
        raise SweepSpecError(f"{where}: no arms: give at least one [[arms]] with a module")
    trials = []
    per_arm = _table(overrides.get("arms") or {}, f"{where}: [scale.{scale}.arms]")
    for number, arm in enumerate(arms, 1):
        _table(arm, f"{where}: arm {number}")
        name = arm.get("label") or arm.get("module")
        arm = {**arm, **_table(per_arm.pop(name, {}), f"{where}: [scale.{scale}.arms.{name}]")}
        trials += _expand_arm(arm, base, grid, f"{where}: arm {number}", given)
    if per_arm:
        raise SweepSpecError(f"{where}: [scale.{scale}.arms] names {', '.join(per_arm)}, which is no arm's label "
                             "or module")
    _check_unique(trials, where)
    for trial in trials:
        _beside_spec(trial.settings, path.parent if path else Path.cwd(), given)
    cpus = raw.get("cpus_per_trial", backends.get(backend).trial_cpus or float(os.cpu_count() or 1))
    if not isinstance(cpus, (int, float)) or isinstance(cpus, bool) or cpus <= 0:
        raise SweepSpecError(f"{where}: cpus_per_trial must be a positive number, got {cpus!r}")
    gpus = raw.get("gpus_per_trial", 0.0)
    if not isinstance(gpus, (int, float)) or isinstance(gpus, bool) or gpus < 0:
        raise SweepSpecError(f"{where}: gpus_per_trial must be a number >= 0, got {gpus!r}")
    timeout = raw.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise SweepSpecError(f"{where}: timeout_s must be a positive number of seconds, got {timeout!r}")
    name = str(raw.get("name") or (path.stem if path else "sweep"))
    return SweepSpec(name=name, path=path, backend=backend, trials=trials, scale=scale,
                     description=str(raw.get("description", "")), cpus_per_trial=float(cpus),
                     gpus_per_trial=float(gpus), timeout_s=timeout, vary=_varying(trials), raw=raw)


FILE_SETTINGS = ("link_trace",)  # files a spec names: relative to the spec's folder


def _beside_spec(settings: dict, folder: Path, given: dict) -> None:
    """A relative trace file the spec names is read from the spec's folder (one given on the
    command line, from the current folder), so a sweep runs from anywhere."""
    for key in FILE_SETTINGS:
        if settings.get(key) and key not in given:
            settings[key] = ",".join(part if Path(part).is_absolute() else str((folder / part).resolve())
                                     for part in str(settings[key]).split(","))


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SweepSpecError(f"cannot read sweep spec {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml
            raw = yaml.safe_load(text)
        else:
            raise SweepSpecError(f"{path}: a sweep spec is a .toml or .yaml file")
    except SweepSpecError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError: say where
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SweepSpecError(f"{path} is not valid {path.suffix[1:].upper()}: {first}") from None
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{path}: a sweep spec is a table of keys, got {type(raw).__name__}")
    return raw


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise SweepSpecError(f"{where} must be a table of settings, got {value!r}")
    return value


def _settings(table: dict, where: str) -> dict:
    """Keys as dests of ``testbed run``'s options, values converted like the command line's
    (a list stays a list: the values of a grid or knob)."""
    from ..options import run_options

    declared = {o.dest: o for o in run_options()}
    out = {}
    for key, value in _table(table, where).items():
        dest = key.replace("-", "_")
        if dest in NOT_IN_SPEC:
            raise SweepSpecError(f"{where}: {key} is set by the sweep for every trial, not by the spec")
        if dest not in declared:
            close = [d.replace("_", "-") for d in difflib.get_close_matches(dest, list(declared), n=2)]
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise SweepSpecError(f"{where}: unknown setting {key!r}{hint}; `testbed run --help` lists them")
        option = declared[dest]
        try:
            if isinstance(value, list):
                out[dest] = [option.convert(v) for v in value]
                if not out[dest]:
                    raise ValueError(f"{option.flag} has an empty list")
            else:
                out[dest] = option.convert(value)
        except ValueError as exc:
            raise SweepSpecError(f"{where}: {exc}") from None
    return out


def _expand_arm(arm, base: dict, grid: dict, where: str, given: dict) -> list[Trial]:
    _table(arm, where)
    label = arm.get("label")
    settings = _settings({k: v for k, v in arm.items() if k not in ARM_ONLY}, where)
    if "module" not in settings:
        raise SweepSpecError(f"{where} has no module")
    lists = [k for k, v in settings.items() if isinstance(v, list)]
    knobs = [k for k in lists if k != "module"]
    knob = knobs[0] if knobs else None
    fixed = {k: v for k, v in settings.items() if k not in lists}
    grid_keys = [k for k in grid if k not in settings]
    trials = []
    for values in itertools.product(*[settings[k] for k in lists], *[_listed(grid[k]) for k in grid_keys]):
        chosen = dict(zip(lists + grid_keys, values))
        one = {**base, **{k: v for k, v in grid.items() if not isinstance(v, list)}, **fixed, **chosen, **given}
        for key, value in one.items():  # a list left in [base] is refused: lists belong to a grid or an arm
            if isinstance(value, list):
                raise SweepSpecError(f"{where}: {key} is a list in [base]; put lists in [grid] or an arm")
        module = one["module"]
        series = label or module
        others = [k for k in knobs[1:]]  # a second list in one arm: a line per its value
        if others:
            series += " (" + ", ".join(f"{k.replace('_', '-')} {one[k]}" for k in others) + ")"
        trial_id = _trial_id(label or module, [(k, one[k]) for k in knobs + grid_keys])
        trials.append(Trial(trial_id, one, series, knob))
    return trials


def _listed(value):
    return value if isinstance(value, list) else [value]


def _trial_id(head: str, pairs) -> str:
    parts = [head] + [f"{k.replace('_', '-')}-{_text(v)}" for k, v in pairs]
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", "-".join(parts)).strip("-").lower()


def _text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_unique(trials: list[Trial], where: str) -> None:
    seen = {}
    for trial in trials:
        if trial.id in seen:
            raise SweepSpecError(f"{where}: two trials are both {trial.id}: give the arms different labels")
        seen[trial.id] = trial


def _varying(trials: list[Trial]) -> list[str]:
    """The settings whose value differs between trials, in the order they first appear."""
    keys = []
    for trial in trials:
        keys += [k for k in trial.settings if k not in keys]
    return [k for k in keys if len({repr(t.settings.get(k)) for t in trials}) > 1]
