"""The live view of an arm (testbed/armview.py, testbed/progress.py, testbed/liveview.py) without a fleet:
synthetic trace lines written as the programs write them, read by the feeds, counted by
the one model, rendered by the terminal view and by the lines display."""
import io
import json
from types import SimpleNamespace

import pytest

from testbed.armview import ArmView, TraceFeed
from testbed.k8s.collect import trace_of
from testbed.k8s.stream import StreamFeed
from testbed.progress import LINES, LIVE, SILENT, Progress, display_mode, open_progress

rich = pytest.importorskip("rich")
from rich.console import Console  # noqa: E402

from testbed.liveview import LiveView, render, visible  # noqa: E402

RUN = "20260101-000000-abcdef/filter"
T0 = 1_800_000_000.0


def source_event(i, event, t, **fields):
    return {"t": t, "run": RUN, "role": "source", "source": i, "event": event, **fields}


def server_event(event, t, **fields):
    return {"t": t, "run": RUN, "role": "server", "source": None, "event": event, **fields}


def batch(i, t, epoch, number, *, duration=0.5, sent=1000, received=2000, samples=16, loss=2.0):
    return source_event(i, "batch", t, epoch=epoch, batch=number, samples=samples, warmup=epoch == 0 and number == 0,
                        duration_s=duration, latency_s=duration, bytes_sent=sent, bytes_received=received, loss=loss,
                        budget=4, phase=0)


def request(t, duration, op="grad", peer=0):
    return server_event("request", t, peer=peer, op=op, bytes_in=1000, bytes_out=2000, duration_s=duration)


def write(path, records, *, partial=""):
    with open(path, "a") as out:
        out.write("".join(json.dumps(r) + "\n" for r in records) + partial)


def arm_traces(folder):
    """Three sources of 4 batches x 1 epoch: source 0 done (its warm-up 1 s, then 3 steps
    of 16 samples in 0.5 s each), source 1 half-way, source 2 lost after one batch; the
    server busy 0.3 s of every second of training."""
    write(folder / "source-0.jsonl", [
        source_event(0, "start", T0, pid=1, module="filter"),
        source_event(0, "connected", T0 + 1),
        batch(0, T0 + 2, 0, 0, duration=1.0, sent=5000), batch(0, T0 + 3, 0, 1), batch(0, T0 + 4, 0, 2),
        batch(0, T0 + 5, 0, 3, loss=1.25),
        source_event(0, "eval", T0 + 6, epoch=0, budget=4, samples=64, accuracy=0.75, bytes_sent=10, bytes_received=10,
                     coded_sent=5),
        source_event(0, "bye", T0 + 7, bytes_sent=10, bytes_received=10),
        source_event(0, "end", T0 + 7, status="ok", cpu_seconds=1, wall_seconds=2, cpu_share=0.4, peak_rss_mb=1)])
    write(folder / "source-1.jsonl", [batch(1, T0 + 2, 0, 0), batch(1, T0 + 3, 0, 1)],
          partial='{"t": 1800000004.0, "run": "')  # a line still being written
    write(folder / "source-2.jsonl", [batch(2, T0 + 2, 0, 0)])
    write(folder / "testbed.jsonl", [{"t": T0 + 3.5, "run": RUN, "role": "testbed", "source": 2, "event": "lost",
                                      "cause": "killed by SIGKILL", "signal": "SIGKILL", "exit_status": None,
                                      "injected": False}])
    write(folder / "server.jsonl", [
        server_event("listening", T0, port=5555), server_event("hello", T0 + 1, peer=0),
        request(T0 + 1, 0.01, op="welcome"),      # before the training window: left out
        request(T0 + 2, 0.3),                     # the window opens at its start, T0 + 1.7
        request(T0 + 3, 0.3), request(T0 + 4, 0.3), request(T0 + 5, 0.3, peer=1)])  # and closes at T0 + 5


@pytest.fixture
def arm(tmp_path):
    arm_traces(tmp_path)
    view = ArmView("filter", 3, 4, 1)
    feed = TraceFeed(tmp_path, 3)
    notes = [n for role, index, event in feed() for n in view.apply(role, index, event)]
    return SimpleNamespace(view=view, notes=notes, folder=tmp_path, feed=feed)


def text_of(renderable, width=140):
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


@pytest.mark.quick
def test_the_model_counts_batches_rates_bytes_the_lost_source_and_the_servers_busy_time(arm):
    done, half, lost = arm.view.sources
    assert (done.batches, half.batches, lost.batches) == (4, 2, 1)  # the half-written line not yet
    assert done.samples_per_s == pytest.approx(48 / 1.5)  # the warm-up left out, as the summary does
    assert done.mb_sent == pytest.approx(8000 / 1e6) and done.mb_received == pytest.approx(8000 / 1e6)
    assert (done.state, done.loss, done.accuracy, done.cpu_share) == ("done", 1.25, 0.75, 0.4)
    assert (half.state, half.samples_per_s) == ("training", pytest.approx(32.0))
    assert (lost.state, lost.cause, lost.samples_per_s) == ("lost", "killed by SIGKILL", None)
    assert arm.view.mb_sent == pytest.approx(11000 / 1e6)
    assert arm.view.batches_done == 7
    # 4 training steps of 0.3 s in the window from T0 + 1.7 to T0 + 5
    assert arm.view.server.busy == pytest.approx(1.2 / 3.3)
    assert (arm.view.server.state, arm.view.server.requests) == ("serving", 5)
    # the line once complete is read the next time, once
    write(arm.folder / "source-1.jsonl", [], partial='x"}\n')  # the rest of the damaged line: skipped
    write(arm.folder / "source-1.jsonl", [batch(1, T0 + 4, 0, 2)])
    for role, index, event in arm.feed():
        arm.view.apply(role, index, event)
    assert half.batches == 3


@pytest.mark.quick
def test_the_lines_display_prints_todays_facts(arm, tmp_path):
    texts = [n.text for n in arm.notes]
    assert "  [filter] source 0 epoch 1/1: budget 4, loss 1.250, test accuracy 75.0%" in texts
    assert "  [filter] source 0 done, CPU share 0.4" in texts
    assert "  [filter] source 2 lost: killed by SIGKILL" in texts
    assert [n.alert for n in arm.notes if "lost" in n.text] == [True]
    status = arm.view.status_line()
    assert status.startswith("  [filter] batches done per source: 4 2 1 (of 4); sent 0.011 MB, received 0.014 MB")
    assert "server busy 36%" in status and "lost or failed: 2" in status
    # Progress with the lines display: every note, then a last status line when closed
    folder = tmp_path / "again"
    folder.mkdir()
    arm_traces(folder)
    said = []
    progress = Progress(folder, "filter", 3, 4, 1, write=said.append)
    progress.update()
    progress.close()
    progress.close()  # once
    assert said[:-1] == texts and said[-1] == status


@pytest.mark.quick
def test_the_lines_display_says_the_status_again_only_when_it_changed(tmp_path, monkeypatch):
    import testbed.progress

    monkeypatch.setattr(testbed.progress, "STATUS_EVERY_S", 0.0)
    said = []
    progress = Progress(tmp_path, "none", 1, 2, 1, write=said.append)
    progress.update()
    progress.update()
    write(tmp_path / "source-0.jsonl", [batch(0, T0, 0, 0)])
    progress.update()
    progress.close()
    assert said == ["  [none] batches done per source: 0 (of 2); sent 0.000 MB, received 0.000 MB",
                    "  [none] batches done per source: 1 (of 2); sent 0.001 MB, received 0.002 MB"]


@pytest.mark.quick
def test_the_terminal_view_shows_a_bar_per_source_the_lost_mark_and_the_arms_totals(arm):
    text = text_of(render(arm.view, elapsed_s=83))
    lines = text.splitlines()
    assert "arm filter  3 sources, 4 batches x 1 epoch  1:23" in lines[0]
    row = {line.split()[0]: line for line in lines[2:5]}
    assert "4/4" in row["0"] and "32.0" in row["0"] and "0.01" in row["0"] and "75.0%" in row["0"] and "done" in row["0"]
    assert "2/4" in row["1"] and "training" in row["1"]
    assert "1/4" in row["2"] and "lost: killed by SIGKILL" in row["2"]
    assert "█" * 24 in row["0"] and "█" * 12 + "░" * 12 in row["1"] and "█" * 6 + "░" * 18 in row["2"]  # the bars
    footer = lines[-1]
    assert "sent 0.011 MB" in footer and "received 0.014 MB" in footer and "batches 7/12" in footer
    assert "busy 36%" in footer and "lost or failed: 1" in footer


@pytest.mark.quick
def test_many_sources_keep_the_failed_and_the_slowest_rows_and_summarise_the_rest():
    view = ArmView("none", 64, 8, 1)
    for s in view.sources:
        s.batches, s.state = (8, "done") if s.index % 2 else (4 + s.index % 4, "training")
    view.sources[40].state, view.sources[40].cause = "lost", "exit status 2: boom"
    shown, rest = visible(view, 10)
    assert len(shown) == 9 and len(rest) == 55
    assert shown[0].index == 0 and 40 in [s.index for s in shown]  # the lost one first, then the slowest
    assert all(s.batches == 4 or s.failed for s in shown)
    text = text_of(render(view, rows=10))
    assert len(text.splitlines()) == 1 + 1 + 10 + 1  # header, column titles, 10 rows, footer
    assert "+55" in text and "done" in text and "lost: exit status 2: boom" in text
    assert f"min 4, median 8, max 8 of 8" in text


@pytest.mark.quick
def test_the_live_view_refreshes_in_place_and_leaves_its_last_frame(arm):
    console = Console(file=io.StringIO(), width=140, height=40, force_terminal=True, color_system=None)
    live = LiveView(arm.view, console=console, refresh_s=0.0)
    live.refresh()
    live.log("source 2 lost: killed by SIGKILL")
    live.refresh()
    live.stop()
    out = console.file.getvalue()
    assert "\x1b[" in out  # cursor movements: drawn over itself
    assert "source 2 lost: killed by SIGKILL" in out
    assert "\x1b[?25l" in out and out.endswith("\x1b[?25h")  # the cursor hidden while it shows, then back
    last = out.rstrip().splitlines()[-2]
    assert last.startswith("sent 0.011 MB"), repr(out)  # the last frame stays: its footer last


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.quick
def test_the_display_is_live_on_a_terminal_lines_when_piped_and_nothing_when_quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("TERM", "xterm-256color")
    assert display_mode(print, Tty()) == LIVE
    assert display_mode(print, io.StringIO()) == LINES  # piped to a file
    monkeypatch.setenv("TERM", "dumb")
    assert display_mode(print, Tty()) == LINES
    monkeypatch.setenv("TERM", "xterm-256color")
    quiet = lambda *a, **k: None  # noqa: E731 -- what testbed.cli gives a --quiet command
    assert display_mode(quiet, Tty()) == SILENT
    spec = SimpleNamespace(sources=2, batches=4, epochs=1)
    assert open_progress(tmp_path, "none", spec, quiet, stream=Tty()) is None
    assert open_progress(tmp_path, "none", spec, print, stream=io.StringIO()).live is None
    shown = open_progress(tmp_path, "none", spec, print, stream=Tty())
    shown.close()
    assert "none\x1b[0m  2 sources, 4 batches x 1 epoch" in shown.live.console.file.getvalue()  # in colour


@pytest.mark.quick
@pytest.mark.parametrize("quiet", [True, False])
def test_testbed_run_quiet_gives_no_display(monkeypatch, quiet):
    """What `testbed run` hands its backend as ``say``: with --quiet, no display at all."""
    import testbed.cli as cli

    seen = {}

    def run(args, say):
        seen["mode"] = display_mode(say, Tty())
        return 0

    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setitem(cli.COMMANDS, "run", run)
    assert cli.main(["run", *(["--quiet"] if quiet else [])]) == 0
    assert seen["mode"] == (SILENT if quiet else LIVE)


def pod(name, component, index=None, phase="Running", terminated=None):
    annotations = {} if index is None else {"batch.kubernetes.io/job-completion-index": str(index)}
    state = SimpleNamespace(terminated=SimpleNamespace(**terminated) if terminated else None)
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, labels={"app.kubernetes.io/component": component},
                                 annotations=annotations),
        status=SimpleNamespace(phase=phase, reason=None, message=None,
                               container_statuses=[SimpleNamespace(state=state)]))


def stamped(records, base="2026-11-21T10:00:00", other=()):
    """Lines as the log stream gives them: a kubelet timestamp, then the program's line."""
    lines = [*other, *(json.dumps(r) for r in records)]
    return "".join(f"{base}.{i:06d}000Z {line}\n" for i, line in enumerate(lines))


@pytest.mark.quick
def test_the_k8s_feed_reads_the_streamed_pod_logs(tmp_path):
    stream = tmp_path / "_stream"
    stream.mkdir()
    # the pod's source index is its Job completion index, whatever its name says
    (stream / "rel-sources-0-abcde.log").write_text(
        stamped([batch(0, T0 + 2, 0, 0, duration=1.0), batch(0, T0 + 3, 0, 1), batch(0, T0 + 4, 0, 2)],
                other=["testbed: loading data", "not json {"]))
    (stream / "rel-sources-1-fghij.log").write_text(stamped([batch(1, T0 + 2, 0, 0)]))
    (stream / "rel-server-xyz.log").write_text(stamped([server_event("listening", T0), request(T0 + 2, 0.5),
                                                        request(T0 + 3, 0.5)]))
    (stream / "rel-test-probe.log").write_text(stamped([server_event("request", T0, op="pong")]))
    pods = {"rel-sources-0-abcde": pod("rel-sources-0-abcde", "source", 1),
            "rel-sources-1-fghij": pod("rel-sources-1-fghij", "source", 0, phase="Failed",
                                       terminated={"exit_code": 137, "reason": "OOMKilled", "signal": None,
                                                   "message": None, "finished_at": None}),
            "rel-server-xyz": pod("rel-server-xyz", "server"),
            "rel-test-probe": pod("rel-test-probe", "test")}
    assert trace_of(pods["rel-server-xyz"]) == ("server", None) and trace_of(pods["rel-test-probe"]) is None
    said = []
    progress = Progress(tmp_path, "filter", 2, 4, 1, write=said.append, feed=StreamFeed(stream, lambda: pods))
    progress.update()
    first, second = progress.arm.sources
    assert (second.batches, second.samples_per_s, second.mb_sent) == (3, pytest.approx(32.0), pytest.approx(0.003))
    assert (first.batches, first.state) == (1, "lost")
    assert first.cause == "out of memory (OOMKilled, exit code 137)"
    assert "  [filter] source 0 lost: out of memory (OOMKilled, exit code 137)" in said
    assert progress.arm.server.busy == pytest.approx(1.0 / 1.5)  # the probe's request is not the server's
    # a line written later (and one half-written) is read once, when complete
    with open(stream / "rel-sources-0-abcde.log", "a") as out:
        out.write(stamped([batch(0, T0 + 5, 0, 3)], base="2026-11-21T10:00:01") + '2026-11-21T10:00:02Z {"t":')
    progress.update()
    progress.update()
    assert second.batches == 4
    # lines without a timestamp (as the streamer keeps them) read the same; a pod not listed yet: its envelope
    (stream / "rel-sources-2-new.log").write_text(json.dumps(batch(1, T0 + 2, 0, 1)) + "\n")
    progress.update()
    assert second.batches == 5
    text = text_of(render(progress.arm))
    assert "lost: out of memory (OOMKilled, exit code 137)" in text and "busy 67%" in text
