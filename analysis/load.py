"""Run directories -> pandas DataFrames, with one schema for every backend.

A run directory holds ``manifest.json``, ``summary.json`` and one folder per arm with
``server.jsonl`` and ``source-N.jsonl`` (one JSON event per line). ``load_runs`` reads
one or many of them into a :class:`Runs`:

``batches`` — one row per training step of a source (its ``batch`` events):
    run, arm, label, module, source, t (s since the arm started), epoch, batch, samples,
    warmup, duration_s, bytes_sent, bytes_received, payload_sent, payload_received,
    coded_sent, loss, budget, phase, lr_scale, filter_sum, filter_topb_share, wait_s, cpu_s,
    compute_s, encode_s, rtt_s, decode_s, backward_s, queue_s, server_decode_s,
    server_compute_s, server_encode_s, server_s, network_s, net_up_s, net_down_s, latency_s
``evals`` — one row per end-of-epoch evaluation of a source (``eval`` events):
    run, arm, label, module, source, t, epoch, budget, samples, accuracy,
    bytes_sent, bytes_received, coded_sent
``infers`` — one row per split-inference (evaluation) request of a source (``infer``
    events): run, arm, label, module, source, t, epoch, samples, latency_s, compute_s,
    encode_s, rtt_s, decode_s, queue_s, server_decode_s, server_compute_s, server_encode_s,
    server_s, network_s, net_up_s, net_down_s, bytes_sent, bytes_received, coded_sent
``sources`` — one row per source process:
    run, arm, label, module, source, status, start_s (process start, s since the arm
    started), end_s (its ``end`` event, else its last event), cpu_share and peak_rss_mb
    (from its ``end`` event), pretrain_s (its ``prepared`` event's duration_s),
    memory_peak_mb and memory_limit_mb (MiB, the testbed's ``memory`` event: what the kernel
    charged to its memory cgroup at most, and its --memory limit; NA without one)
``events`` — every event of every process, as read (run, arm, role, source, event, t, ...),
    with the testbed's own (``testbed.jsonl``, role "testbed": ``lost`` and ``memory``) and the emulated link's
    (``link.jsonl``, role "link"; its ``link`` event's ``label`` is read as ``link_label``,
    since ``label`` names the arm here).

Every column taken from an event is that event's field, declared with its unit and
meaning in workloads/events.py; a column an older trace does not have is NA. The names
of the events read here are declared once below (``START`` ... ``SAMPLE``); analysis
imports nothing of workloads (it only reads files), and tests/test_trace_events.py proves
each of them declared there for the role it is read from.

A lost source's status is "lost" (``sources``), whatever its trace says.

Times ``t`` are seconds since the arm started: the first process start of its sources
(``process_created`` of their ``start`` events), or its first event when none is traced.
``load_arm`` reads one arm folder alone (as ``testbed`` does to write ``summary.json``); it
takes the run's ``backend`` from the ``manifest.json`` beside the arm folder when there is one.

``label`` names an arm in plots: the module, or "module (run)" when several loaded
runs have an arm of the same module. Problems (a missing or truncated trace, a process
that died) do not stop loading: they are listed in ``Runs.problems`` and the rest is
still read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import jsonl
from .errors import AnalysisError

# The trace events analysis reads, by name (declared in workloads/events.py, which
# analysis does not import); READ: the role -> the names read from its traces.
START, DATA, CONNECTED, PRETRAIN, PREPARED = "start", "data", "connected", "pretrain", "prepared"
ADAPT_START, ADAPT, BATCH, CALIBRATE, INFER, EVAL = "adapt_start", "adapt", "batch", "calibrate", "infer", "eval"
BYE, END, LISTENING, REQUEST = "bye", "end", "listening", "request"
LOST, MEMORY = "lost", "memory"
LINK, NIC, CAPACITY, SAMPLE = "link", "nic", "capacity", "sample"
READ = {"source": (START, DATA, CONNECTED, PRETRAIN, PREPARED, ADAPT_START, ADAPT, BATCH, CALIBRATE, INFER, EVAL,
                   BYE, END),
        "server": (START, LISTENING, REQUEST, END),
        "testbed": (LOST, MEMORY),
        "link": (LINK, NIC, CAPACITY, SAMPLE)}

BATCH_COLUMNS = ["run", "arm", "label", "module", "source", "t", "epoch", "batch", "samples", "warmup",
                 "duration_s", "bytes_sent", "bytes_received", "payload_sent", "payload_received", "coded_sent", "loss",
                 "budget", "phase", "lr_scale", "filter_sum", "filter_topb_share", "wait_s", "cpu_s",
                 "compute_s", "encode_s", "rtt_s", "decode_s", "backward_s", "queue_s", "server_decode_s",
                 "server_compute_s", "server_encode_s", "server_s", "network_s", "net_up_s", "net_down_s",
                 "latency_s"]
EVAL_COLUMNS = ["run", "arm", "label", "module", "source", "t", "epoch", "budget", "samples", "accuracy",
                "bytes_sent", "bytes_received", "coded_sent"]
INFER_COLUMNS = ["run", "arm", "label", "module", "source", "t", "epoch", "samples", "latency_s", "compute_s",
                 "encode_s", "rtt_s", "decode_s", "queue_s", "server_decode_s", "server_compute_s",
                 "server_encode_s", "server_s", "network_s", "net_up_s", "net_down_s", "bytes_sent",
                 "bytes_received", "coded_sent"]
SOURCE_COLUMNS = ["run", "arm", "label", "module", "source", "status", "start_s", "end_s", "cpu_share",
                  "peak_rss_mb", "pretrain_s", "memory_peak_mb", "memory_limit_mb"]


class RunDirError(AnalysisError):
    """Nothing can be read from a path; the message says why."""


@dataclass
class Runs:
    batches: pd.DataFrame
    evals: pd.DataFrame
    sources: pd.DataFrame
    events: pd.DataFrame
    manifests: dict[str, dict] = field(default_factory=dict)   # run id -> manifest
    summaries: dict[str, dict] = field(default_factory=dict)   # run id -> summary.json
    problems: list[str] = field(default_factory=list)
    infers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=INFER_COLUMNS))

    @property
    def labels(self) -> list[str]:
        """Arm labels in the order they were run."""
        return list(dict.fromkeys(self.sources["label"])) if len(self.sources) else []


def read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    """Events of one trace; a line that is not a JSON object (a process killed while
    writing) is reported and skipped."""
    try:
        found = jsonl.read(path)
    except OSError as exc:
        problems.append(f"{path}: cannot read ({exc.strerror})")
        return []
    problems += [f"{path}: line {n} is not a complete JSON event (truncated?); skipped" for n in found.bad]
    return found.objects


def _read_json(path: Path, problems: list[str]) -> dict:
    if not path.exists():
        problems.append(f"{path} is missing")
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{path} cannot be read: {exc}")
        return {}


def arm_dirs(run_dir: Path) -> list[Path]:
    """Arm folders in the order they ran (the manifest's order when there is one)."""
    manifest = run_dir / "manifest.json"
    order = []
    if manifest.exists():
        try:
            order = json.loads(manifest.read_text()).get("spec", {}).get("modules", [])
        except ValueError:
            order = []
    found = {p.name: p for p in run_dir.iterdir() if p.is_dir() and any(p.glob("*.jsonl"))}
    return [found[name] for name in order if name in found] + [p for n, p in sorted(found.items()) if n not in order]


def load_runs(paths) -> Runs:
    """Read run directories; raises RunDirError only when nothing at all can be read."""
    problems: list[str] = []
    events, manifests, summaries = [], {}, {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise RunDirError(f"{path} is not a run directory (no such folder)")
        arms = arm_dirs(path)
        if not arms:
            raise RunDirError(f"{path} holds no traces (no <arm>/*.jsonl): is it a run directory?")
        run = path.name
        manifests[run] = _read_json(path / "manifest.json", problems)
        if (path / "summary.json").exists():
            summaries[run] = _read_json(path / "summary.json", problems)
        else:
            problems.append(f"{path / 'summary.json'} is missing (the run did not finish); drawing from the traces")
        for arm in arms:
            events += _arm_events(run, arm, manifests[run], problems)
    return _runs(events, manifests, summaries, problems, "no events in any trace of " + ", ".join(map(str, paths)))


def load_arm(arm_dir, sources: int | None = None) -> Runs:
    """Read one arm folder (``server.jsonl``, ``source-N.jsonl``) alone; ``sources`` is how
    many source traces it should hold. Problems are listed as with ``load_runs``; raises
    RunDirError only when nothing at all can be read."""
    arm = Path(arm_dir)
    if not arm.is_dir():
        raise RunDirError(f"{arm} is not an arm folder (no such folder)")
    problems: list[str] = []
    manifest = {"spec": {"sources": sources}} if sources else {}
    events = _arm_events(arm.parent.name, arm, manifest, problems)
    manifests = {}
    beside = arm.parent / "manifest.json"
    if beside.exists():  # the run's backend: whether sources and server share a clock
        backend = _read_json(beside, []).get("backend")
        if backend:
            manifests[arm.parent.name] = {"backend": backend}
    return _runs(events, manifests, {}, problems, f"no events in any trace of {arm}")


def _runs(events: list[dict], manifests: dict, summaries: dict, problems: list[str], empty: str) -> Runs:
    frame = pd.DataFrame(events)
    if frame.empty:
        raise RunDirError(empty)
    _add_labels(frame)
    return Runs(_batches(frame), _evals(frame), _sources(frame, problems), frame, manifests, summaries, problems,
                infers=_select(frame, INFER, INFER_COLUMNS))


def _arm_events(run: str, arm: Path, manifest: dict, problems: list[str]) -> list[dict]:
    expected = manifest.get("spec", {}).get("sources")
    traces = sorted(arm.glob("source-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))
    if expected:
        missing = [f"source-{i}.jsonl" for i in range(expected) if not (arm / f"source-{i}.jsonl").exists()]
        if missing:
            problems.append(f"{arm}: {len(missing)} of {expected} source traces are missing ({', '.join(missing)})")
    events = []
    for path in [arm / "server.jsonl", *traces]:
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        role = "server" if path.stem == "server" else "source"
        for event in read_jsonl(path, problems):
            event.update(run=run, arm=arm.name, role=event.get("role", role))
            if role == "source":
                event["source"] = int(path.stem.split("-")[1])
            events.append(event)
    if (arm / "testbed.jsonl").exists():  # what the testbed saw: sources lost
        for event in read_jsonl(arm / "testbed.jsonl", problems):
            event.update(run=run, arm=arm.name, role="testbed")
            events.append(event)
    if (arm / "link.jsonl").exists():  # the emulated link: its settings, NIC counters, capacity
        for event in read_jsonl(arm / "link.jsonl", problems):
            if "label" in event:
                event["link_label"] = event.pop("label")
            event.update(run=run, arm=arm.name, role="link")
            events.append(event)
    return events


def _add_labels(frame: pd.DataFrame) -> None:
    start_module = frame.loc[frame["event"] == START, ["run", "arm", "module"]].drop_duplicates(["run", "arm"])
    modules = {(r.run, r.arm): (r.module if isinstance(r.module, str) else r.arm) for r in start_module.itertuples()}
    frame["module"] = [modules.get((r, a), a) for r, a in zip(frame["run"], frame["arm"])]
    pairs = frame[["run", "module"]].drop_duplicates()
    repeated = set(pairs["module"][pairs["module"].duplicated()])
    frame["label"] = [f"{m} ({r})" if m in repeated else m for r, m in zip(frame["run"], frame["module"])]
    # time since the arm started: its first source process start (or its first event)
    first = frame.groupby(["run", "arm"])["t"].transform("min")
    if "process_created" in frame:
        created = frame["process_created"].where((frame["role"] == "source") & (frame["event"] == START))
        first = created.groupby([frame["run"], frame["arm"]]).transform("min").fillna(first)
    frame["t0"] = first
    frame["t_rel"] = frame["t"] - frame["t0"]


def _select(frame: pd.DataFrame, kind: str, columns: list[str]) -> pd.DataFrame:
    rows = frame[(frame["event"] == kind) & (frame["role"] == "source")].copy()
    rows["t"] = rows["t_rel"]
    for column in columns:
        if column not in rows:
            rows[column] = pd.NA
    rows = rows[columns].sort_values(["run", "arm", "source", "t"]).reset_index(drop=True)
    if "source" in rows:
        rows["source"] = rows["source"].astype(int)
    return rows


def _batches(frame: pd.DataFrame) -> pd.DataFrame:
    batches = _select(frame, BATCH, BATCH_COLUMNS)
    batches["warmup"] = batches["warmup"].fillna(False).astype(bool)
    return batches


def _evals(frame: pd.DataFrame) -> pd.DataFrame:
    return _select(frame, EVAL, EVAL_COLUMNS)


def lost_events(frame: pd.DataFrame) -> dict[tuple, dict]:
    """(run, arm, source) -> the testbed's ``lost`` event of that source."""
    if "role" not in frame or "source" not in frame:
        return {}
    lost = frame[(frame["role"] == "testbed") & (frame["event"] == LOST)]
    return {(r["run"], r["arm"], int(r["source"])): r.to_dict() for _, r in lost.iterrows()}


def memory_events(frame: pd.DataFrame) -> dict[tuple, dict]:
    """(run, arm, source) -> the testbed's ``memory`` event of that source."""
    if "role" not in frame or "source" not in frame:
        return {}
    found = frame[(frame["role"] == "testbed") & (frame["event"] == MEMORY)]
    return {(r["run"], r["arm"], int(r["source"])): r.to_dict() for _, r in found.iterrows()}


def _memory_mb(memory: dict, field: str) -> float | None:
    value = memory.get(field)
    return None if value is None or pd.isna(value) else round(float(value) / 2**20, 1)


def _sources(frame: pd.DataFrame, problems: list[str]) -> pd.DataFrame:
    rows = []
    lost = lost_events(frame)
    memory = memory_events(frame)
    sources = frame[frame["role"] == "source"]
    for (run, arm, source), group in sources.groupby(["run", "arm", "source"], sort=False):
        end = group[group["event"] == END]
        start = group[group["event"] == START]
        status = end["status"].iloc[-1] if len(end) else "no end event"
        if (run, arm, int(source)) in lost:
            event = lost[(run, arm, int(source))]
            status = "lost"
            problems.append(f"run {run}, arm {arm}, source {int(source)}: lost ({event.get('cause')}"
                            f"{', injected' if event.get('injected') is True else ''}); its traced batches "
                            f"are still drawn")
        elif status != "ok":
            problems.append(f"run {run}, arm {arm}, source {int(source)}: {status}"
                            + (f" ({end['error'].iloc[-1]})" if len(end) and "error" in end and isinstance(end['error'].iloc[-1], str) else "")
                            + "; its traced batches are still drawn")
        created = start["process_created"].iloc[0] - group["t0"].iloc[0] if len(start) and "process_created" in start else None
        prepared = group[group["event"] == PREPARED]
        rows.append({"run": run, "arm": arm, "label": group["label"].iloc[0], "module": group["module"].iloc[0],
                     "source": int(source), "status": status, "start_s": created,
                     "end_s": end["t_rel"].iloc[-1] if len(end) else group["t_rel"].max(),
                     "cpu_share": _last(end, "cpu_share"), "peak_rss_mb": _last(end, "peak_rss_mb"),
                     "pretrain_s": _last(prepared, "duration_s"), **_memory(memory, (run, arm, int(source)))})
    seen = {(r["run"], r["arm"], r["source"]) for r in rows}
    for (run, arm, source), event in lost.items():  # lost before it traced anything
        if (run, arm, source) not in seen:
            mine = frame[(frame["run"] == run) & (frame["arm"] == arm)]
            problems.append(f"run {run}, arm {arm}, source {source}: lost ({event.get('cause')}) before it "
                            f"traced anything")
            rows.append({"run": run, "arm": arm, "label": mine["label"].iloc[0], "module": mine["module"].iloc[0],
                         "source": source, "status": "lost", "start_s": None, "end_s": event.get("t_rel"),
                         "cpu_share": None, "peak_rss_mb": None, "pretrain_s": None,
                         **_memory(memory, (run, arm, source))})
    order = {key: i for i, key in enumerate(dict.fromkeys((r["run"], r["arm"]) for r in rows))}
    rows.sort(key=lambda r: (order[(r["run"], r["arm"])], r["source"]))  # arms in the order they ran
    return pd.DataFrame(rows, columns=SOURCE_COLUMNS)


def _memory(memory: dict, key: tuple) -> dict:
    found = memory.get(key, {})
    return {"memory_peak_mb": _memory_mb(found, "peak_bytes"), "memory_limit_mb": _memory_mb(found, "limit_bytes")}


def _last(rows: pd.DataFrame, column: str):
    """The last traced value of a column in these rows, None when absent."""
    if not len(rows) or column not in rows:
        return None
    value = rows[column].iloc[-1]
    return None if pd.isna(value) else value
