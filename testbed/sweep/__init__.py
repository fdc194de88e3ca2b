"""``testbed sweep SPEC`` (and ``testbed run --sweep-bandwidth``, short for a spec): the
trials of a spec (spec.py) where its backend runs them, on Ray or one after another here
(pool.py), each an ordinary run directory (trial.py), one table over them (table.py) and
its figures (analysis/sweep.py).

A second invocation with the same output folder reruns no trial that finished with the
same settings; a failed trial is recorded with its error and the sweep goes on (it is
rerun by the next invocation)."""
from __future__ import annotations

import sys
from pathlib import Path

from .. import backends
from ..errors import Exit, LostSources, TrialsFailed, interrupted, warn
from ..errors import report as report_error
from .spec import SweepSpec, SweepSpecError, Trial, bandwidth_sweep, load_spec  # noqa: F401
from .table import FINISHED, TRIALS, SweepTable
from .trial import LOG


def default_out(spec: SweepSpec) -> Path:
    """Where a sweep goes without ``--out``: the same folder every time, so that running
    the command again resumes it."""
    return Path("runs") / ("sweep-" + spec.name + (f"-{spec.scale}" if spec.scale else ""))


def trial_settings(spec: SweepSpec, trial: Trial, index: int, pool: str) -> dict:
    """What a trial's ``testbed run`` gets: the spec's settings, the backend, quiet. Trials of
    the local fleet that may run side by side (on Ray) get ports of their own."""
    settings = {**trial.settings, "backend": spec.backend, "quiet": False}
    if backends.get(spec.backend).own_ports and pool == "ray":
        from workloads.settings import option
        settings["port"] = settings.get("port", option("port").default) + index
    return settings


def check_trials(spec: SweepSpec, pool: str | None = None) -> None:
    """Every trial's settings through ``testbed run``'s own validation, before anything starts
    (``pool``: where they will run; default, where the backend runs trials)."""
    from ..spec import RunSpec, SpecError, validate

    pool = pool or backends.get(spec.backend).trials
    for index, trial in enumerate(spec.trials):
        try:
            validate(RunSpec(**trial_settings(spec, trial, index, pool)))
        except SpecError as exc:
            raise SweepSpecError(f"{spec.where}: trial {trial.id}: {exc}") from None


def sweep_bandwidth(spec, say=print) -> int:
    """``--sweep-bandwidth``: short for a sweep spec (testbed.sweep.spec.bandwidth_sweep), run
    here one trial after another as a run's arms are: each arm once per rate, each trial a
    run folder under ``<out>/trials/``, then the sweep's table and figures (throughput
    against link rate among them) under ``<out>``. The exit status is the sweep's."""
    from ..runner import new_run_id
    from ..spec import RunSpec

    sweep = bandwidth_sweep(spec)
    first = RunSpec(**{**sweep.trials[0].settings, "backend": spec.backend})
    backends.get(spec.backend).open(first, say)  # a cluster that cannot be reached: said before any folder
    out = Path(spec.out or Path("runs") / f"sweep-{new_run_id()}")
    return run_sweep(sweep, out, say=say, bar=not spec.quiet, pool="here")


def run_sweep(spec: SweepSpec, out: Path, *, address: str | None = None, cpus: float | None = None,
              say=print, bar: bool = True, pool: str | None = None) -> Exit:
    """Every trial of ``spec`` not finished before, in ``pool`` (a key of pool.POOLS; default:
    where the spec's backend runs trials); raises bad input (SweepSpecError) before anything
    starts, and an error when Ray cannot be started or joined. Failed trials are reported in
    one line (the status is then Exit.FAILED), else trials that lost sources (Exit.LOST_SOURCES)."""
    from ..runner import make_folder
    from .pool import POOLS, start_ray, stop_ray

    pool = pool or backends.get(spec.backend).trials
    check_trials(spec, pool)
    make_folder(out, "sweep folder", exist_ok=True)
    table = SweepTable(out, spec)
    todo = table.todo()
    kept = f", {len(table.kept)} finished before (kept)" if table.kept else ""
    each = "one after another here" if pool == "here" else \
        f"{spec.cpus_per_trial:g} CPU{f', {spec.gpus_per_trial:g} GPU' if spec.gpus_per_trial else ''} each"
    say(f"sweep {spec.name}{' --scale ' + spec.scale if spec.scale else ''}: {len(spec.trials)} trials{kept}, "
        f"{len(todo)} to run ({spec.backend} backend, {each}) -> {out}")
    table.write()
    if pool == "here" and (address or cpus):
        warn(f"--address and --cpus are Ray's: the {spec.backend} backend's trials run one after another here")
    if todo:
        if pool == "ray":
            offered = start_ray(address, cpus)
            say(f"ray: {offered['address']}, {offered['nodes']} node(s), {offered['cpus']:g} CPU, "
                f"{offered['gpus']:g} GPU: up to {_at_once(spec, offered)} trials at once")
        progress = _progress_bar(len(spec.trials), len(table.kept), enabled=bar)
        index = {t.id: i for i, t in enumerate(spec.trials)}

        def finished(trial: Trial, result: dict) -> None:
            row = table.record(trial, result)
            progress.update(1)
            progress.set_postfix_str(f"failed {len(table.failed()) - _pending(table)}")
            progress.write(_one_line(row), file=sys.stdout if say is print else _Null())

        try:
            jobs = ((t, trial_settings(spec, t, index[t.id], pool), str(table.trial_dir(t).resolve())) for t in todo)
            POOLS[pool](jobs, cpus=spec.cpus_per_trial, gpus=spec.gpus_per_trial, timeout_s=spec.timeout_s,
                        on_done=finished)
        except KeyboardInterrupt:
            progress.close()
            return interrupted(f"every trial was stopped (the same command with --out {out} resumes)")
        finally:
            progress.close()
            table.write(finished=True)
            stop_ray()
    else:
        table.write(finished=True)
    _report(out, say)
    _run_report(spec, out, say)
    failed = table.failed()
    if failed:
        return report_error(TrialsFailed(
            f"{len(failed)} of {len(spec.trials)} trials failed: "
            + "; ".join(f"{r['trial']} ({r['error']})" for r in failed[:3]) + ("; ..." if len(failed) > 3 else "")
            + f" (sweep.json has every error; the same command with --out {out} retries them)"))
    lost = [r["trial"] for r in table.rows.values() if r["status"] == "lost-sources"]
    if lost:
        return report_error(LostSources(
            f"{len(lost)} of {len(spec.trials)} trials lost sources: {', '.join(lost)} (each trial's "
            f"{TRIALS}/<trial>/{LOG} names them); every trial finished and the sweep's report is written"))
    return Exit.OK


def _pending(table: SweepTable) -> int:
    return sum(1 for r in table.rows.values() if r["status"] == "pending")


def _at_once(spec: SweepSpec, offered: dict) -> int:
    by_cpu = int(offered["cpus"] // spec.cpus_per_trial) if spec.cpus_per_trial else 0
    by_gpu = int(offered["gpus"] // spec.gpus_per_trial) if spec.gpus_per_trial else by_cpu
    return max(0, min(by_cpu, by_gpu))


def _one_line(row: dict) -> str:
    metrics = row["metrics"]
    if row["status"] in FINISHED:
        accuracy = metrics.get("test_accuracy")
        sent = metrics.get("bytes_per_sample_sent")
        return (f"  {row['trial']}: {row['status']}, accuracy {accuracy:.3f}" if accuracy is not None else
                f"  {row['trial']}: {row['status']}") + \
            (f", {sent:,.0f} B/sample sent" if sent is not None else "") + f" ({row['seconds']:.0f} s)"
    return f"  {row['trial']}: FAILED: {row['error']}"


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="trial", desc="trials", disable=None if enabled else True,  # None: off where stderr is no terminal
               
                dynamic_ncols=True, file=sys.stderr)


class _Null:
    def write(self, text):
        pass

    def flush(self):
        pass


def _run_report(spec: SweepSpec, out: Path, say) -> None:
    """Where trials adapted (``--adapt``), ``testbed report`` over the finished trials of the
    first seed into ``report/runs/``: the adaptation figure puts every arm on one time axis."""
    if not any(t.settings.get("adapt") for t in spec.trials):
        return
    first = min(t.seed for t in spec.trials)
    finished = [str(out / "trials" / t.id) for t in spec.trials
                if t.seed == first and (out / "trials" / t.id / "summary.json").exists()]
    if finished:
        from ..runner import report
        report(finished, str(out / "report" / "runs"), say)


def _report(out: Path, say) -> None:
    try:
        from analysis.sweep import write_sweep_report
    except ImportError:  # the sweep's figures come with analysis/sweep.py
        return
    result = write_sweep_report(out)
    for problem in result.problems:
        warn(problem)
    say(f"report: {result.markdown} ({len(result.figures) // 2} figures)")
