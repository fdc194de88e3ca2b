"""The link and latency figures (analysis/metrics/link.py, latency.py) on hand-written traces whose values are
known: an arm folder of two sources behind an emulated link (link.jsonl with NIC counters,
capacity and sample events), batch and infer events with their latency parts."""
import json
import statistics

import pytest

from analysis import load_runs, metrics, plots, write_report
from analysis.caveats import NO_LINK
from analysis.load import INFER_COLUMNS, load_arm
from analysis.summary import LINK_ROWS, ROWS, format_table, summarise_arm

T0 = 100.0  # both sources' processes start here: times below are T0 + seconds since the arm started

# per source: the measured steps' durations (= latency_s) and network_s; the warm-up step is 2 s
DURATIONS = {0: [0.8, 1.0, 1.2, 1.0], 1: [1.3, 1.6, 0.6, 0.5]}
NETWORK = {0: [0.1, 0.2, 0.3, 0.4], 1: [0.0, 0.05, 0.1, 0.0]}
INFER_LATENCY = {0: [0.2, 0.4], 1: [0.6, 0.8]}
# the stream bytes a source traces: 5 steps of 1000 up / 500 down, an evaluation of 2 requests
# (400 / 40 in all), hello and bye (150 / 150): 5550 sent, 2690 received; the NIC saw 1.2 x that
APP_SENT, APP_RECEIVED = 5550, 2690
NIC_SENT, NIC_RECEIVED = 6660, 3228
# capacity of a traced uplink, per second of the arm (changes at 9, 10, 11, 12, 13, 14 s)
TRACE = [(0.0, 1e6), (9.0, 2e6), (10.0, 3e6), (11.0, 1e6), (12.0, 4e6), (13.0, 2e6), (14.0, 1e6)]
TRAINING_CAPACITY = [1.0, 2.0, 3.0, 1.0, 4.0, 2.0]  # Mbit/s in the seconds 8..13 (the training window: 8 to 14)


def _write(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def _capacity_at(second: float) -> float:
    return [bps for t, bps in TRACE if t <= second][-1]


def write_link_arm(folder, *, medium="dedicated", duplex="full", up_bps=96_000, down_bps=48_000, channel=None,
                   label="96kbit/48kbit dedicated", latency=True, nic=True, capacity=True, traced=None,
                   delivered="capacity", request_s=0.1, module="none", bytes_up=1000, manifest_backend="local"):
    """An arm of 2 sources, both started at T0. Each: a 2 s warm-up step ending at T0+10, four
    measured steps (10 samples each, 4 s in all: 10 samples/s) ending at T0+11..14, an
    evaluation of 2 infer requests (5 samples each) at T0+15, 16, its eval event (10 samples),
    bye and end. ``medium``/``duplex``/rates: the link event (None: no link.jsonl);
    ``traced``: "up" makes the uplink follow TRACE (the shared channel's, or each source's on
    a dedicated medium) and writes the interface samples, delivering the capacity
    (``delivered`` "capacity") or a flat 1 Mbit/s with 2 in the last training second ("flat";
    on a dedicated medium source 1 only). ``latency`` False: traces without the latency
    fields and infer events (as written before they existed)."""
    folder.mkdir(parents=True)
    server = [{"t": 95.0, "role": "server", "event": "listening", "module": module, "split": 2}]
    server += [{"t": 110.0 + 0.5 * k, "role": "server", "event": "request", "op": "grad", "duration_s": request_s}
               for k in range(9)]
    server.append({"t": 120.0, "role": "server", "event": "end", "status": "ok", "served": {"0": 5, "1": 5}})
    _write(folder / "server.jsonl", server)
    for i in range(2):
        events = [{"t": T0 + 1, "role": "source", "event": "start", "module": module, "split": 2,
                   "process_created": T0},
                  {"t": T0 + 1.5, "role": "source", "event": "connected", "bytes_sent": 100, "bytes_received": 100},
                  {"t": T0 + 2, "role": "source", "event": "prepared", "duration_s": 0.0}]
        cpu = 5.0
        for j in range(5):
            warmup = j == 0
            duration = 2.0 if warmup else DURATIONS[i][j - 1]
            network = 9.0 if warmup else NETWORK[i][j - 1]  # the warm-up's must not count
            rtt = network + 0.45
            cpu += 0.2
            batch = {"t": T0 + 10 + j, "role": "source", "event": "batch", "epoch": 0, "batch": j, "samples": 10,
                     "warmup": warmup, "duration_s": duration, "bytes_sent": bytes_up, "bytes_received": 500,
                     "payload_sent": bytes_up - 10, "payload_received": 490, "loss": 1.0, "budget": 32,
                     "wait_s": 1.0 if warmup else rtt, "cpu_s": round(cpu, 6)}
            if latency:
                batch.update(latency_s=duration, compute_s=0.1, encode_s=0.05, rtt_s=rtt, decode_s=0.02,
                             backward_s=0.2, queue_s=0.1, server_decode_s=0.1, server_compute_s=0.2,
                             server_encode_s=0.05, server_s=0.35, network_s=network, net_up_s=network / 2,
                             net_down_s=network / 4)
            events.append(batch)
        if latency:
            for k, value in enumerate(INFER_LATENCY[i]):
                events.append({"t": T0 + 15 + k, "role": "source", "event": "infer", "epoch": 0, "samples": 5,
                               "latency_s": value, "compute_s": 0.01, "encode_s": 0.01, "rtt_s": 0.1,
                               "decode_s": 0.01, "queue_s": 0.02 * (i + 1), "server_decode_s": 0.01,
                               "server_compute_s": 0.03, "server_encode_s": 0.01, "server_s": 0.05,
                               "network_s": 0.03, "net_up_s": 0.01, "net_down_s": 0.02, "bytes_sent": 200,
                               "bytes_received": 20})
        events += [{"t": T0 + 16.5, "role": "source", "event": "eval", "epoch": 0, "budget": 32, "samples": 10,
                    "accuracy": 0.5, "bytes_sent": 400, "bytes_received": 40},
                   {"t": T0 + 17, "role": "source", "event": "bye", "bytes_sent": 50, "bytes_received": 50},
                   {"t": T0 + 18, "role": "source", "event": "end", "status": "ok", "cpu_share": 0.3,
                    "peak_rss_mb": 500.0}]
        _write(folder / f"source-{i}.jsonl", events)
    if medium is not None:
        _write(folder / "link.jsonl", link_events(medium, duplex, up_bps, down_bps, channel, label, nic, capacity,
                                                  traced, delivered))
    if manifest_backend is not None and not (folder.parent / "manifest.json").exists():
        _write_manifest(folder.parent, [module], manifest_backend)
    return folder


def _write_manifest(run, modules, backend="local", bandwidth=""):
    (run / "manifest.json").write_text(json.dumps({"spec": {"modules": modules, "sources": 2, "cpu": 0.4,
                                                            "bandwidth": bandwidth}, "backend": backend}))


def link_events(medium, duplex, up_bps, down_bps, channel, label, nic, capacity, traced, delivered):
    dedicated = medium == "dedicated"
    trace_file = "trace.up" if traced in ("up", "both") else None
    events = [{"t": T0 - 0.5, "event": "link", "medium": medium, "duplex": duplex, "server_address": "10.77.0.1",
               "trace_up": trace_file, "trace_down": trace_file if traced == "both" else None,
               "kernel": {"qdiscs": ["htb"], "netem": True},
               "channel": None if dedicated else channel,
               "sources": [{"source": i, "up_bps": up_bps if dedicated else None,
                            "down_bps": down_bps if dedicated else None, "delay_ms": 10.0, "loss": 0.0,
                            "trace_up": trace_file, "trace_down": None, "interface": "eth0",
                            "address": f"10.77.0.{10 + i}"} for i in range(2)],
               "profile": None, "label": label}]
    if nic:
        for i in range(2):
            events += [{"t": T0 + 0.5, "event": "nic", "source": i, "phase": "start", "tx_bytes": 1000,
                        "rx_bytes": 2000, "tx_packets": 10, "rx_packets": 20},
                       {"t": T0 + 18.5, "event": "nic", "source": i, "phase": "end", "tx_bytes": 1000 + NIC_SENT,
                        "rx_bytes": 2000 + NIC_RECEIVED, "tx_packets": 70, "rx_packets": 60}]
    if capacity:
        owners = [0, 1] if dedicated else [None]
        rates = {"up": up_bps, "down": down_bps} if dedicated else {"up": channel["up_bps"], "down": channel["down_bps"]}
        if traced == "both":  # a half-duplex channel: one shaper, direction "both", as the controller writes it
            rates = {"both": channel["up_bps"]}
        for owner in owners:
            for direction, bps in rates.items():
                if direction == traced:
                    events += [{"t": T0 + t, "event": "capacity", "direction": direction, "source": owner,
                                "bps": int(value)} for t, value in TRACE]
                elif bps is not None:
                    events.append({"t": T0 + 0.2, "event": "capacity", "direction": direction, "source": owner,
                                   "bps": bps})
    if traced:
        flat = {s: (2e6 if s == 13 else 1e6) for s in range(19)}
        for i in range(2):
            tx = 0.0
            for second in range(19):  # a sample at every whole second, 0..18
                events.append({"t": T0 + second, "event": "sample", "source": i, "tx_bytes": int(tx),
                               "rx_bytes": 1000 * second})
                if dedicated:  # each source delivers its own link's capacity (source 1: flat when asked)
                    bps = flat[second] if delivered == "flat" and i == 1 else _capacity_at(second)
                else:  # the two share the channel half and half
                    bps = (flat[second] if delivered == "flat" else _capacity_at(second)) / 2
                tx += bps / 8
    return events


# -- NIC bytes, TCP/IP overhead, link limit and use ------------------------------------------

def test_nic_bytes_and_tcpip_overhead_from_known_counters(tmp_path):
    arm = summarise_arm(write_link_arm(tmp_path / "run" / "none"), "none", 2, 0.4, "test")
    assert arm["link"] == "96kbit/48kbit dedicated" and arm["link_medium"] == "dedicated"
    assert arm["link_duplex"] == "full" and arm["link_channel_bps"] is None
    assert arm["link_up_bps_per_source"] == [96_000, 96_000] and arm["link_down_bps_per_source"] == [48_000, 48_000]
    assert arm["link_delay_ms_per_source"] == [10.0, 10.0]
    assert arm["nic_bytes_sent_total"] == 2 * NIC_SENT and arm["nic_bytes_received_total"] == 2 * NIC_RECEIVED
    assert arm["nic_packets_sent_total"] == 120 and arm["nic_packets_received_total"] == 80
    # the NIC saw 1.2 x every stream byte the sources traced (training, evaluation, hello, bye)
    assert arm["tcpip_overhead"] == 0.2
    # 19776 NIC bytes over 2 x (50 training + 10 evaluation samples)
    assert arm["nic_bytes_per_sample"] == pytest.approx(2 * (NIC_SENT + NIC_RECEIVED) / 120, abs=1e-3) == 164.8
    # training's share of the NIC bytes: 6660 x 5000/5550 = 6000 up, 3228 x 2500/2690 = 3000 down, over 50 samples
    assert arm["wire_bytes_per_training_sample_sent"] == 120.0
    assert arm["wire_bytes_per_training_sample_received"] == 60.0
    json.dumps(arm, allow_nan=False)


@pytest.mark.parametrize("link, limit, bound", [
    # dedicated: 1 / (8*120/96000 + 8*60/48000) = 50 samples/s; the sources run 10: 20% of it
    (dict(medium="dedicated", up_bps=96_000, down_bps=48_000), 50.0, metrics.ROUND_TRIP),
    # dedicated: 1 / (8*120/19200 + 8*60/9600) = 10: full
    (dict(medium="dedicated", up_bps=19_200, down_bps=9_600, label="19.2kbit/9.6kbit dedicated"), 10.0,
     "the network (19.2kbit/9.6kbit dedicated)"),
    # shared, one rate both ways: 28800 / (8 * 2 * (120 + 60)) = 10
    (dict(medium="shared", duplex="half", channel={"up_bps": 28_800, "down_bps": 28_800}, label="28.8kbit shared"),
     10.0, "the network (28.8kbit shared)"),
    # shared, separate rates: min(38400 / (8*2*120), 9600 / (8*2*60)) = min(20, 10) = 10 (one source's
    # upload overlaps the other's download: the slower channel bounds)
    (dict(medium="shared", duplex="full", channel={"up_bps": 38_400, "down_bps": 9_600}, label="38.4/9.6 shared"),
     10.0, "the network (38.4/9.6 shared)"),
    # the link event's rates when no capacity event is traced: as the first case
    (dict(medium="dedicated", up_bps=96_000, down_bps=48_000, capacity=False), 50.0, metrics.ROUND_TRIP),
])
def test_link_limit_use_and_bound_by(tmp_path, link, limit, bound):
    arm = summarise_arm(write_link_arm(tmp_path / "run" / "none", **link), "none", 2, 0.4, "test")
    assert arm["samples_per_s_per_source"] == [10.0, 10.0]
    assert arm["link_limit_samples_per_s_per_source"] == [limit, limit]
    assert arm["link_use"] == round(10.0 / limit, 4)
    assert arm["bound_by"] == bound
    if bound != metrics.ROUND_TRIP:
        assert "100% of the samples/s the link" in arm["bound_reason"] and "\n" not in arm["bound_reason"]
    else:
        assert "20% of what the link" in arm["bound_reason"]


def test_a_full_link_takes_precedence_over_a_busy_server(tmp_path):
    full = dict(medium="dedicated", up_bps=19_200, down_bps=9_600, label="slow")
    arm = summarise_arm(write_link_arm(tmp_path / "a" / "none", request_s=0.5, **full), "none", 2, 0.4, "test")
    assert arm["server_busy_fraction"] == 1.0 and arm["bound_by"] == "the network (slow)"
    without = summarise_arm(write_link_arm(tmp_path / "b" / "none", request_s=0.5, medium=None), "none", 2, 0.4,
                            "test")
    assert without["bound_by"] == metrics.SERVER  # the same traces without a link: as before


def test_link_limit_without_nic_counters_uses_the_stream_bytes(tmp_path):
    # 1000 up, 500 down per 10 samples: 1 / (8*100/96000 + 8*50/48000) = 60
    arm = summarise_arm(write_link_arm(tmp_path / "run" / "none", nic=False), "none", 2, 0.4, "test")
    assert arm["link_limit_samples_per_s_per_source"] == [60.0, 60.0]
    assert arm["nic_bytes_sent_total"] is None and arm["tcpip_overhead"] is None
    assert arm["nic_bytes_per_sample"] is None and arm["wire_bytes_per_training_sample_sent"] is None


def test_bound_by_rule_with_a_link():
    assert metrics.bound_by([1.0], [0.9], 0.2, 0.85, "5mbit shared")[0] == "the network (5mbit shared)"
    assert metrics.bound_by([0.5], [0.9], 0.99, 0.85, "x")[0] == "the network (x)"  # before host and server
    assert metrics.bound_by([1.0], [0.9], 0.99, 0.79, "x")[0] == metrics.SERVER      # not full
    assert metrics.bound_by([1.0], [0.3], 0.2, 0.95, "x")[0] == metrics.CAP          # they computed most of it
    assert metrics.bound_by([1.0], [0.9], 0.2, None, None)[0] == metrics.ROUND_TRIP  # no link: as before


# -- latency ---------------------------------------------------------------------------------

def test_latency_percentiles_and_parts(tmp_path):
    arm = summarise_arm(write_link_arm(tmp_path / "run" / "none"), "none", 2, 0.4, "test")
    # measured steps (warm-up left out): 0.5 0.6 0.8 1.0 1.0 1.2 1.3 1.6
    assert arm["latency_train_p50_s"] == 1.0
    assert arm["latency_train_p95_s"] == 1.495  # rank 6.65: 1.3 + 0.65 x 0.3
    assert arm["latency_infer_p50_s"] == 0.5 and arm["latency_infer_p95_s"] == 0.77  # 0.2 0.4 0.6 0.8
    parts = arm["latency_parts_train"]
    assert parts == {"compute_s": 0.1, "encode_s": 0.05, "network_s": 0.1, "queue_s": 0.1, "server_s": 0.35,
                     "decode_s": 0.02, "backward_s": 0.2, "net_up_s": 0.05, "net_down_s": 0.025}
    assert arm["latency_parts_infer"] == {"compute_s": 0.01, "encode_s": 0.01, "network_s": 0.03, "queue_s": 0.03,
                                          "server_s": 0.05, "decode_s": 0.01, "net_up_s": 0.01, "net_down_s": 0.02}


def test_one_way_times_only_on_the_local_backend(tmp_path):
    for backend in ("k8s", None):
        arm = summarise_arm(write_link_arm(tmp_path / str(backend) / "none", manifest_backend=backend), "none", 2,
                            0.4, "test")
        assert arm["latency_parts_train"]["net_up_s"] is None and arm["latency_parts_train"]["net_down_s"] is None
        assert arm["latency_parts_infer"]["net_up_s"] is None
        assert arm["latency_parts_train"]["network_s"] == 0.1  # one clock each side: holds anywhere


def test_old_traces_give_none(tmp_path):
    folder = write_link_arm(tmp_path / "run" / "none", medium=None, latency=False)
    arm = summarise_arm(folder, "none", 2, 0.4, "test")
    for key in metrics.LINK_KEYS:
        assert arm[key] is None, key
    for key in ("latency_train_p50_s", "latency_train_p95_s", "latency_infer_p50_s", "latency_infer_p95_s",
                "latency_parts_train", "latency_parts_infer"):
        assert arm[key] is None, key
    assert arm["bound_by"] == metrics.ROUND_TRIP and "of what the link" not in arm["bound_reason"]
    runs = load_arm(folder)
    assert runs.infers.empty and list(runs.infers.columns) == INFER_COLUMNS
    assert runs.batches["latency_s"].isna().all()
    printed = format_table({"arms": {"none": arm}, "comparison": None})
    assert not any(line.startswith(row.title) for line in printed.splitlines() for row in LINK_ROWS)
    # header, rows, the bound-by sentence, the caveat of no link
    assert len(printed.splitlines()) == len(ROWS) + 3 and printed.splitlines()[-1] == f"note: {NO_LINK}"


def test_the_loader_reads_link_and_infer_events(tmp_path):
    folder = write_link_arm(tmp_path / "run" / "none")
    runs = load_runs([tmp_path / "run"])
    assert [p for p in runs.problems if "summary.json is missing" not in p] == [] and runs.labels == ["none"]
    link = runs.events[runs.events["role"] == "link"]
    assert set(link["event"]) == {"link", "nic", "capacity"}
    assert link[link["event"] == "link"]["link_label"].tolist() == ["96kbit/48kbit dedicated"]
    assert set(link["label"]) == {"none"}  # the arm's label, not the link's
    assert len(runs.infers) == 4 and list(runs.infers.columns) == INFER_COLUMNS
    assert runs.infers["latency_s"].tolist() == [0.2, 0.4, 0.6, 0.8]
    assert runs.infers["t"].tolist() == [15.0, 16.0, 15.0, 16.0]  # since the arm started
    assert runs.batches["latency_s"].notna().all() and runs.batches["server_s"].eq(0.35).all()
    # an evaluation's bytes are its infer requests': counted once, from the eval event
    assert metrics.arm_figures(runs)["none"]["eval_bytes_sent_total"] == 800
    assert metrics.link_labels(runs) == {"none": "96kbit/48kbit dedicated"}
    assert plots.link_suffix(runs) == " — link 96kbit/48kbit dedicated"
    assert load_arm(folder).manifests == {"run": {"backend": "local"}}


def test_an_evaluation_cut_short_counts_its_infer_requests(tmp_path):
    folder = write_link_arm(tmp_path / "run" / "none")
    for i in range(2):
        path = folder / f"source-{i}.jsonl"
        _write(path, [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] != "eval"])
    arm = summarise_arm(folder, "none", 2, 0.4, "test")
    assert arm["eval_bytes_sent_total"] == 800 and arm["eval_bytes_received_total"] == 80  # 2 x 2 requests
    assert arm["nic_bytes_per_sample"] == pytest.approx(19776 / 120, abs=1e-3)  # the 10 samples each still count


def test_an_evaluation_cut_short_counts_its_calibrate_requests_too(tmp_path):
    """--bn-batches: the requests that recomputed the BatchNorm statistics are evaluation
    traffic; an evaluation cut short after them (no eval event) still counts them."""
    folder = write_link_arm(tmp_path / "run" / "none")
    for i in range(2):
        path = folder / f"source-{i}.jsonl"
        events = [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] != "eval"]
        infer = next(e for e in events if e["event"] == "infer")
        calibrations = [{"t": infer["t"] - 0.5, "role": "source", "event": "calibrate",
                         "epoch": infer["epoch"], "batch": b, "samples": 5, "duration_s": 0.1, "bytes_sent": 50,
                         "bytes_received": 5} for b in range(2)]
        _write(path, events[:events.index(infer)] + calibrations + events[events.index(infer):])
    arm = summarise_arm(folder, "none", 2, 0.4, "test")
    assert arm["eval_bytes_sent_total"] == 800 + 2 * 2 * 50 and arm["eval_bytes_received_total"] == 80 + 2 * 2 * 5


# -- trace-driven links ----------------------------------------------------------------------

SHARED_TRACE = dict(medium="shared", duplex="full", channel={"up_bps": 1_000_000, "down_bps": 19_200},
                    label="trace shared", traced="up")


def test_trace_fidelity_is_exact_when_the_link_delivers_its_capacity(tmp_path):
    arm = summarise_arm(write_link_arm(tmp_path / "run" / "none", **SHARED_TRACE), "none", 2, 0.4, "test")
    assert arm["link_trace_fidelity"] == {"up": {"correlation": 1.0, "mae_mbit_s": 0.0,
                                                 "mean_capacity_mbit_s": round(13 / 6, 4),
                                                 "mean_delivered_mbit_s": round(13 / 6, 4), "seconds": 6}}
    # the link limit counts the trace's mean rate over the training window (8 s to 14 s)
    up = 13 / 6 * 1e6
    expected = 1 / max(8 * 2 * 120 / up, 8 * 2 * 60 / 19_200)
    assert arm["link_limit_samples_per_s_per_source"] == [round(expected, 3)] * 2
    assert arm["link_use"] == round(10 / expected, 4)
    assert "link trace up: delivered vs capacity per second: correlation 1.000" in \
        format_table({"arms": {"none": arm}, "comparison": None})


def test_trace_fidelity_is_lower_when_the_link_delivers_otherwise(tmp_path):
    arm = summarise_arm(write_link_arm(tmp_path / "run" / "none", delivered="flat", **SHARED_TRACE), "none", 2, 0.4,
                        "test")
    delivered = [1.0, 1.0, 1.0, 1.0, 1.0, 2.0]
    f = arm["link_trace_fidelity"]["up"]
    assert f["correlation"] == round(statistics.correlation(delivered, TRAINING_CAPACITY), 4) < 0.6
    assert f["mae_mbit_s"] == 1.0 and f["mean_delivered_mbit_s"] == round(7 / 6, 4) and f["seconds"] == 6


def test_trace_fidelity_of_a_dedicated_link_is_the_mean_over_sources(tmp_path):
    arm = summarise_arm(write_link_arm(tmp_path / "run" / "none", medium="dedicated", up_bps=1_000_000,
                                       down_bps=48_000, label="trace dedicated", traced="up", delivered="flat"),
                        "none", 2, 0.4, "test")
    f = arm["link_trace_fidelity"]["up"]
    # source 0 delivers its capacity (1.0), source 1 a flat rate
    flat = statistics.correlation([1.0, 1.0, 1.0, 1.0, 1.0, 2.0], TRAINING_CAPACITY)
    assert f["correlation"] == round((1.0 + flat) / 2, 4)
    assert f["mae_mbit_s"] == 0.5 and f["mean_capacity_mbit_s"] == round(13 / 6, 4)
    assert f["mean_delivered_mbit_s"] == round((13 / 6 + 7 / 6) / 2, 4)


def test_delivered_rate_and_capacity_over_time(tmp_path):
    write_link_arm(tmp_path / "run" / "none", **SHARED_TRACE)
    runs = load_runs([tmp_path / "run"])
    rates = metrics.delivered_rate(runs, "up")
    assert rates["source"].isna().all() and rates["second"].tolist() == [float(s) for s in range(18)]
    assert rates["mbit_s"].round(6).tolist() == [_capacity_at(s) / 1e6 for s in range(18)]
    per_source = metrics.delivered_rate(runs, "up", per_source=True)
    assert sorted(set(per_source["source"])) == [0, 1] and len(per_source) == 36
    capacity = metrics.capacity_over_time(runs, "up")
    assert capacity["t"].tolist() == [t for t, _ in TRACE] and capacity["mbit_s"].tolist() == [
        b / 1e6 for _, b in TRACE]
    assert capacity["source"].isna().all()


# -- the table, the report and the figures ---------------------------------------------------

def test_the_printed_table_shows_the_link_and_latency_rows(tmp_path):
    arm = summarise_arm(write_link_arm(tmp_path / "run" / "none"), "none", 2, 0.4, "test")
    lines = format_table({"arms": {"none": arm}, "comparison": None}).splitlines()

    def row(label):
        return next(line for line in lines if line.startswith(label))[len(label):].strip()
    assert row("link ") == "96kbit/48kbit dedicated"
    assert row("TCP/IP overhead") == "20.0%" and row("NIC bytes per sample") == "164.8"
    assert row("link use") == "20%" and row("link limit (samples/s per source)") == "50.00"
    assert row("latency train p95 (ms)") == "1495.0" and row("latency infer p50 (ms)") == "500.0"
    assert [line.split()[0] for line in lines[1:len(ROWS) + 1]] == [row.title.split()[0] for row in ROWS]


def test_report_lists_link_latency_and_trace_figures(tmp_path):
    run = tmp_path / "run"
    write_link_arm(run / "none", **SHARED_TRACE)
    (run / "summary.json").write_text(json.dumps({"arms": {"none": summarise_arm(run / "none", "none", 2, 0.4,
                                                                                 "test")}}))
    report = write_report([run], tmp_path / "report")
    names = {p.name for p in report.figures}
    assert {"latency.png", "latency.svg", "link_trace.png", "link_trace.svg"} <= names
    assert "throughput_vs_bandwidth.png" not in names  # one rate: nothing to sweep
    for name in names:
        assert (tmp_path / "report" / name).stat().st_size > 5000
    text = report.markdown.read_text()
    assert "## Link" in text and "| none | trace shared | 0.020 | 164.8 | 20.0% |" in text
    assert "| none | train | 1000.0 | 1495.0 | 100.0 | 50.0 | 100.0 | 100.0 | 350.0 | 20.0 | 200.0 | 50.0 | 25.0 |" \
        in text
    assert "| none | infer | 500.0 | 770.0 | 10.0 | 10.0 | 30.0 | 30.0 | 50.0 | 10.0 | – | 10.0 | 20.0 |" in text
    assert "- none, up: delivered vs capacity per second: correlation 1.000" in text
    assert "![Latency per arm](latency.png)" in text and "![Trace-driven link](link_trace.png)" in text
    assert report.problems == []


def test_throughput_against_bandwidth_from_three_run_folders(tmp_path):
    folders = []
    for rate in (1, 5, 20):
        run = tmp_path / f"sweep-{rate}mbit"
        _write_manifest(_mkdir(run), ["none", "filter"], bandwidth=f"{rate}mbit")
        for module, up in (("none", 1000), ("filter", 100)):
            write_link_arm(run / module, module=module, bytes_up=up, up_bps=rate * 10**6, down_bps=rate * 10**6,
                           label=f"{rate}mbit dedicated", nic=False)
        folders.append(run)
    runs = load_runs(folders)
    sweep = metrics.bandwidth_sweep(metrics.arm_figures(runs))
    none = sweep[sweep["module"] == "none"]
    assert none["up_bps"].tolist() == [1e6, 5e6, 20e6] and none["samples_per_s"].tolist() == [10.0] * 3
    # stream bytes (no NIC counters): 100 up and 50 down per sample
    assert none["link_limit"].tolist() == [round(r * 1e6 / (8 * 150), 3) for r in (1, 5, 20)]
    filt = sweep[sweep["module"] == "filter"]
    assert filt["link_limit"].tolist() == [round(r * 1e6 / (8 * 60), 3) for r in (1, 5, 20)]
    report = write_report(folders, tmp_path / "report")
    assert (tmp_path / "report" / "throughput_vs_bandwidth.png").stat().st_size > 5000
    assert (tmp_path / "report" / "throughput_vs_bandwidth.svg").exists()
    assert "![Throughput against link rate](throughput_vs_bandwidth.png)" in report.markdown.read_text()
    assert plots.link_suffix(runs) == " — links 1mbit dedicated, 5mbit dedicated, 20mbit dedicated"
    assert "link_trace.png" not in {p.name for p in report.figures}  # no trace-driven link


def _mkdir(path):
    path.mkdir(parents=True)
    return path


def test_a_trace_driven_half_duplex_channel_is_read_as_the_controller_writes_it(tmp_path):
    """One shaper for both directions (capacity events "both", the trace named on the link
    event): its fidelity is the channel's, and the link limit counts the trace's mean."""
    arm = summarise_arm(write_link_arm(tmp_path / "run" / "none", medium="shared", duplex="half",
                                       channel={"up_bps": 1_000_000, "down_bps": 1_000_000}, label="trace half",
                                       traced="both"), "none", 2, 0.4, "test")
    both = arm["link_trace_fidelity"]["both"]
    # delivered = the capacity (uplinks) + a constant 2 x 8 kbit/s (downlinks): correlation 1, error 0.016
    assert both["correlation"] == 1.0 and both["mae_mbit_s"] == 0.016 and both["seconds"] == 6
    up = 13 / 6 * 1e6  # the trace's mean over the training window
    expected = up / (8 * 2 * (120 + 60))
    assert arm["link_limit_samples_per_s_per_source"] == [round(expected, 3)] * 2
