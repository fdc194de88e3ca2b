"""Emulated links between the sources and the server (``--bandwidth``, ``--medium``,
``--link``, ``--link-trace``, ``--delay``, ``--loss``): every source in a network
namespace of its own, joined by a veth to a hub namespace that holds a bridge and the
server's namespace, traffic shaped by tc in both directions.

An arm with a link writes ``<arm>/link.jsonl`` (one JSON object per line, ``t`` is
``time.time()`` like the programs' traces): a ``link`` event once the links are up
(arm.py), each source's interface counters before it starts and after it ends (``nic``),
and from the link controller (controller.py) every shaper's rate (``capacity``) and the
counters every ``SAMPLE_S`` seconds (``sample``). Their fields and units are declared in
workloads/events.py.
"""
