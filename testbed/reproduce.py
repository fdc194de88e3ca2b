"""``testbed reproduce NAME``: one paper figure or table, end to end. The experiment is a
sweep spec with a ``[reproduce]`` table (``experiments/reproduce/NAME.toml``): the sweep
runs (resumable, on Ray), then analysis/reproduce.py sets the paper's claims against the
measurements and writes ``reproduce.md`` (the verdicts in words, the paper's values beside
the measured ones, the figures)."""
from __future__ import annotations

import shlex
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments" / "reproduce"


def experiments() -> list[str]:
    """The names ``testbed reproduce`` knows: the spec files under experiments/reproduce/."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.toml"))


def reproduce_command(name: str, *, scale: str, out: str = "", data_dir: str = "", address: str | None = None,
                      cpus: float | None = None, say=print, bar: bool = True) -> int:
    from analysis.reproduce import ReproduceError, reproduce

    from .errors import BadInput, Exit
    from .runner import report
    from .sweep import load_spec, run_sweep

    path = EXPERIMENTS / f"{name}.toml"
    if not path.exists():
        raise BadInput(f"unknown experiment {name!r}; known: {', '.join(experiments())}")
    spec = load_spec(path, scale, {"data_dir": data_dir} if data_dir else None)
    folder = Path(out) if out else Path("runs") / f"reproduce-{name}-{scale}"
    code = run_sweep(spec, folder, address=address, cpus=cpus, say=say, bar=bar)
    if code == Exit.INTERRUPTED or not (folder / "sweep.json").exists():
        return code
    claims = spec.raw.get("reproduce", {})
    for group, series in claims.get("run_reports", {}).items():  # `testbed report`'s figures over those trials
        trials = [folder / "trials" / t.id for t in spec.trials if t.series in series]
        finished = [str(p) for p in trials if (p / "summary.json").exists()]
        if finished:
            report(finished, str(folder / "report" / group), lambda *a, **k: None)
    command = "testbed reproduce " + shlex.join([name, "--scale", scale] + (["--data-dir", data_dir] if data_dir else []))
    try:
        result = reproduce(folder, claims, scale=scale, command=command)
    except ReproduceError as exc:
        raise BadInput(f"{path}: {exc}") from None
    say("")
    say(f"{claims.get('title', name)} (paper {claims.get('paper', '?')}, {claims.get('figures', '')}), "
        f"scale {scale}:")
    for verdict in result.verdicts:
        mark = {True: "holds", False: "does not hold", None: "cannot say"}[verdict.holds]
        say(f"  {mark}: {verdict.statement}")
    say(f"reproduction: {result.markdown}")
    return code
