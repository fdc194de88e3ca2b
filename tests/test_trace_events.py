"""The trace events' contract (workloads/events.py): what a real run writes matches the
declarations, every declaration is written by its writer's code, and the names analysis
reads (analysis/load.py, which cannot import workloads) are all declared."""
import re
import signal

import pytest

from analysis import jsonl, load
from conftest import REPO
from workloads import events
from workloads.trace import TraceWriter

pytestmark = pytest.mark.quick

RUN = ["run", "--backend", "inproc", "--module", "filter", "--sources", 2, "--batches", 3, "--epochs", 2,
       "--model", "vgg11-slim", "--batch-size", 8, "--eval-samples", 16, "--dataset", "synthetic", "--bn-batches", 2,
       "--quiet", "--no-report"]  # filter: the module with fields of its own in batch and eval

# where each writer's events are written, and how a line there names one
WRITERS = {
    events.ROLE_SOURCE: (["workloads/source.py", "workloads/inprocess.py", "workloads/compression/*.py"],
                         r'\.event\(\s*(?:events\.{const}\b|"{name}")'),
    events.ROLE_SERVER: (["workloads/server.py", "workloads/inprocess.py"], r'\.event\(\s*events\.{const}\b'),
    events.ROLE_TESTBED: (["testbed/local.py", "testbed/k8s/collect.py"], r'"event":\s*(?:events\.)?{const}\b'),
    events.ROLE_LINK: (["testbed/links/arm.py", "testbed/links/controller.py"], r'\.?_?event\(\s*events\.{const}\b'),
}
CONSTANT = {getattr(events, k): k for k in dir(events)
            if k.isupper() and not k.startswith("ROLE_") and isinstance(getattr(events, k), str)
            and getattr(events, k) in events.NAMES}


def _role(path) -> str:
    return {"server": events.ROLE_SERVER, "testbed": events.ROLE_TESTBED,
            "link": events.ROLE_LINK}.get(path.stem, events.ROLE_SOURCE if path.stem.startswith("source-") else None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from testbed.cli import main
    out = tmp_path_factory.mktemp("events") / "run"
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert main([str(a) for a in RUN + ["--out", out]]) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    return out


def test_every_event_of_a_run_matches_its_declaration(run_dir):
    traces = sorted(run_dir.glob("*/*.jsonl"))
    assert {p.parent.name for p in traces} == {"filter"} and len(traces) == 3
    wrong, seen = [], set()
    for path in traces:
        role = _role(path)
        found = jsonl.read(path)
        assert found.bad == [], path
        for record in found.objects:
            seen.add((role, record["event"]))
            wrong += [f"{path.relative_to(run_dir)}: {p}" for p in events.problems(role, record)]
            if role in (events.ROLE_SOURCE, events.ROLE_SERVER) and record["role"] != role:
                wrong.append(f"{path.relative_to(run_dir)}: role {record['role']!r}")
    assert wrong == []
    # the run wrote what a run of this kind writes (link, adapt, drop, lost, module pretraining need other runs)
    assert {(events.ROLE_SOURCE, n) for n in (events.START, events.DATA, events.CONNECTED, events.PREPARED,
                                             events.BATCH, events.CALIBRATE, events.INFER, events.EVAL,
                                             events.BYE, events.END)} <= seen
    assert {(events.ROLE_SERVER, n) for n in (events.START, events.LISTENING, events.HELLO, events.REQUEST,
                                             events.BYE, events.END)} <= seen


def test_every_declaration_is_written_by_its_writer_and_its_fields_by_the_code():
    code = {writer: "\n".join(p.read_text() for pattern in files for p in sorted(REPO.glob(pattern)))
            for writer, (files, _) in WRITERS.items()}
    package = {"workloads": "\n".join(p.read_text() for p in sorted((REPO / "workloads").rglob("*.py"))
                                      if p.name != "events.py"),
               "testbed": "\n".join(p.read_text() for p in sorted((REPO / "testbed").rglob("*.py")))}
    unwritten, unknown = [], []
    for event in events.DECLARATIONS:
        assert event.name in CONSTANT, f"{event.name}: no constant in workloads/events.py"
        files, pattern = WRITERS[event.writer]
        if not re.search(pattern.format(const=CONSTANT[event.name], name=event.name), code[event.writer]):
            unwritten.append(f"{event.writer} {event.name}")
        text = package["workloads" if event.writer in (events.ROLE_SOURCE, events.ROLE_SERVER) else "testbed"]
        unknown += [f"{event.writer} {event.name}.{f}" for f in event.names
                    if not re.search(rf'\b{f}=|"{f}"', text)]
    assert unwritten == [], "declared but written nowhere"
    assert unknown == [], "declared fields the code never names"


def test_no_writer_names_an_event_by_a_string_literal_outside_the_compression_modules():
    literal = re.compile(r'(?:\.event\(|_event\(|"event":\s*)"([a-z_]+)"')
    for files in ["workloads/*.py", "testbed/**/*.py"]:
        for path in REPO.glob(files):
            assert literal.findall(path.read_text()) == [], path


def test_every_module_s_own_batch_and_eval_fields_are_declared():
    from workloads.compression import CompressionConfig, available, create_source, get
    from workloads.models import build_split_model

    batch = events.DECLARED[events.ROLE_SOURCE, events.BATCH]
    evaluation = events.DECLARED[events.ROLE_SOURCE, events.EVAL]
    for name in available():
        cut = build_split_model("vgg11-slim", get(name).split_for(2), 10).cut_shape
        part = create_source(name, cut, CompressionConfig())
        assert set(part.describe()) <= {f.name for f in batch.fields if f.optional}, name
        assert set(part.eval_state()) <= {f.name for f in evaluation.fields if f.optional}, name


def test_the_events_analysis_reads_are_declared_with_the_columns_it_takes_from_them():
    for role, names in load.READ.items():
        for name in names:
            events.check(role, name)
    added = {"run", "arm", "label", "module", "source", "t"}  # analysis's own, or the envelope's
    for name, columns in ((load.BATCH, load.BATCH_COLUMNS), (load.EVAL, load.EVAL_COLUMNS),
                          (load.INFER, load.INFER_COLUMNS)):
        assert set(columns) - added <= set(events.DECLARED[events.ROLE_SOURCE, name].names), name


def test_a_writer_refuses_an_undeclared_event(tmp_path):
    with TraceWriter(str(tmp_path / "t.jsonl"), run="r", role="source", source=0) as trace:
        with pytest.raises(events.UndeclaredEvent, match="'batchh' is not declared for the source"):
            trace.event("batchh", epoch=0)
        with pytest.raises(events.UndeclaredEvent):
            trace.event(events.LISTENING)  # the server's, not a source's
        trace.event(events.DROP, after_s=1.0)
    assert [e["event"] for e in jsonl.read(tmp_path / "t.jsonl").objects] == [events.DROP]


def test_the_table_has_a_row_per_declaration():
    table = events.markdown_table().splitlines()
    assert len(table) == 2 + len(events.DECLARATIONS)
    assert "| `batch` | source (`source-N.jsonl`) |" in events.markdown_table()
