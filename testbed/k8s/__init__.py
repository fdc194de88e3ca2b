"""The Kubernetes backend: each arm is a release of the chart (``charts/``), whose pods
run the same two programs as the local backend and trace to stdout; the traces are
collected from the pod logs into the local run-directory layout.

- ``values``: the chart values for one arm of a run spec, and the release's name;
- ``links``: the link options on a cluster: each source pod's rates (the chart's
  ``link`` values), and a one-line refusal of what a cluster cannot enforce;
- ``cluster``: the release (Helm) and the objects (kubernetes client) of one namespace;
- ``follow``: waiting for the sources' Job, reporting pods that cannot start;
- ``stream``: every pod's log streamed into the run directory while the arm runs;
- ``collect``: pod logs into server.jsonl, source-N.jsonl and logs/, and where the
  pods ran (nodes, CPU and GPU models) for the manifest;
- ``backend``: the four steps as a ``testbed.backend.Backend``.
"""
from .backend import KubernetesBackend
from .cluster import Cluster, ClusterError
from .collect import collect, split_pod_log
from .follow import follow
from .links import link_values, link_warnings
from .stream import LogStreamer
from .values import chart_values, release_name

__all__ = ["Cluster", "ClusterError", "KubernetesBackend", "LogStreamer", "chart_values", "collect", "follow", "link_values",
           "link_warnings", "release_name", "split_pod_log"]
