"""Every figure of a run, declared once: its name (the key in an arm of ``summary.json``),
its definition, unit, rounding, title and number format, and where it is shown.

:mod:`analysis.metrics` computes the figures (rounded as declared here), :mod:`analysis.summary`
writes them to ``summary.json`` and prints the table ``testbed run`` ends with,
:mod:`analysis.report` lays out ``report.md``, ``testbed/sweep/table.py`` takes the sweep
table's columns, and ``python -m testbed.generate`` the README's table of figures: all of
them from the declarations below, in their order.

A column of a table is a declaration's name, never renamed on the way:

- a :class:`Figure` shows its ``summary.json`` value; a per-source figure (a list, one value
  per source) that a table shows declares ``reduce``, how it becomes the one number a cell
  or a sweep column holds (the mean over the sources, their median, min or max), and keeps
  its name;
- a :class:`View` is a number the tables show that ``summary.json`` does not hold as such
  (a second reduction of a per-source figure, a sum or a ratio of figures), under a name
  of its own, computed from the figures it names in ``of``.

Every per-source figure is None (JSON null) where the traces do not hold what it needs
(e.g. ``cpu_s``/``wait_s`` in traces written before they existed).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# where a figure is shown
PLACES = {
    "table": "the table `testbed run` prints (analysis.summary)",
    "report": "report.md's table of the arms",
    "link table": "report.md's table of the links",
    "latency table": "report.md's table of the latency (a row per arm and phase: p50, p95, the parts' medians)",
    "sweep": "a column of the sweep table (sweep.json, sweep.csv)",
}
SCOPES = ("arm", "per source", "comparison")  # comparison: summary.json's ``comparison`` (vs the baseline arm)
REDUCE_DECIMALS = 6  # a mean or median over the sources is rounded so
SCALES: dict[str, Callable] = {"MB": lambda v: v / 1e6, "ms": lambda v: v * 1e3}  # the units tables show


def _mean(values):
    return round(statistics.fmean(values), REDUCE_DECIMALS) if values else None


def _median(values):
    return round(statistics.median(values), REDUCE_DECIMALS) if values else None


# how a per-source figure becomes one number (None values left out; None when none is left)
REDUCTIONS: dict[str, Callable] = {
    "mean": _mean,
    "median": _median,
    "min": lambda values: min(values) if values else None,
    "max": lambda values: max(values) if values else None,
    "ids": lambda entries: ", ".join(str(e["source"]) for e in entries) or "none",  # lost_sources
}


@dataclass(frozen=True)
class Figure:
    name: str                   # the key in an arm of summary.json (or in its comparison)
    family: str                 # a key of FAMILIES: which module of analysis.metrics computes it
    definition: str
    unit: str = ""
    decimals: int | None = None  # summary.json holds it rounded to this many decimals (None: as it is)
    scope: str = "arm"          # "arm": one value; "per source": a list, one per source; "comparison"
    title: str | None = None    # how the tables head it (None: not shown)
    fmt: str = "{}"             # how they write it (the value, or its scaled value)
    scale: str | None = None    # a key of SCALES: shown in other units (bytes as MB, seconds as ms)
    reduce: str | None = None   # a list in a cell or a sweep column: a key of REDUCTIONS
    shown_in: tuple[str, ...] = ()  # keys of PLACES
    optional: bool = False      # the printed table has its row only when some arm has a value

    def one(self, arm: Mapping, comparison: Mapping | None = None):
        """The one value a cell or a sweep column holds for an arm (its summary.json entry or
        arm_figures'; ``comparison``: its ratios against the baseline)."""
        value = self.raw(arm, comparison)
        if self.reduce is not None and isinstance(value, list):
            return REDUCTIONS[self.reduce]([v for v in value if v is not None])
        return value

    def raw(self, arm: Mapping, comparison: Mapping | None = None):
        """Its value as summary.json holds it."""
        return (comparison or {}).get(self.name) if self.scope == "comparison" else arm.get(self.name)


@dataclass(frozen=True)
class View:
    """A number the tables show that summary.json does not hold as such."""
    name: str
    of: tuple[str, ...]         # the figures it is computed from
    compute: Callable           # (the values of ``of`` as summary.json holds them, in order) -> the value
    definition: str
    title: str
    fmt: str
    unit: str = ""
    scale: str | None = None
    shown_in: tuple[str, ...] = ()
    optional: bool = False

    partial: bool = False       # ``compute`` takes None for a missing figure (else the view is None then)

    def one(self, arm: Mapping, comparison: Mapping | None = None):
        """The value for an arm (None where a figure it needs is missing, unless ``partial``)."""
        values = [FIGURES[name].raw(arm, comparison) for name in self.of]
        return None if not self.partial and any(v is None for v in values) else self.compute(*values)


FAMILIES = {
    "run": "The arm as it was run",
    "traffic": "Traffic (exact stream bytes the sources traced; eval and control traffic apart)",
    "rate": "Rate in the paper's unit (the method's own payload, \"payload bytes\" in the table and the report; "
            "not ``payload_*_total``, which counts every array of a request, labels and one-time shipments "
            "included: the arrays its source part names in ``coded_arrays`` — the entropy-coded latent, a codec's "
            "entropy-coded data and its tables sent once, the filter's maps and indices; not the labels, shapes, "
            "lengths, a decoder shipped once, the header, framing or encryption, which the stream bytes "
            "include). Each is None for traces written before ``coded_sent`` was traced",
    "comparison": "Ratios: every arm against the baseline arm (``none``, from the same run when it has one), "
                  "in summary.json's ``comparison``",
    "speed": "Speed",
    "learning": "Learning",
    "costs": "Hidden costs and fidelity",
    "lost": "Lost sources (the testbed's ``lost`` events)",
    "link": "The emulated link (``<arm>/link.jsonl``; every figure here is None for an arm without one)",
    "latency": "Latency (new traces' per-step parts; None in traces written before them)",
    "adapt": "Adaptive compression (``--adapt``: the sources' ``adapt_start`` and ``adapt`` events; every figure "
             "here is None for an arm that did not adapt)",
}

def _link_rate(direction: str) -> Callable:
    def rate(channel, per_source):
        shared = (channel or {}).get(direction)
        return shared if shared is not None else _mean([v for v in per_source or [] if v is not None])
    return rate


_LATENCY = ("percentile (linear interpolation between the closest ranks) of ``latency_s`` (the whole step, "
            "= duration_s) over every source's non-warm-up ``batch`` events")
_INFER = "the same over the ``infer`` events (every split-inference request of the evaluations)"
_PARTS = ("the medians over the same steps of each part: compute_s (forward at the source), encode_s, "
          "network_s (rtt - server_s - queue_s), queue_s (waiting at the server), server_s (its decode, compute "
          "and encode), decode_s, backward_s; plus net_up_s and net_down_s (one-way wall-clock times), which are "
          "None unless the manifest says the local backend (only there do source and server share a clock). A "
          "part not traced is None; the whole dict is None when no part is")



def _over(how: str) -> Callable:
    """A view's compute: a second reduction (a key of REDUCTIONS) of a per-source figure."""
    return lambda values: REDUCTIONS[how]([v for v in values if v is not None])


F, V = Figure, View
DECLARED: tuple[Figure | View, ...] = (
    F("module", "run", "the arm's compression module (its registry name)"),
    F("sources", "run", "the arm's data sources (summary.json: as run; arm_figures: the traced ones)",
      title="sources", shown_in=("report",)),
    F("cpu_cap", "run", "each source's CPU cap (one number, or a list with one per source: ``--cpu 0.4,0.2``, "
                        "cycled)", unit="cores"),
    F("cap_method", "run", "how the cap was enforced (cgroup-v1, cgroup-v2, none, ...)"),
    F("split", "run", "the layer the model is cut at (the first source's ``start`` event)",
      title="split", shown_in=("table",)),
    F("data", "run", "the data the sources trained on: {origin, synthetic, difficulty} (the first source's ``data`` event; difficulty: the synthetic set's, else None)"),
    F("budgets", "run", "every budget a source trained at (its ``batch`` events), sorted"),
    F("bytes_sent_total", "traffic", "the stream bytes the sources sent in training steps: summed over the "
      "``batch`` events of all sources", unit="bytes", title="bytes sent (MB)", fmt="{:.3f}", scale="MB",
      shown_in=("table", "report", "sweep")),
    F("bytes_received_total", "traffic", "the stream bytes the sources received in training steps, summed the "
      "same way", unit="bytes", title="bytes received (MB)", fmt="{:.3f}", scale="MB",
      shown_in=("table", "report", "sweep")),
    F("samples_total", "traffic", "the training samples of all sources (``batch`` events, warm-up included)",
      unit="samples", shown_in=("sweep",)),
    F("bytes_per_sample_sent", "traffic", "bytes_sent_total / samples_total", unit="bytes", decimals=3,
      title="bytes per sample, sent", fmt="{:.1f}", shown_in=("table", "sweep")),
    F("bytes_per_sample_received", "traffic", "bytes_received_total / samples_total", unit="bytes", decimals=3,
      title="bytes per sample, received", fmt="{:.1f}", shown_in=("table", "sweep")),
    F("payload_sent_total", "traffic", "the bytes of every array the sources' training requests carried "
      "(labels and one-time shipments included; no header, framing or encryption), summed as the stream bytes",
      unit="bytes"),
    F("payload_received_total", "traffic", "the same of the replies", unit="bytes"),
    F("coded_bytes_sent_total", "rate", "the method's own payload, summed over the training steps of all "
      "sources", unit="bytes"),
    F("coded_bytes_per_sample", "rate", "coded_bytes_sent_total / samples_total", unit="bytes", decimals=3,
      title="payload bytes per sample, train", fmt="{:.1f}", shown_in=("table", "report", "sweep")),
    F("eval_coded_bytes_per_sample", "rate", "the same over every evaluation's ``infer`` requests, per test "
      "sample: the rate at inference, which paper 004 plots (crbq quantizes only then)", unit="bytes",
      decimals=3, title="payload bytes per sample, inference", fmt="{:.1f}", shown_in=("table", "report", "sweep")),
    V("wire_over_payload", ("bytes_sent_total", "bytes_received_total", "payload_sent_total",
                            "payload_received_total"),
      lambda sent, received, payload_sent, payload_received: (sent + received) / max(1, payload_sent
                                                                                    + payload_received),
      "the stream bytes of the training steps over their payload bytes, both directions", title="wire / payload",
      fmt="{:.4f}", shown_in=("table",)),
    F("eval_bytes_sent_total", "traffic", "the stream bytes the evaluations sent (``eval`` events, each the sum "
      "of its evaluation's ``infer`` requests and, with --bn-batches, the ``calibrate`` requests that recomputed "
      "its BatchNorm statistics; for an evaluation cut short, with ``infer`` or ``calibrate`` events of an epoch "
      "but no ``eval`` event, those events)", unit="bytes"),
    F("eval_bytes_received_total", "traffic", "the same, received", unit="bytes"),
    V("eval_bytes_total", ("eval_bytes_sent_total", "eval_bytes_received_total"), lambda s, r: s + r,
      "eval_bytes_sent_total + eval_bytes_received_total", title="eval bytes (MB)", fmt="{:.3f}", unit="bytes",
      scale="MB", shown_in=("table",)),
    F("control_bytes_total", "traffic", "``connected`` and ``bye`` events, both directions", unit="bytes"),
    F("traffic_ratio", "comparison", "baseline bytes / arm bytes (bytes_sent_total + bytes_received_total)",
      unit="x", decimals=3, scope="comparison", title="traffic ratio (x)", fmt="{:.2f}", shown_in=("report",)),
    F("traffic_ratio_sent", "comparison", "the same of bytes_sent_total", unit="x", decimals=3, scope="comparison"),
    F("traffic_ratio_received", "comparison", "the same of bytes_received_total", unit="x", decimals=3,
      scope="comparison"),
    F("samples_per_s_per_source", "speed", "samples / seconds in training steps (``duration_s``), leaving out "
      "each source's first (warm-up) batch", unit="samples/s", decimals=3, scope="per source",
      title="samples/s per source", fmt="{:.2f}", reduce="mean", shown_in=("table", "report", "sweep")),
    F("throughput_ratio", "comparison", "arm samples/s / baseline samples/s (each the mean over sources of "
      "samples_per_s_per_source)", unit="x", decimals=3, scope="comparison", title="throughput ratio (x)",
      fmt="{:.3f}", shown_in=("report",)),
    F("cpu_share_lifetime_per_source", "costs", "CPU seconds / wall seconds of the whole process (its ``end`` "
      "event)", unit="cores", scope="per source", title="CPU share, lifetime (max)", fmt="{:.3f}", reduce="max",
      shown_in=("table", "report")),
    F("cpu_share_per_source", "costs", "cpu_share_lifetime_per_source, under its old name", unit="cores",
      scope="per source"),
    F("cpu_share_computing_per_source", "costs", "the CPU the source got while computing in the training "
      "window: over each pair of consecutive steps of one epoch after the warm-up batch (the warm-up batch's end "
      "opens the window; the gap across an evaluation is left out), sum(cpu_s[i] - cpu_s[i-1]) / (sum(t[i] - "
      "t[i-1]) - sum(wait_s[i])). ``cpu_s`` is the process CPU time at the end of each step, ``wait_s`` the "
      "step's wait for the server's reply. A cgroup quota is enforced per period (100 ms), so a source that "
      "computes in short bursts between waits can exceed its cap while computing", unit="cores", decimals=4,
      scope="per source"),
    F("cpu_share_over_cap_per_source", "costs", "cpu_share_computing / cpu_cap (each source's own cap when "
      "``cpu_cap`` is a list: ``--cpu 0.4,0.2`` gives one per source, cycled); clearly below 100% means the "
      "host did not give the source its cap", decimals=4, scope="per source",
      title="CPU share / cap computing (median)", fmt="{:.0%}", reduce="median", shown_in=("table", "report")),
    V("cpu_share_over_cap_min", ("cpu_share_over_cap_per_source",), _over("min"),
      "the least cpu_share_over_cap of the sources", title="CPU share / cap computing (min)", fmt="{:.0%}",
      shown_in=("table", "report")),
    F("reply_wait_share_per_source", "costs", "sum(wait_s) / sum(duration_s) over the measured (non-warm-up) "
      "batches", decimals=4, scope="per source", title="waiting for replies (median)", fmt="{:.0%}",
      reduce="median", shown_in=("table", "report")),
    F("requests_served", "costs", "the requests the server answered (its ``end`` event)", unit="requests"),
    F("server_busy_fraction", "costs", "the server's time handling requests (``request`` events' "
      "``duration_s``) over its training window: from the start of the first training step it answered (op "
      "``grad``; t - duration_s) to the end of the last one. Hello, the sources' edge pre-training and the last "
      "evaluation lie outside the window", decimals=4, title="server busy", fmt="{:.0%}",
      shown_in=("table", "report")),
    F("server_lr_scale", "costs", "``lr_scale`` of the server's ``listening`` event: the factor on the learning "
      "rate of the module's own server-side parameters (a decoder; never the shared tail), from its registry "
      "entry (None when the trace does not say: traces written before it was recorded)",
      title="server lr scale", fmt="{:g}", shown_in=("table", "report")),
    F("pretrain_s_per_source", "costs", "``duration_s`` of each source's ``prepared`` event (cdc, mcr2, entropic "
      "train at the source before the first batch; ~0 for the others)", unit="s", scope="per source",
      title="pre-training (s, max)", fmt="{:.1f}", reduce="max", shown_in=("table", "report")),
    F("pretrain_share", "costs", "max(pretrain_s_per_source) / duration_s", decimals=4,
      title="pre-training / duration", fmt="{:.0%}", shown_in=("table", "report")),
    F("pretrain_steps_per_source", "costs", "the optimizer steps each source took on its own, without the "
      "network (its ``pretrain`` events: a teacher, a distillation, an autoencoder, MCR^2's phase 1 before "
      "streaming; cdc's fine-tuning after a change of its mask number too): the training an arm had besides the "
      "steps every arm gets (0 for modules that train nothing at the source). Beside samples_total, it says how "
      "equal the arms' starting points were", unit="steps", scope="per source"),
    F("pretrain_samples_per_source", "costs", "the samples those steps saw (0 in traces written before the "
      "events carried them)", unit="samples", scope="per source", title="pre-training samples per source (mean)",
      fmt="{:,}", reduce="mean", shown_in=("sweep",)),
    V("pretrain_samples_max", ("pretrain_samples_per_source",), _over("max"),
      "the most pre-training samples of a source", title="pre-training samples per source (max)", fmt="{:,}",
      unit="samples", shown_in=("table",)),
    F("startup_s_per_source", "speed", "process start to the end of its first batch", unit="s", decimals=3,
      scope="per source", title="start-up to 1st batch (s)", fmt="{:.1f}", reduce="mean", shown_in=("table",)),
    F("peak_rss_mb_per_source", "costs", "each source process's peak resident memory (its ``end`` event): with "
      "the pages it shares with a warm parent (--spawn fork), which memory_peak_mb_per_source leaves out",
      unit="MB", scope="per source", title="peak resident memory per source (MB)", fmt="{:.0f}", reduce="max",
      shown_in=("table",)),
    F("memory_peak_mb_per_source", "costs", "each source's own memory at its peak: what the kernel charged to its "
      "memory cgroup (the testbed's ``memory`` event; None without one, as on Kubernetes)", unit="MiB",
      scope="per source", title="own memory per source, peak (MiB)", fmt="{:.0f}", reduce="max",
      shown_in=("table", "sweep")),
    F("memory_limit_mb_per_source", "costs", "each source's --memory limit (None: none)", unit="MiB",
      scope="per source", title="memory limit per source (MiB)", fmt="{:.0f}", reduce="min", shown_in=("table",)),
    F("duration_s", "speed", "from the first source process start (``process_created`` of the sources' "
      "``start`` events) to the last source ``end`` event", unit="s", decimals=3, title="duration (s)",
      fmt="{:.1f}", shown_in=("table", "report", "sweep")),
    F("final_loss", "learning", "pooled over every sample of the arm's last epoch: the per-batch losses of all "
      "sources weighted by their samples", decimals=6, title="final loss", fmt="{:.4f}",
      shown_in=("table", "report", "sweep")),
    F("test_accuracy", "learning", "the mean over sources of each source's last ``eval`` accuracy", decimals=6,
      title="test accuracy", fmt="{:.3f}", shown_in=("table", "report", "sweep")),
    F("bound_by", "costs", "what bound the throughput, by analysis.metrics.bound_by's rule (the host CPU "
      "oversubscribed: sources below 90% of their cap while computing; the sources' CPU cap; the server; the "
      "round trip; with a link: \"the network (<link>)\" when the link was full)",
      title="bound by", shown_in=("table", "report")),
    F("bound_reason", "costs", "that rule's finding in one sentence, with the numbers"),
    F("status_per_source", "lost", "each source's ``end`` status (\"no end event\" when it has none; \"lost\" for "
      "a source the testbed saw die, its ``testbed.jsonl``)", scope="per source"),
    F("lost_sources", "lost", "one entry per lost source: source, cause, injected (by ``--drop``), last_epoch, "
      "last_batch (of its last traced step; None before its first), batches_done, t (s since the arm started, "
      "when the testbed saw it die); the tables show the lost sources' ids (\"none\" when none)", decimals=3,
      title="lost sources", reduce="ids", shown_in=("table", "report")),
    F("partial", "lost", "true when a source was lost: every figure is then computed over what was done (the "
      "lost sources' traced steps count, their missing ones do not)"),
    F("partial_note", "lost", "that in one line, naming the lost sources (None when not partial)"),
    F("link", "link", "the link's label (its ``link`` event's, e.g. \"5mbit shared\")", title="link",
      shown_in=("table", "link table"), optional=True),
    F("link_medium", "link", "\"shared\" or \"dedicated\", as the ``link`` event says"),
    F("link_duplex", "link", "\"half\" (one rate that both directions share) or \"full\", as it says"),
    F("link_up_bps_per_source", "link", "each source's entry of the ``link`` event (None: that direction is not "
      "shaped, or the shared channel carries it)", unit="bit/s", scope="per source"),
    F("link_down_bps_per_source", "link", "the same, down", unit="bit/s", scope="per source"),
    V("link_up_bps", ("link_channel_bps", "link_up_bps_per_source"), _link_rate("up"), "the link's rate up: the "
      "shared channel's, else the mean over the sources of theirs (None: no shaped uplink)", title="link up (bit/s)",
      fmt="{:.0f}", unit="bit/s", shown_in=("sweep",), partial=True),
    V("link_down_bps", ("link_channel_bps", "link_down_bps_per_source"), _link_rate("down"), "the same, down",
      title="link down (bit/s)", fmt="{:.0f}", unit="bit/s", shown_in=("sweep",), partial=True),
    F("link_delay_ms_per_source", "link", "the same, the one-way delay", unit="ms", scope="per source"),
    F("link_channel_bps", "link", "the shared channel's {up, down} rates (None on a dedicated medium)",
      unit="bit/s"),
    F("nic_bytes_sent_total", "link", "sums over sources of end - start of each source's own interface counters "
      "(``nic`` events; tx = sent by the source): wire bytes, every Ethernet/IP/TCP header and every packet of "
      "the source (training, evaluation, hello/bye, TCP handshakes and acknowledgements) included. Only sources "
      "with both a start and an end counter count, here and in nic_bytes_per_sample and tcpip_overhead",
      unit="bytes"),
    F("nic_bytes_received_total", "link", "the same, rx (received by the source)", unit="bytes"),
    V("nic_bytes_total", ("nic_bytes_sent_total", "nic_bytes_received_total"), lambda s, r: s + r,
      "NIC bytes, both directions", title="NIC MB, both directions", fmt="{:.3f}", unit="bytes", scale="MB",
      shown_in=("table", "link table"), optional=True),
    F("nic_packets_sent_total", "link", "the same of the packet counters, sent", unit="packets"),
    F("nic_packets_received_total", "link", "the same, received", unit="packets"),
    F("nic_bytes_per_sample", "link", "NIC bytes (both directions) / the samples that crossed the link: training "
      "samples (``batch`` events) plus evaluation samples (``eval`` events' samples, counted as the evaluation "
      "bytes are)", unit="bytes", decimals=3, title="NIC bytes per sample", fmt="{:.1f}",
      shown_in=("table", "link table"), optional=True),
    F("tcpip_overhead", "link", "NIC bytes / application stream bytes - 1, both directions; the stream bytes are "
      "every byte the sources traced: training steps, evaluations, ``connected`` and ``bye``", decimals=4,
      title="TCP/IP overhead", fmt="{:.1%}", shown_in=("table", "link table"), optional=True),
    F("wire_bytes_per_training_sample_sent", "link", "the NIC bytes the training steps carried per training "
      "sample: per source, its NIC bytes of that direction x (its training stream bytes / all its stream bytes of "
      "that direction), over its training samples (warm-up included); the arm's is the sum over sources over all "
      "their training samples", unit="bytes", decimals=3),
    F("wire_bytes_per_training_sample_received", "link", "the same, received", unit="bytes", decimals=3),
    F("link_limit_samples_per_s_per_source", "link", "the samples/s the link allows each source, from the wire "
      "bytes a training sample carries up (U_i) and down (D_i; wire_bytes_per_training_sample_* per source; "
      "without NIC counters, the stream bytes per training sample) and the link's rates (the time-weighted mean of "
      "the shaper's rate, its ``capacity`` events, over the training window: from the start of the arm's first "
      "training step to the end of its last, so a trace-driven link counts with its mean; the ``link`` event's "
      "rate where no ``capacity`` event is traced). A source has one request in flight, so its directions take "
      "turns: dedicated medium: 1 / (8 U_i / up_i + 8 D_i / down_i); shared, one rate for both directions "
      "(duplex \"half\"): C / (8 sum_i (U_i + D_i)); shared, separate up/down rates: min(up / (8 sum_i U_i), "
      "down / (8 sum_i D_i)) (one source's directions take turns, but its upload overlaps another's download) "
      "(sums over the sources that trained; an unshaped direction adds nothing; None when no direction is "
      "shaped)", unit="samples/s", decimals=3, scope="per source", title="link limit (samples/s per source)",
      fmt="{:.2f}", reduce="mean", shown_in=("table", "link table", "sweep"), optional=True),
    F("link_use", "link", "the mean over sources of samples_per_s / link limit: how full the link was while the "
      "sources trained", decimals=4, title="link use", fmt="{:.0%}", shown_in=("table", "link table"),
      optional=True),
    F("link_trace_fidelity", "link", "for a trace-driven link (the link's or a source's ``trace_up``/"
      "``trace_down``, or a shaper rate that changes), per traced direction (\"up\", \"down\"; \"both\" for a "
      "shared half-duplex channel, whose one rate both directions share): the rate delivered each whole second "
      "(analysis.metrics.delivered_rate: the ``sample`` counters, tx for up, rx for down, summed over sources on "
      "a shared medium, per source on a dedicated one) against the capacity in force in that second "
      "(analysis.metrics.capacity_over_time, its time-weighted mean over the second), over the seconds that lie "
      "wholly in the training window: correlation (Pearson; None when either series is constant), mae_mbit_s "
      "(mean absolute difference), mean_capacity_mbit_s, mean_delivered_mbit_s, seconds (how many). On a "
      "dedicated medium each figure is the mean over sources of each source's (seconds: the fewest). Low "
      "correlation also means the sources did not fill the link. None without a traced direction", decimals=4),
    F("latency_train_p50_s", "latency", "the 50th " + _LATENCY, unit="s", decimals=6,
      title="latency train p50 (ms)", fmt="{:.1f}", scale="ms", shown_in=("table", "latency table"), optional=True),
    F("latency_train_p95_s", "latency", "the 95th, the same", unit="s", decimals=6, title="latency train p95 (ms)",
      fmt="{:.1f}", scale="ms", shown_in=("table", "latency table"), optional=True),
    F("latency_infer_p50_s", "latency", "the 50th percentile, " + _INFER, unit="s", decimals=6,
      title="latency infer p50 (ms)", fmt="{:.1f}", scale="ms", shown_in=("table", "latency table"), optional=True),
    F("latency_infer_p95_s", "latency", "the 95th, the same", unit="s", decimals=6, title="latency infer p95 (ms)",
      fmt="{:.1f}", scale="ms", shown_in=("table", "latency table"), optional=True),
    F("latency_parts_train", "latency", _PARTS, unit="s", decimals=6, title="parts (ms)", fmt="{:.1f}",
      scale="ms", shown_in=("latency table",)),
    F("latency_parts_infer", "latency", "the same over the ``infer`` events, without backward_s", unit="s",
      decimals=6, title="parts (ms)", fmt="{:.1f}", scale="ms", shown_in=("latency table",)),
    F("adapt_policy", "adapt", "the policy, as the first source's ``adapt_start`` event says"),
    F("adapt_level_name", "adapt", "what the level is (\"budget\", \"mask number\", \"quality\"), as it says"),
    F("adapt_levels", "adapt", "the levels, most compression first, as it says"),
    F("adapt_target_samples_per_s", "adapt", "the target, as it says", unit="samples/s"),
    F("adapt_decisions", "adapt", "intervals decided, over all sources"),
    F("adapt_changes", "adapt", "those that changed the level"),
    F("adapt_changes_per_min", "adapt", "changes per minute of training steps (each source's intervals' seconds, "
      "summed)", unit="1/min", decimals=3),
    F("adapt_time_at_level", "adapt", "{level: seconds of training steps at it}, over all sources: each interval "
      "counts at the level in force while it ran (its ``previous``)", unit="s", decimals=3),
    F("adapt_within_target", "adapt", "the share of intervals, over all sources, whose samples/s reached at least "
      "1 - TARGET_TOLERANCE (75%) of the target", decimals=4),
    F("adapt_samples_per_s_min", "adapt", "the least samples/s of those intervals", unit="samples/s", decimals=3),
    F("adapt_samples_per_s_median", "adapt", "their median samples/s", unit="samples/s", decimals=3),
)
del F, V

FIGURES: dict[str, Figure] = {d.name: d for d in DECLARED if isinstance(d, Figure)}
VIEWS: dict[str, View] = {d.name: d for d in DECLARED if isinstance(d, View)}
COLUMNS: dict[str, Figure | View] = {d.name: d for d in DECLARED}


def decimals(name: str) -> int:
    """The decimals summary.json rounds a figure to."""
    places = FIGURES[name].decimals
    if places is None:
        raise KeyError(f"the figure {name} declares no rounding")
    return places


def rounded(name: str, value) -> float:
    """``value`` rounded as the figure ``name`` declares."""
    return round(value, decimals(name))


def shown(place: str) -> list[Figure | View]:
    """The declarations shown in ``place`` (a key of PLACES), in their order."""
    if place not in PLACES:
        raise KeyError(f"no place {place!r}; known: {', '.join(PLACES)}")
    return [d for d in DECLARED if place in d.shown_in]


def one(name: str, arm: Mapping, comparison: Mapping | None = None):
    """The one value the column ``name`` holds for an arm."""
    return COLUMNS[name].one(arm, comparison)


def cell(column: Figure | View, value, missing: str = "-") -> str:
    """A value of ``column`` written as the tables write it (``missing`` where it is not known)."""
    if value is None or (isinstance(value, float) and value != value):
        return missing
    try:
        return column.fmt.format(SCALES[column.scale](value) if column.scale else value)
    except (TypeError, ValueError):
        return missing


def comparison_of(summary: Mapping, name: str) -> Mapping | None:
    """The ratios of arm ``name`` against the baseline in a summary.json (None without)."""
    return ((summary.get("comparison") or {}).get("by_module") or {}).get(name)
