"""The sweep's table: one row per trial, written as ``sweep.json`` and ``sweep.csv`` after
every trial (the format: analysis/sweep.py reads it). A second invocation reads it back
and keeps every row that finished with the same settings: those trials are not rerun."""
from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

from analysis.figures import one, shown

from .spec import SweepSpec, Trial
from .trial import arm_summary

# the figures of an arm's summary declared shown in "sweep" (analysis/figures.py), under their
# names; a per-source one as the one number it declares (its ``reduce``: the mean over sources)
METRICS = tuple(d.name for d in shown("sweep"))
FINISHED = ("ok", "lost-sources")
TRIALS = "trials"


class SweepTable:
    def __init__(self, out: Path, spec: SweepSpec):
        self.out, self.spec = out, spec
        self.rows = {t.id: _pending(t) for t in spec.trials}
        self.kept = self._resume()
        self.header = {"sweep": spec.name, "spec_file": str(spec.path) if spec.path else None, "scale": spec.scale,
                       "backend": spec.backend, "description": spec.description,
                       "started": dt.datetime.now().isoformat(timespec="seconds"), "finished": None,
                       "vary": spec.vary}

    def _resume(self) -> list[str]:
        """The ids of trials a previous invocation finished with the settings they have now."""
        try:
            before = json.loads((self.out / "sweep.json").read_text())
        except (OSError, ValueError):
            return []
        kept = []
        for row in before.get("trials", []) if isinstance(before, dict) else []:
            now = self.rows.get(row.get("trial")) if isinstance(row, dict) else None
            if now is not None and row.get("status") in FINISHED and _same(row.get("params"), now["params"]):
                summary = arm_summary(self.out / TRIALS / row["trial"], now["module"])
                # its figures as they are declared now; those it had where its summary is not here (on
                # another node of a Ray cluster)
                before = row.get("metrics") or {}
                row["metrics"] = {m: one(m, summary) if summary is not None else before.get(m) for m in METRICS}
                self.rows[row["trial"]] = row
                kept.append(row["trial"])
        return kept

    def todo(self) -> list[Trial]:
        return [t for t in self.spec.trials if t.id not in self.kept]

    def trial_dir(self, trial: Trial) -> Path:
        return self.out / TRIALS / trial.id

    def record(self, trial: Trial, result: dict) -> dict:
        row = self.rows[trial.id]
        summary = result.get("summary") or {}
        row.update(status=result["status"], error=result.get("error"), seconds=result.get("seconds"),
                   metrics={m: one(m, summary) for m in METRICS})
        if result["status"] in FINISHED and summary.get("test_accuracy") is None and row["error"] is None:
            row["error"] = "no summary of the arm was written"
        self.write()
        return row

    def failed(self) -> list[dict]:
        return [r for r in self.rows.values() if r["status"] not in FINISHED]

    def write(self, finished: bool = False) -> None:
        if finished:
            self.header["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        rows = [self.rows[t.id] for t in self.spec.trials]
        _atomic(self.out / "sweep.json", json.dumps({**self.header, "trials": rows}, indent=2) + "\n")
        _atomic(self.out / "sweep.csv", _csv(rows))


def _pending(trial: Trial) -> dict:
    return {"trial": trial.id, "run_dir": f"{TRIALS}/{trial.id}", "status": "pending", "error": None,
            "series": trial.series, "module": trial.module, "knob": trial.knob, "knob_value": trial.knob_value,
            "seed": trial.seed, "params": _jsonable(trial.settings), "seconds": None,
            "metrics": {m: None for m in METRICS}}


def _jsonable(settings: dict) -> dict:
    return json.loads(json.dumps(settings))


def _same(before, now) -> bool:
    return isinstance(before, dict) and _jsonable(before) == now


def _csv(rows: list[dict]) -> str:
    import io

    params = []
    for row in rows:
        params += [k for k in row["params"] if k not in params]
    head = ["trial", "status", "error", "run_dir", "series", "module", "knob", "knob_value", "seed", "seconds"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(head + [f"param.{p}" for p in params] + list(METRICS))
    for row in rows:
        writer.writerow([_cell(row.get(h)) for h in head] + [_cell(row["params"].get(p)) for p in params]
                        + [_cell(row["metrics"].get(m)) for m in METRICS])
    return text.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
