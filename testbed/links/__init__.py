"""Emulated links between the sources and the server (``--bandwidth``, ``--medium``,
``--link``, ``--link-trace``, ``--delay``, ``--loss``): every source in a network
namespace of its own, joined by a veth to a hub namespace that holds a bridge and the
server's namespace, traffic shaped by tc in both directions.

An arm with a link writes ``<arm>/link.jsonl`` (one JSON object per line, ``t`` is
``time.time()`` like the programs' traces):

- ``{"event": "link", "medium": "shared"|"dedicated", "duplex": "half"|"full",
  "server_address": "10.77.0.1", "kernel": {"qdiscs": [...], "netem": bool},
  "channel": {"up_bps": int|None, "down_bps": int|None} | None,   # shared medium only
  "trace_up": str|None, "trace_down": str|None,                   # trace files' names
  "sources": [{"source": 0, "up_bps": int|None, "down_bps": int|None, "delay_ms": float,
               "loss": float, "trace_up": str|None, "trace_down": str|None,
               "interface": "eth0", "address": "10.77.0.10"}, ...],
  "profile": str|None, "profile_delay_ms": float|None, "delay_emulated": bool,
  "namespaces": {"hub": str, "server": str, "sources": [str, ...]},
  "label": "5mbit shared"}``  -- once, when the links are up; ``label`` is how figures
  name the link; a source's ``delay_ms`` is the delay its link got (a profile's delay
  only where the kernel has netem: ``delay_emulated`` false says it was left out).
- ``{"event": "nic", "source": i, "phase": "start"|"end", "tx_bytes": int,
  "rx_bytes": int, "tx_packets": int, "rx_packets": int}`` -- the source's own
  interface counters (tx: towards the server), before the source starts and after it
  ends; segmentation offload is off, so packets are wire packets and bytes include
  every Ethernet/IP/TCP header.
- ``{"event": "capacity", "direction": "up"|"down"|"both", "source": i|None, "bps": int}``
  -- the shaper's rate from this time on (``source`` None: the shared channel; "both":
  a half-duplex channel's one shaper for both directions); one
  at the start of every shaped direction, then one per change of a trace-driven link.
- ``{"event": "sample", "source": i, "tx_bytes": int, "rx_bytes": int}`` -- the
  source's interface counters, every ``SAMPLE_S`` seconds while the arm runs (the
  delivered rate over time).
"""
