"""The options only the testbed reads, declared like the programs' options
(``workloads.settings.Option``), so that ``testbed run``'s parser, validation, the chart's
values and the manifest come from the same declarations."""
from __future__ import annotations

from workloads import settings
from workloads.settings import Option

from .cpucap import METHODS

TB = ("testbed",)
BACKENDS = ("local", "k8s")

TESTBED_OPTIONS: tuple[Option, ...] = (
    Option("cpu", float, 0.4, "CPU cap per source, in cores", TB, positive=True, chart="cpu", group="run",
           # a number, a decimal string (what `helm install --set cpu=0.4` gives) or millicores
           chart_schema={"description": "CPU cap per source: cores (> 0, a number or a decimal string like \"0.4\") "
                                        "or millicores like \"400m\"",
                         "oneOf": [{"type": "number", "exclusiveMinimum": 0},
                                   {"type": "string",
                                    "pattern": r"^([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*|[1-9][0-9]*m)$"}]}),
    Option("server-cpus", int, 0, "pin the server to this many cores of its own and the sources to the rest "
           "(0: no pinning)", TB, min=0, group="run"),
    Option("cap-method", str, "auto", "how CPU caps are enforced: auto (cgroup v2, cgroup v1, else psutil with a "
           "warning), cgroup, psutil or none", TB, choices=METHODS, group="run"),
    Option("backend", str, "local", "local (processes on this machine) or k8s (the Helm chart on a cluster)", TB,
           choices=BACKENDS, group="run"),
    Option("insecure", bool, False, "no CURVE: plaintext between sources and server, any peer that reaches the port "
           "may talk to the server (for overhead comparisons)", TB, group="run"),
    Option("out", str, "", "run directory (default: a new folder under ./runs/)", TB, group="run"),
    Option("quiet", bool, False, "print nothing but errors", TB, group="run"),
    Option("namespace", str, "", "Kubernetes namespace (default: the kube context's, as helm install uses)", TB,
           group="k8s"),
    Option("kube-context", str, "", "kubeconfig context (default: the current one)", TB, group="k8s"),
    Option("keep", bool, False, "leave each arm's release installed", TB, group="k8s"),
    Option("source-image", str, "", "source image REPO:TAG (default: the chart's)", TB, group="k8s"),
    Option("server-image", str, "", "server image REPO:TAG (default: the chart's)", TB, group="k8s"),
    Option("gpus", int, 1, "GPUs for the server (0: run it on the CPU)", TB, min=0, chart="server.gpus", group="k8s"),
    Option("wait", float, 3600.0, "seconds to wait for an arm's sources", TB, positive=True, group="k8s"),
    Option("pending-timeout", float, 600.0, "seconds a pod may stay Pending (scheduling and image pulls included) "
           "before the run stops", TB, positive=True, group="k8s"),
    Option("data-pvc", str, "", "PersistentVolumeClaim holding CIFAR-10 in torchvision's layout, mounted read-only "
           "at /data in the source pods (empty: the synthetic dataset)", TB, chart="data.pvc", group="k8s"),
)

settings.add_declarations(lambda: TESTBED_OPTIONS)


def run_options() -> list[Option]:
    """The options of ``testbed run``: every option that is a choice of the run."""
    return [o for o in settings.options() if not o.per_process]
