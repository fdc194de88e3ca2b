"""Emulated links: the options' values, trace files, the plan, and the real network
(namespaces, veths, htb, IFB) built, carrying traffic through its shapers, re-rated by
the controller, and gone after success, failure and Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import REPO, TINY, cgroups_of, read_jsonl, run_testbed
from testbed import local
from testbed.errors import BackendError
from testbed.links.network import Network, inside, list_namespaces, probe_kernel, SERVER_ADDRESS, source_address
from testbed.links.plan import LinkError, plan_links
from testbed.links.schedule import FLOOR_BPS, TraceFileError, read_schedule
from testbed.links.values import Rate, cycle, format_rate, parse_delay, parse_loss, parse_rate, parse_updown, per_source
from testbed.local import run_arm
from testbed.spec import RunSpec

KERNEL = probe_kernel() if sys.platform.startswith("linux") else {"rights": "not Linux"}
needs_namespaces = pytest.mark.skipif(KERNEL["rights"] is not True,
                                      reason=f"needs rights to make network namespaces: {KERNEL['rights']}")


def ours(pid=None):
    """The network namespaces testbed process ``pid`` (default: this one) made."""
    return [n for n in list_namespaces() if n.startswith(f"splittest-{pid or os.getpid()}-")]


def controllers():
    return [p for p in psutil.Process().children(recursive=True) if "testbed.links.controller" in _cmd(p)]


def _cmd(p):
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


# -- values ---------------------------------------------------------------------------------

@pytest.mark.quick
def test_rates_delays_and_losses_parse_to_exact_values():
    assert parse_rate("5mbit") == 5_000_000
    assert parse_rate("1.5Mbit") == 1_500_000
    assert parse_rate("100kbit") == 100_000
    assert parse_rate("2mbps") == 16_000_000  # tc's bps: bytes per second
    assert parse_updown("2mbit/20mbit") == Rate(2_000_000, 20_000_000)
    assert str(Rate(5_000_000, 5_000_000)) == "5mbit" and str(Rate(2_000_000, 20_000_000)) == "2mbit/20mbit"
    assert format_rate(1_500_000) == "1.5mbit"
    assert parse_delay("20ms") == 20.0 and parse_delay("0.5s") == 500.0 and parse_delay("300us") == 0.3
    assert parse_loss("1%") == 0.01 and parse_loss("0.02") == 0.02
    assert per_source("2mbit,5mbit", parse_rate, "--bandwidth") == [2_000_000, 5_000_000]
    assert cycle([1, 2], 5) == [1, 2, 1, 2, 1]


@pytest.mark.quick
@pytest.mark.parametrize("text, parse, message", [
    ("5 mbits", parse_rate, "--bandwidth: '5 mbits' is not a rate"),
    ("fast", parse_rate, "--bandwidth: 'fast' is not a rate"),
    ("1bit", parse_rate, "--bandwidth: 1bit is outside 8kbit..100gbit"),
    ("1mbit/2mbit/3mbit", parse_updown, "--bandwidth: '1mbit/2mbit/3mbit' is not RATE or UP/DOWN"),
    ("20", parse_delay, "--delay: '20' is not a delay"),
    ("100%", parse_loss, "--loss: 100% must be at least 0 and below 100%"),
])
def test_bad_values_are_one_line_errors_naming_the_option(text, parse, message):
    with pytest.raises(ValueError) as error:
        parse(text, {"parse_rate": "--bandwidth", "parse_updown": "--bandwidth", "parse_delay": "--delay",
                     "parse_loss": "--loss"}[parse.__name__])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# -- trace files ------------------------------------------------------------------------------

@pytest.mark.quick
def test_a_mahimahi_trace_becomes_a_rate_per_100_ms_that_repeats(tmp_path):
    # 10 packets in each of the first 5 bins (1.2 Mbit/s), none in the next 5, then one at 1000 ms
    lines = [str(ms) for b in range(5) for ms in [b * 100 + 5] * 10] + ["1000"]
    path = tmp_path / "link.up"
    path.write_text("\n".join(lines) + "\n")
    schedule = read_schedule(path)
    assert schedule.rates[:5] == (1_200_000,) * 5
    assert schedule.rates[5:9] == (FLOOR_BPS,) * 4  # nothing may cross: the floor, not zero
    assert schedule.period_s == pytest.approx(1.0)
    assert schedule.rate_at(1.05) == 1_200_000  # it repeats


@pytest.mark.quick
def test_a_csv_trace_holds_each_rate_until_the_next_and_the_last_to_the_end(tmp_path):
    path = tmp_path / "drop.csv"
    path.write_text("seconds,mbit_per_s\n0,20\n10,2\n20,20\n")
    schedule = read_schedule(path)
    assert (schedule.rate_at(5), schedule.rate_at(15), schedule.rate_at(25), schedule.rate_at(999)) == \
        (20_000_000, 2_000_000, 20_000_000, 20_000_000)


@pytest.mark.quick
@pytest.mark.parametrize("content, message", [
    ("10\n5\n", "line 2: times must not decrease"),
    ("10\nabc\n", "line 2: 'abc' is not a time in whole milliseconds"),
    ("", "holds no delivery times or rates"),
    ("0,20\n5,x\n", "line 2: expected seconds,Mbit/s"),
])
def test_a_bad_trace_file_is_one_line_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.up"
    path.write_text(content)
    with pytest.raises(TraceFileError) as error:
        read_schedule(path)
    assert str(error.value).startswith(f"--link-trace: {path}") and message in str(error.value)


# -- the plan ------------------------------------------------------------------------------------

@pytest.mark.quick
def test_lists_give_each_source_its_own_link_and_a_shared_medium_one_channel():
    plan = plan_links({"bandwidth": "2mbit,5mbit/1mbit"}, 3)
    assert [(s.up, s.down) for s in plan.sources] == [(2_000_000, 2_000_000), (5_000_000, 1_000_000),
                                                      (2_000_000, 2_000_000)]
    assert plan.label == "2mbit,5mbit/1mbit dedicated" and plan.duplex == "full"
    shared = plan_links({"bandwidth": "5mbit", "medium": "shared"}, 2)
    assert shared.channel == Rate(5_000_000, 5_000_000) and shared.duplex == "half"
    assert plan_links({"bandwidth": "2mbit/20mbit", "medium": "shared"}, 2).duplex == "full"
    wifi = plan_links({"link": "wifi"}, 2)
    assert (wifi.medium, wifi.profile_delay_ms, wifi.label) == ("shared", 2.0, "wifi 65mbit shared")
    assert plan_links({}, 2) is None
    with pytest.raises(LinkError, match="--medium shared has one channel"):
        plan_links({"bandwidth": "1mbit,2mbit", "medium": "shared"}, 2)
    with pytest.raises(LinkError, match="a link needs a rate"):
        plan_links({"loss": "1%"}, 2)


# -- the real network -------------------------------------------------------------------------------

def _transfer(net: Network, source: int, up: int, down: int) -> None:
    """``up`` bytes from source ``source`` to the server and ``down`` back, over TCP
    sockets opened inside their namespaces."""
    with inside(net.server_ns):
        listener = socket.create_server((SERVER_ADDRESS, 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        got = 0
        while got < up:
            got += len(conn.recv(65536))
        conn.sendall(b"d" * down)
        conn.close()
    thread = threading.Thread(target=serve)
    thread.start()
    with inside(net.source_ns[source]):
        client = socket.create_connection((SERVER_ADDRESS, port), timeout=30)
    client.sendall(b"u" * up)
    got = 0
    while got < down:
        got += len(client.recv(65536))
    client.close()
    thread.join(30)
    listener.close()


def _class_bytes(namespace: str, device: str) -> int:
    from testbed.links.network import _index, _ipr
    with _ipr(namespace) as ip:
        for cls in ip.get_classes(index=_index(ip, device)):
            if cls["handle"] == 0x10010:
                return cls.get_attr("TCA_STATS2").get_attr("TCA_STATS_BASIC")["bytes"]
    raise AssertionError(f"no class 1:10 on {device}")


@needs_namespaces
def test_a_dedicated_link_shapes_each_direction_on_its_own_and_counts_wire_packets():
    net = Network(plan_links({"bandwidth": "50mbit/40mbit"}, 2), netem=False)
    try:
        net.build()
        assert {(s["device"], s["direction"], s["source"], s["bps"]) for s in net.shapers} == {
            ("eth0", "up", 0, 50_000_000), ("h0", "down", 0, 40_000_000),
            ("eth0", "up", 1, 50_000_000), ("h1", "down", 1, 40_000_000)}
        before = net.counters(0)
        _transfer(net, 0, 300_000, 100_000)
        after = net.counters(0)
        sent, received = after["tx_bytes"] - before["tx_bytes"], after["rx_bytes"] - before["rx_bytes"]
        assert sent > 300_000 and received > 100_000  # every header counted
        # offload off: no packet larger than the MTU, so at least one packet per 1448-byte segment
        assert after["tx_packets"] - before["tx_packets"] >= 300_000 // 1448
        assert _class_bytes(net.source_ns[0], "eth0") >= 300_000  # the uplink went through source 0's shaper
        assert _class_bytes(net.hub, "h0") >= 100_000             # the downlink through the hub's port
        assert _class_bytes(net.hub, "h1") < 10_000                # and not through source 1's
        assert source_address(1) == "10.77.0.11"
    finally:
        net.remove()
    assert ours() == []


@needs_namespaces
def test_a_shared_medium_with_one_rate_queues_both_directions_of_every_source_in_one_channel():
    net = Network(plan_links({"bandwidth": "50mbit", "medium": "shared"}, 2), netem=False)
    try:
        net.build()
        assert [(s["device"], s["direction"], s["source"]) for s in net.shapers] == [("ifbb", "both", None)]
        _transfer(net, 0, 200_000, 50_000)
        _transfer(net, 1, 50_000, 200_000)
        assert _class_bytes(net.hub, "ifbb") >= 500_000  # all four transfers crossed the one channel
    finally:
        net.remove()
    assert ours() == []


@needs_namespaces
def test_the_controller_follows_the_trace_and_samples_the_counters(tmp_path):
    trace = tmp_path / "steps.csv"
    trace.write_text("0,30\n0.3,3\n")
    plan = plan_links({"link_trace": str(trace)}, 1)
    from testbed.links.arm import ArmLinks
    arm = ArmLinks(plan, KERNEL, tmp_path)
    try:
        arm.build()
        proc = subprocess.Popen([sys.executable, "-m", "testbed.links.controller", *arm.controller_argv()],
                                cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e.get("bps") == 3_000_000 for e in read_jsonl(arm.path)):
                break
            time.sleep(0.1)
        arm.stop_controller(proc)
        assert proc.returncode == 0
        arm.finish()
        rate = _class_rate(arm.network.source_ns[0], "eth0")
    finally:
        arm.remove()
    events = read_jsonl(tmp_path / "link.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "link" and kinds.count("nic") == 2 and "sample" in kinds
    capacity = [(e["direction"], e["bps"]) for e in events if e["event"] == "capacity"]
    assert capacity[:2] == [("up", 30_000_000), ("down", 30_000_000)]
    assert ("up", 3_000_000) in capacity and ("down", 3_000_000) in capacity
    assert rate == 3_000_000 // 8  # the kernel's class holds the trace's rate (bytes/s)
    assert ours() == []


def _class_rate(namespace: str, device: str) -> int:
    from testbed.links.network import _index, _ipr
    with _ipr(namespace) as ip:
        for cls in ip.get_classes(index=_index(ip, device)):
            if cls["handle"] == 0x10010:
                return cls.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_PARMS")["rate"]
    raise AssertionError("no class 1:10")


# -- a run with links: its files, and nothing left after success, failure and Ctrl-C ----------

@needs_namespaces
def test_a_bandwidth_sweep_runs_each_rate_on_its_shaped_link_and_leaves_nothing(tmp_path, port):
    """``--sweep-bandwidth``: a trial per rate (testbed sweep's layout), each a run on its own link."""
    out = tmp_path / "sweep"
    result = run_testbed("run", "--sources", "1", "--cpu", "1", "--batches", "2", "--epochs", "1", *TINY,
                         "--sweep-bandwidth", "50mbit,20mbit", "--medium", "shared", "--module", "none", "--out", out,
                         "--port", port, "--quiet", "--no-report")  # the trials' own reports: the sweep draws its own
    assert result.returncode == 0, result.stderr
    rows = {r["trial"]: r for r in json.loads((out / "sweep.json").read_text())["trials"]}
    assert list(rows) == ["none-bandwidth-50mbit", "none-bandwidth-20mbit"]
    assert [rows[t]["metrics"]["link_up_bps"] for t in rows] == [50e6, 20e6]  # the shared channel's rate
    assert rows["none-bandwidth-50mbit"]["params"] == {"sources": 1, "cpu": 1.0, "batches": 2, "epochs": 1,
                                                       "model": "vgg11-slim", "batch_size": 8, "eval_samples": 16,
                                                       "dataset": "synthetic", "medium": "shared", "port": port,
                                                       "no_report": True, "module": "none", "bandwidth": "50mbit"}
    run = out / "trials" / "none-bandwidth-50mbit"  # an ordinary run folder
    events = read_jsonl(run / "none" / "link.jsonl")
    link = events[0]
    assert link["event"] == "link" and link["label"] == "50mbit shared" and link["duplex"] == "half"
    nic = {(e["source"], e["phase"]): e for e in events if e["event"] == "nic"}
    traced = sum(e.get("bytes_sent", 0) for e in read_jsonl(run / "none" / "source-0.jsonl")
                 if e["event"] in ("connected", "batch", "eval", "bye"))
    assert nic[(0, "end")]["tx_bytes"] - nic[(0, "start")]["tx_bytes"] > traced  # wire bytes exceed the app's
    server_start = next(e for e in read_jsonl(run / "none" / "server.jsonl") if e["event"] == "start")
    assert server_start["settings"]["bind"] == SERVER_ADDRESS  # the server is on the emulated network
    assert json.loads((run / "summary.json").read_text())["arms"]["none"]["link"] == "50mbit shared"
    assert (out / "report" / "throughput_vs_bandwidth.png").stat().st_size > 5000  # the sweep's figure of rates
    assert "| none | - |  | 20mbit | 1 |" in (out / "report" / "sweep.md").read_text()
    for trial in rows:
        assert ours(_pid_of(out / "trials" / trial)) == []
    assert controllers() == []


def _pid_of(out):
    """The testbed's pid, from the namespace names its link.jsonl records."""
    link = read_jsonl(next(out.glob("*/link.jsonl")))[0]
    return int(link["namespaces"]["hub"].split("-")[1])


@needs_namespaces
def test_a_failed_arm_removes_its_network_and_controller(tmp_path, port, monkeypatch):
    def fail(*args, **kwargs):  # after the server, the controller and the sources started
        assert controllers(), "the controller is running"
        raise BackendError("the sources were lost (made to fail by the test)")
    monkeypatch.setattr(local, "_wait_for_sources", fail)
    spec = RunSpec(sources=2, cpu=0.4, batches=2, epochs=1, model="vgg11-slim", batch_size=8, eval_samples=16,
                   dataset="synthetic", module="none", port=port, bandwidth="20mbit")
    with pytest.raises(BackendError, match="made to fail"):
        run_arm(spec, "none", tmp_path / "arm", "t", progress=None, links=plan_links(spec.values, 2), kernel=KERNEL)
    assert ours() == [] and controllers() == []
    assert (tmp_path / "arm" / "link.jsonl").exists()


@needs_namespaces
def test_a_controller_that_died_fails_the_arm_with_its_cause(tmp_path):
    from testbed.links.arm import ArmLinks
    from testbed.links.network import NetworkError
    arm = ArmLinks(plan_links({"bandwidth": "20mbit"}, 1), KERNEL, tmp_path)
    plan = tmp_path / "broken-plan.json"
    plan.write_text(json.dumps({"out": str(tmp_path / "link.jsonl"), "shapers": [],
                                "sources": [{"source": 0, "namespace": "splittest-no-such-namespace"}]}))
    proc = subprocess.Popen([sys.executable, "-m", "testbed.links.controller", str(plan)], cwd=REPO,
                            stderr=subprocess.DEVNULL)
    proc.wait(timeout=60)
    with pytest.raises(NetworkError, match=r"the link controller died during the arm \(exit status 1\): it said so"):
        arm.stop_controller(proc, "it said so")


@needs_namespaces
def test_ctrl_c_mid_run_leaves_no_namespace_process_or_cgroup(tmp_path, port):
    out = tmp_path / "run"
    testbed = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", "--sources", "2", "--cpu", "0.4",
                                "--batches", "50", "--epochs", "1", *TINY, "--bandwidth", "2mbit", "--module", "none",
                                "--out", str(out), "--port", str(port), "--quiet"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    link = out / "none" / "link.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (link.exists() and "sample" in link.read_text()):
        time.sleep(0.2)
    assert ours(testbed.pid), "the run built no network"
    children = psutil.Process(testbed.pid).children(recursive=True)
    testbed.send_signal(signal.SIGINT)
    _, stderr = testbed.communicate(timeout=60)
    assert testbed.returncode == 130, stderr
    assert ours(testbed.pid) == []
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert cgroups_of(testbed.pid) == []  # v1 or v2


# -- what the kernel and the rights allow -------------------------------------------------------

@pytest.mark.quick
@needs_namespaces
@pytest.mark.skipif(KERNEL.get("netem"), reason="this kernel has netem: --delay is emulated, not refused")
def test_delay_without_netem_is_refused_in_one_line_that_says_why(tmp_path, port, cli):
    result = cli("run", "--bandwidth", "5mbit", "--delay", "20ms", "--out", tmp_path / "run", "--port", port, *TINY)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "--delay and --loss need the netem qdisc" in line and "htb" in line
    assert not (tmp_path / "run").exists()


@needs_namespaces
def test_without_the_rights_to_make_namespaces_the_run_is_one_line_exit_2(tmp_path, port):
    if subprocess.run(["setpriv", "--help"], capture_output=True).returncode != 0:
        pytest.skip("no setpriv to drop capabilities")
    result = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m",
                             "testbed.cli", "run", "--bandwidth", "5mbit", "--out", str(tmp_path / "run"),
                             "--port", str(port), *TINY], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("testbed: error: emulated links need network namespaces")
    assert "run as root" in line


@pytest.mark.quick
def test_a_profiles_delay_is_one_warning_where_the_kernel_cannot_delay():
    from testbed.links.arm import profile_delay_warning
    wifi = plan_links({"link": "wifi"}, 2)
    assert profile_delay_warning(wifi, {"netem": False}) == (
        "the wifi profile's 2 ms delay is not emulated: this kernel has no netem qdisc "
        "(rate and medium are)")
    assert profile_delay_warning(wifi, {"netem": True}) is None
    assert profile_delay_warning(plan_links({"link": "wifi", "delay": "5ms"}, 2), {"netem": False}) is None
