"""The trace events, declared once: each event's name, who writes it, its fields with
their units, which may be absent, and what it means.

Every process of a run appends one JSON object per line (workloads/trace.py); the
testbed adds its own files. Who writes what, and where (an arm folder's files):

    source   source-N.jsonl  workloads/source.py (and workloads/inprocess.py, in process;
                             the compression modules' ``prepare`` through the source's trace)
    server   server.jsonl    workloads/server.py (and workloads/inprocess.py, in process)
    testbed  testbed.jsonl   testbed/local.py, testbed/k8s/collect.py: the sources lost
    link     link.jsonl      testbed/links/arm.py (link, nic) and the link controller,
                             testbed/links/controller.py (capacity, sample)

Every record starts with the envelope of its writer (:data:`ENVELOPE`: ``t``, the wall
clock ``time.time()``; ``run``, ``role``, ``source`` -- the source id, null at the server;
``event``, the name) and then the declared fields. A field may be null where its
meaning says so; one marked optional may be absent altogether.

The writers name events by the constants below (``trace.event(events.BATCH, ...)``), and
:class:`~workloads.trace.TraceWriter` refuses a name not declared for its role
(:func:`check`). ``analysis`` reads these files but imports nothing of workloads (DESIGN.md:
it only reads files), so it names the events it reads once, in analysis/load.py;
tests/test_trace_events.py proves that every one of those is declared here for the role
it is read from, and that every event of a real run matches its declaration. This module
imports nothing of the project, so that the link controller (a small process of the
testbed) and every program can use it.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

# -- who writes -----------------------------------------------------------------------------
ROLE_SOURCE, ROLE_SERVER, ROLE_TESTBED, ROLE_LINK = "source", "server", "testbed", "link"
FILES = {ROLE_SOURCE: "source-N.jsonl", ROLE_SERVER: "server.jsonl", ROLE_TESTBED: "testbed.jsonl",
         ROLE_LINK: "link.jsonl"}
ENVELOPE = {ROLE_SOURCE: ("t", "run", "role", "source", "event"),
            ROLE_SERVER: ("t", "run", "role", "source", "event"),
            ROLE_TESTBED: ("t", "run", "role", "source", "event"),
            ROLE_LINK: ("t", "event")}

# -- the names --------------------------------------------------------------------------------
START = "start"
DATA = "data"
CONNECTED = "connected"
PRETRAIN = "pretrain"
ENTROPY_MODEL = "entropy_model"
PREPARED = "prepared"
ADAPT_START = "adapt_start"
ADAPT = "adapt"
BATCH = "batch"
CALIBRATE = "calibrate"
INFER = "infer"
EVAL = "eval"
BYE = "bye"
DROP = "drop"
END = "end"
LISTENING = "listening"
HELLO = "hello"
REQUEST = "request"
ERROR = "error"
TAIL_FROM = "tail_from"
LOST = "lost"
MEMORY = "memory"
LINK = "link"
NIC = "nic"
CAPACITY = "capacity"
SAMPLE = "sample"

# -- units ------------------------------------------------------------------------------------
UNITS = {
    "s": "seconds (a duration)",
    "time": "seconds since the epoch (time.time())",
    "bytes": "bytes",
    "count": "a count or an index (epoch, batch, step: from 0)",
    "id": "an identifier (a source id, a process id)",
    "bool": "true or false",
    "text": "a string",
    "number": "a plain number (a loss, a ratio, a level)",
    "bits": "bits",
    "bits/s": "bits per second",
    "Mbit/s": "megabits per second",
    "samples/s": "samples per second",
    "ms": "milliseconds",
    "MiB": "mebibytes",
    "fraction": "a share, 0..1",
    "list": "a JSON array",
    "object": "a JSON object",
}


class UndeclaredEvent(LookupError):
    """An event name that is not declared for its writer: a bug of the code writing it."""


@dataclass(frozen=True)
class Field:
    name: str
    unit: str
    meaning: str
    optional: bool = False  # may be absent from the record (not only null)


@dataclass(frozen=True)
class Event:
    name: str
    writer: str
    meaning: str
    fields: tuple[Field, ...]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if not f.optional)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


def _fields(table: str) -> tuple[Field, ...]:
    """Fields from lines ``name unit meaning``; ``name?``: optional; a line indented
    further than the names continues the meaning above."""
    out: list[list[str]] = []
    for line in textwrap.dedent(table).strip("\n").splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            out[-1][2] += " " + line.strip()
            continue
        name, unit, meaning = line.split(None, 2)
        if unit not in UNITS:
            raise ValueError(f"field {name}: unknown unit {unit!r} (known: {', '.join(UNITS)})")
        out.append([name, unit, meaning])
    return tuple(Field(n.rstrip("?"), u, m, n.endswith("?")) for n, u, m in out)


# One request's round trip in parts, as a source traces it (batch and infer); what the
# server says in its reply's ``times`` (workloads/protocol.py) and what follows from it.
_ROUND_TRIP = """
    compute_s         s      the head's forward and the module's forward
    encode_s          s      the module's encode and the protocol's encode of the request
    rtt_s             s      from handing the request to the socket to having the reply (= wait_s)
    decode_s          s      the protocol's decode of the reply (and, in a training step, the
                             module's decode_grad)
    queue_s           s      the request's wait at the server, arrived to begun on (null where the
                             server did not say; so are the parts below)
    server_decode_s   s      the server's decode of the request (the protocol's and the module's)
    server_compute_s  s      the server's compute (the tail's forward, and backward and optimizer
                             step when training)
    server_encode_s   s      the server's encode of the reply (the gradient or the predictions)
    server_s          s      server_decode_s + server_compute_s + server_encode_s (queue_s +
                             server_s <= rtt_s)
    network_s         s      rtt_s - server_s - queue_s: the wire both ways and the sockets (one
                             clock each side, so it holds across hosts; clamped at 0)
    net_up_s          s      the server's arrived_at - the source's time.time() at the send
    net_down_s        s      the source's time.time() with the reply - the server's replied_at
                             (two wall clocks: meaningful where both share one, as on the local
                             backend; across hosts they may even be negative)
"""
_WIRE = """
    bytes_sent        bytes  what the request occupied on the ZMTP stream (frames and framing,
                             with CURVE its encryption's overhead: protocol.stream_bytes)
    bytes_received    bytes  the same of the reply
"""
_RESOURCES = """
    cpu_seconds       s      the process's CPU time, user and system (in process: the whole
                             process's)
    wall_seconds      s      wall time since the process was created
    cpu_share         fraction  cpu_seconds / wall_seconds (null with no wall time)
    peak_rss_mb       MiB    the process's peak resident memory
"""


def _event(name: str, writer: str, meaning: str, *tables: str) -> Event:
    return Event(name, writer, " ".join(meaning.split()), sum((_fields(t) for t in tables), ()))


DECLARATIONS: tuple[Event, ...] = (
    # -- a source ---------------------------------------------------------------------------
    _event(START, ROLE_SOURCE, "the process started, before its data is loaded", """
        pid               id     the process id
        module            text   the compression module
        model             text   the split model
        split             count  the cut: after this block
        process_created   time   when the OS created the process; the arm's time 0 is its
                                 sources' earliest
        torch             text   torch's version
        threads           count  torch's threads
        settings          object every option's effective value (workloads/settings.py)
        transport?        text   "inproc" when the source runs in process (workloads/inprocess.py)
    """),
    _event(DATA, ROLE_SOURCE, "where the source's data came from and how much of it it holds", """
        origin            text   the data's origin (a dataset; "synthetic..." when generated)
        synthetic         bool   the data is generated, not read
        train_samples     count  training samples in the source's shard
        test_samples      count  evaluation samples
        train_digest      text   the shard's fingerprint (CRC-32 of its images and labels, in order)
        difficulty?       fraction  the synthetic set's difficulty (--difficulty; synthetic data only)
    """),
    _event(CONNECTED, ROLE_SOURCE, "the server welcomed the source's hello: the connection is up", """
        server            text   the server's address (--server; "inproc" in process)
        device            text   the server's torch device
        module            text   the server's module; it and the four below equal the source's
                                 (else the hello is refused)
        model             text   the server's model
        split             count  the server's cut
        classes           count  the classes it predicts
        cut               list   the cut's shape (channels, height, width)
    """, _WIRE),
    _event(PRETRAIN, ROLE_SOURCE, "one step of what a compression module trains at the source on its own "
           "(its prepare, before the first batch; cdc also when its mask number changes)", """
        step              count  the step
        samples           count  samples in the step
        loss              number the step's loss
        stage?            text   which training: cdc's "train", "finetune" or "adapt"; entropic's
                                 "teacher" or "distill" (mcr2 has one)
        reconstruction?   number (cdc) the reconstruction loss
        ec_loss?          number (cdc) the error-correcting classifier's loss
        mask_number?      count  (cdc) the mask number it trains for
        distortion?       number (entropic, distill) the distortion term
        bits_per_sample?  bits   (entropic, distill) the estimated rate per sample
        rate?             number (mcr2) the coding rate term
        class_rate?       number (mcr2) the class-conditional coding rate
    """),
    _event(ENTROPY_MODEL, ROLE_SOURCE, "the entropy model of mcr2, fitted at the end of its phase 1", """
        kept              list   the latent dimensions kept (those of highest Fisher power), ascending
        fisher            list   their Fisher power
        model_bytes       bytes  the model's size (its PMF, offsets and the kept indices)
    """),
    _event(PREPARED, ROLE_SOURCE, "the module is ready to stream", """
        duration_s        s      its prepare: what it trained at the source before the first batch
    """),
    _event(ADAPT_START, ROLE_SOURCE, "--adapt (workloads/adapt.py): the controller starts", """
        policy            text   the policy (threshold, harmonic)
        level_name        text   what the module's level is (budget, mask number, quality)
        levels            list   the levels, most compression first
        bytes_per_sample  list   each level's bytes per sample
        target_samples_per_s  samples/s  what it aims at
        interval_s        s      training seconds between two decisions (--adapt-interval)
        dwell             count  intervals between two changes (--adapt-dwell)
        value             number the level it starts at (the least compression)
    """),
    _event(ADAPT, ROLE_SOURCE, "--adapt: one interval of training steps after the warm-up closed, its "
           "measurement and the controller's decision, taken", """
        interval          count  the interval
        policy            text   the policy
        samples           count  samples trained in the interval
        bytes             bytes  its requests' and replies' bytes, both ways
        network_s         s      their time on the network (see batch)
        compute_s         s      the rest of the steps' time
        samples_per_s     samples/s  samples / the interval's time
        bandwidth_mbit_s  Mbit/s bytes / network_s (null with no network time)
        previous          number the level before
        value             number the level after
        level             count  its index in the levels
        changed           bool   whether the level changed
        reason            text   the decision in words, with the numbers behind it
        apply_s           s      what the change took (cdc fine-tunes)
        nic_tx_bytes?     bytes  the source's interfaces' bytes sent over the interval (where it has
                                 interfaces of its own: an emulated link's, a pod's)
        nic_rx_bytes?     bytes  and received
    """),
    _event(BATCH, ROLE_SOURCE, "one training step: the cut to the server, the gradient back, the "
           "optimizer steps; the first of a source is its warm-up (traced, left out of throughput). "
           "compute_s + encode_s + rtt_s + decode_s + backward_s <= latency_s", """
        epoch             count  the epoch
        batch             count  the batch in the epoch
        samples           count  samples in the batch
        warmup            bool   the source's first step (warm-up, CUDA JIT)
        duration_s        s      the whole step (= latency_s)
        latency_s         s      the whole step, from its start to the optimizer steps done
    """, _ROUND_TRIP, """
        backward_s        s      the prune loss, backward, the optimizer steps
        wait_s            s      the step's wait for the server's reply (= rtt_s)
        cpu_s             s      the source process's CPU seconds at the end of the step (in process:
                                 the whole process's)
    """, _WIRE, """
        payload_sent      bytes  the request's arrays alone (no header, no padding)
        payload_received  bytes  the reply's arrays alone
        coded_sent        bytes  the method's own payload in the request (SourcePart.coded_arrays)
        loss              number the server's training loss
        correct           count  the batch's correct predictions at the server
        distill_loss      number the server's distillation loss (null without one)
        prune_loss        number the module's own loss at the source (null without one)
        budget            count  the maps sent (the module's budget)
        phase             count  the schedule's phase
        lr_scale          number the learning rate's multiplier (paper 002's boost)
        filter_sum?       number (the filter family) the filter's sum
        filter_topb_share?  fraction  (the filter family) its top-budget values' share of the sum
        mask_number?      count  (cdc) the mask number
        bits_per_value?   bits   (cdc) bits per latent value
        quality?          number (jpeg, webp) the codec's quality
        latent_dims_sent? count  (mcr2) the latent dimensions sent
    """),
    _event(CALIBRATE, ROLE_SOURCE, "--bn-batches, before an evaluation: one training batch through the "
           "current weights, here and at the server, for the BatchNorm statistics the evaluation uses "
           "(workloads/batchnorm.py); the eval event's bytes include these", """
        epoch             count  the epoch evaluated
        batch             count  the calibration batch
        samples           count  samples in it
        duration_s        s      the request, computing included
    """, _WIRE),
    _event(INFER, ROLE_SOURCE, "one split-inference request of an evaluation: the test samples through "
           "the head, the module and the server, the predictions back", """
        epoch             count  the epoch evaluated
        samples           count  samples in the request
        latency_s         s      from the head's forward to the predictions in hand
    """, _ROUND_TRIP, _WIRE, """
        coded_sent        bytes  the method's own payload in the request
    """),
    _event(EVAL, ROLE_SOURCE, "the end-of-epoch evaluation: test accuracy by split inference", """
        epoch             count  the epoch
        budget            count  the maps sent
        samples           count  test samples
        accuracy          fraction  correct predictions / samples
        bytes_sent        bytes  the evaluation's infer requests' bytes and, with --bn-batches, its
                                 calibrate requests'
        bytes_received    bytes  the same of their replies
        coded_sent        bytes  the infer requests' own payload alone
        filter?           list   (the filter family) every filter value
    """),
    _event(BYE, ROLE_SOURCE, "the source said bye: it trained and evaluated every epoch", _WIRE),
    _event(DROP, ROLE_SOURCE, "--drop: the source kills itself with SIGKILL right after (no bye, no end)", """
        after_s           s      seconds after the process was created
    """),
    _event(END, ROLE_SOURCE, "the process ends", """
        status            text   ok, error, server-gone or interrupted
        error?            text   what went wrong
    """, _RESOURCES),
    # -- the server -------------------------------------------------------------------------
    _event(START, ROLE_SERVER, "the process started", """
        pid               id     the process id
        module            text   the compression module
        settings          object every option's effective value (workloads/settings.py)
        transport?        text   "inproc" in process (workloads/inprocess.py)
    """),
    _event(LISTENING, ROLE_SERVER, "the model is built and the socket bound: sources may say hello", """
        port              count  the TCP port (null in process)
        bind              text   the address bound ("inproc" in process)
        curve             bool   CURVE encryption and authentication (--keys)
        max_request       bytes  the largest frame taken in (ZMQ_MAXMSGSIZE)
        device            text   the torch device
        module            text   the compression module
        model             text   the split model
        split             count  the cut
        cut               list   the cut's shape
        torch             text   torch's version
        threads           count  torch's threads
        lr_scale          number the learning rate's multiplier on the module's own parameters
    """),
    _event(HELLO, ROLE_SERVER, "a source said hello and was taken", """
        peer              id     its source id
    """),
    _event(REQUEST, ROLE_SERVER, "one request answered, traced after its reply is on its way; the "
           "reply's times carry the same parts (workloads/protocol.py)", """
        peer              id     the source id (null before a hello)
        op                text   the reply's op (welcome, grad, pred, calibrated, bye, pong, error)
        bytes_in          bytes  the request on the ZMTP stream (protocol.stream_bytes)
        bytes_out         bytes  the reply on the ZMTP stream
        duration_s        s      the server's time on this request: alone, from beginning on it to its
                                 reply encoded (server_s and the protocol's encode of the reply); in a
                                 pass of several, its own decode and encode (the protocol's too) plus
                                 its share of the pass's compute, batch_compute_s x its samples /
                                 batch_samples (so the requests' sum is the server's busy time)
        queue_s           s      from the request having fully arrived (taken off the socket) to the
                                 server beginning on it: the requests before it, and the hand-over
                                 (nil in process)
        server_decode_s   s      the protocol's decode of the request and the module's decode
        server_compute_s  s      the tail's forward (and backward and optimizer step when training);
                                 all the handling of hello, bye, ping and of a refused request. In a
                                 pass of several: the rest of its stay, server_s less its own decode
                                 and encode (the pass's compute, and the other requests' decode and
                                 encode meanwhile)
        server_encode_s   s      the module's encode of the reply (the gradient or the predictions)
        server_s          s      server_decode_s + server_compute_s + server_encode_s: from beginning
                                 on the request to the reply's times being written (the protocol's
                                 encode of the reply and the hand-over to the receiver come after:
                                 the source counts them in its network_s)
        batch_id          count  the pass it was answered in, numbered from 0 by the server (a request
                                 answered on its own is a pass of one)
        batch_requests    count  the requests answered in that pass (several: inference requests with
                                 the same BatchNorm statistics, or training steps under --server-train
                                 merged; --server-batch)
        batch_samples     count  the samples of that pass (0: hello, ping, bye, a refused request)
        batch_compute_s   s      the pass's compute: the tail's one forward (and backward and optimizer
                                 step); alone, server_compute_s
    """),
    _event(ERROR, ROLE_SERVER, "a request refused (an error reply; the server keeps serving)", """
        peer              text   who sent it: "source N" or "unknown peer <identity>"
        op                text   its op (null when it could not be decoded)
        reason            text   why (at most 300 characters)
    """),
    _event(BYE, ROLE_SERVER, "a source said bye", """
        peer              id     its source id
    """),
    _event(TAIL_FROM, ROLE_SERVER, "the tail took the weights a source sent for it (paper 004: the "
           "student's layers start from the teacher's), once, before it trained", """
        source            id     that source (in place of the envelope's null)
        values            count  the values taken
    """),
    _event(END, ROLE_SERVER, "the process ends", """
        status            text   ok, error or interrupted
        error?            text   what went wrong
        served?           object source id (-1: no source) -> requests answered
        peak_rss_mb?      MiB    the process's peak resident memory
    """),
    # -- the testbed ------------------------------------------------------------------------
    _event(LOST, ROLE_TESTBED, "a source died (a signal, a non-zero exit; on Kubernetes a failed pod); "
           "the others went on", """
        cause             text   why, in words ("killed by SIGKILL", "exit status 2: <its error>")
        signal            text   the signal's name (null without one)
        exit_status       number its exit status (null when a signal ended it)
        injected          bool   --drop killed it (its trace has a drop event)
        reason?           text   (Kubernetes) the container's reason: OOMKilled, Error, ...
    """),
    _event(MEMORY, ROLE_TESTBED, "once per source at the end of its arm, where it had a memory cgroup of its own "
           "(testbed/memcap.py): the memory the kernel charged to it", """
        peak_bytes        bytes  the most charged to it at once (null where the kernel does not say)
        limit_bytes       bytes  its --memory limit (null: none)
        limit             text   that limit as given (512Mi; null: none)
        oom_killed        bool   the kernel's OOM killer ended a process of it
        method            text   how: cgroup-v1 memory or cgroup-v2 memory
    """),
    # -- the emulated link --------------------------------------------------------------------
    _event(LINK, ROLE_LINK, "once, when the links are up: how they were built", """
        medium            text   shared or dedicated
        duplex            text   half or full
        profile           text   the --link profile (null without one)
        label             text   how figures name the link ("5mbit shared"); analysis reads it
                                 as link_label
        channel           object the shared medium's {up_bps, down_bps} (null when dedicated)
        trace_up          text   the --link-trace file's name upwards (null without one)
        trace_down        text   and downwards
        profile_delay_ms  ms     the profile's delay (null without one)
        sources           list   per source: {source, up_bps, down_bps, delay_ms (the delay its
                                 link got: a profile's only where the kernel has netem), loss,
                                 trace_up, trace_down, interface ("eth0"), address}
        server_address    text   the server's address on the hub ("10.77.0.1")
        kernel            object {qdiscs: [...], netem: bool}: what the kernel offers
        delay_emulated    bool   false: a profile's delay was left out (no netem)
        namespaces        object {hub, server, sources: [...]}: the network namespaces
    """),
    _event(NIC, ROLE_LINK, "a source's own interface counters (tx: towards the server), before the "
           "source starts and after it ends; segmentation offload is off, so packets are wire packets "
           "and bytes include every Ethernet/IP/TCP header", """
        source            id     the source
        phase             text   start or end
        tx_bytes          bytes  sent
        rx_bytes          bytes  received
        tx_packets        count  packets sent
        rx_packets        count  packets received
    """),
    _event(CAPACITY, ROLE_LINK, "(the link controller) a shaper's rate from this time on: one at the start "
           "of every shaped direction, then one per change of a trace-driven link (--link-trace)", """
        direction         text   up, down, or both (a half-duplex channel's one shaper)
        source            id     the source (null: the shared channel)
        bps               bits/s the rate
    """),
    _event(SAMPLE, ROLE_LINK, "(the link controller) a source's interface counters, every SAMPLE_S "
           "seconds while the arm runs (the delivered rate over time)", """
        source            id     the source
        tx_bytes          bytes  sent so far
        rx_bytes          bytes  received so far
    """),
)

DECLARED: dict[tuple[str, str], Event] = {(e.writer, e.name): e for e in DECLARATIONS}
NAMES: frozenset[str] = frozenset(e.name for e in DECLARATIONS)


def check(writer: str, name: str) -> str:
    """``name``, when it is declared for ``writer``; UndeclaredEvent if not."""
    if (writer, name) not in DECLARED:
        known = sorted(e.name for e in DECLARATIONS if e.writer == writer)
        raise UndeclaredEvent(f"trace event {name!r} is not declared for the {writer} in workloads/events.py "
                              f"(declared: {', '.join(known) or 'nothing'})")
    return name


def problems(writer: str, record: dict) -> list[str]:
    """How a written record departs from its declaration: its name undeclared for
    ``writer``, a required field missing, a field not declared (the envelope aside)."""
    name = record.get("event")
    event = DECLARED.get((writer, name))
    if event is None:
        return [f"{writer}: event {name!r} is not declared"]
    missing = [f for f in event.required if f not in record]
    extra = [f for f in record if f not in event.names and f not in ENVELOPE[writer]]
    return ([f"{writer} {name}: required field {f!r} missing" for f in missing]
            + [f"{writer} {name}: field {f!r} not declared" for f in extra])


def markdown_table() -> str:
    """The declarations as a Markdown table, one row per event and writer (for the README)."""
    rows = ["| event | written by | what it means | fields (unit; ? may be absent) |", "| --- | --- | --- | --- |"]
    for e in DECLARATIONS:
        fields = ", ".join(f"`{f.name}`{'?' if f.optional else ''} ({f.unit})" for f in e.fields) or "—"
        rows.append(f"| `{e.name}` | {e.writer} (`{FILES[e.writer]}`) | {e.meaning.replace('|', '/')} | {fields} |")
    return "\n".join(rows) + "\n"
