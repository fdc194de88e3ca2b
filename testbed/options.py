"""The options only the testbed reads, declared like the programs' options
(``workloads.settings.Option``), so that ``testbed run``'s parser, validation, the chart's
values and the manifest come from the same declarations."""
from __future__ import annotations

from workloads import settings
from workloads.option import Option

from .backends import BACKENDS
from .cpucap import METHODS
from .memcap import SIZE, parse_size
from .warmparent import SPAWN_METHODS
from .links.profiles import PROFILES
from .links.values import check_list, parse_delay, parse_loss, parse_updown

TB = ("testbed",)

TESTBED_OPTIONS: tuple[Option, ...] = (
    Option("cpu", float, 0.4, "CPU cap per source, in cores; a comma list gives one per source, cycled "
           "(0.4,0.2: a heterogeneous fleet; the local backend)", TB, positive=True, per_source=True, chart="cpu",
           group="run",
           # a number, a decimal string (what `helm install --set cpu=0.4` gives) or millicores
           chart_schema={"description": "CPU cap per source: cores (> 0, a number or a decimal string like \"0.4\") "
                                        "or millicores like \"400m\"",
                         "oneOf": [{"type": "number", "exclusiveMinimum": 0},
                                   {"type": "string",
                                    "pattern": r"^([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*|[1-9][0-9]*m)$"}]}),
    Option("memory", str, "", "memory limit per source, a Kubernetes quantity (512Mi, 2Gi, 800M); a comma list gives "
           "one per source, cycled; a source past its limit is killed by the kernel and lost (empty: no limit; on "
           "Kubernetes the chart's memory, 2Gi). Each source's peak is recorded either way where a memory cgroup can "
           "be made", TB, validate=check_list(parse_size, "--memory"), chart="memory", group="run",
           chart_schema={"description": "memory limit and request of each source pod, a Kubernetes quantity "
                                        "(512Mi, 2Gi)", "type": "string", "pattern": SIZE.pattern}),
    Option("server-cpus", int, 0, "pin the server to this many cores of its own and the sources to the rest "
           "(0: no pinning)", TB, min=0, group="run"),
    Option("server-threads", int, 0, "the server's torch threads (0: its pinned cores with --server-cpus, else "
           "every core this host gives the run; the run says which and why)", TB, min=0, group="run"),
    Option("cap-method", str, "auto", "how CPU caps are enforced: auto (cgroup v2, cgroup v1, else psutil with a "
           "warning), cgroup, psutil or none", TB, choices=METHODS, group="run"),
    Option("spawn", str, "fork", "how the local backend starts sources: fork (from one warm parent per arm that "
           "has imported torch and the programs: a source starts in about a second and shares those pages) or "
           "exec (a fresh interpreter per source, which imports everything under its cap); --backend inproc "
           "forks each arm's process from one warm parent per run the same way; a Kubernetes pod is its own "
           "process either way", TB, choices=SPAWN_METHODS, group="run"),
    Option("backend", str, "local", "; ".join(f"{kind.name}: {kind.help}" for kind in BACKENDS.values()), TB,
           choices=tuple(BACKENDS), group="run"),
    Option("insecure", bool, False, "no CURVE: plaintext between sources and server, any peer that reaches the port "
           "may talk to the server (for overhead comparisons)", TB, group="run"),
    Option("out", str, "", "run directory (default: a new folder under ./runs/)", TB, group="run"),
    Option("quiet", bool, False, "print nothing but errors", TB, group="run"),
    Option("no-report", bool, False, "end with summary.json and the table, without drawing the report (report.md "
           "and its figures: seconds per run); testbed report RUN draws it later", TB, group="run"),
    Option("link", str, "", "a named link profile for every source (its rate, medium and delay; the README's "
           "table says where each number comes from; --bandwidth, --medium, --delay beside it win)", TB,
           choices=("", *PROFILES), group="link"),
    Option("bandwidth", str, "", "each source's link rate: RATE both ways or UP/DOWN (5mbit, 2mbit/20mbit); a "
           "comma list gives one per source, cycled (empty: no emulated link, loopback)", TB,
           validate=check_list(parse_updown, "--bandwidth"), group="link"),
    Option("medium", str, "", "dedicated (one link per source, full duplex, as switched Ethernet) or shared "
           "(one channel every source contends for, as Wi-Fi; one rate: both directions share it) "
           "(default: the profile's, else dedicated)", TB, choices=("", "dedicated", "shared"), group="link"),
    Option("delay", str, "", "one-way delay each direction (20ms; a comma list: one per source); needs netem "
           "in the kernel", TB, validate=check_list(parse_delay, "--delay"), group="link"),
    Option("loss", str, "", "packet loss each direction (1%; a comma list: one per source); needs netem in "
           "the kernel", TB, validate=check_list(parse_loss, "--loss"), group="link"),
    Option("link-trace", str, "", "UP_FILE[,DOWN_FILE]: time-varying capacity, Mahimahi format (one line per "
           "1500-byte delivery opportunity, in ms) or a seconds,Mbit/s CSV; one file: both directions", TB,
           group="link"),
    Option("sweep-bandwidth", str, "", "every arm once per rate in this comma list (1mbit,5mbit,20mbit), one "
           "after another: short for a sweep spec with a [grid] of bandwidth, in testbed sweep's layout under --out "
           "(a trial per arm and rate, sweep.json, the sweep's figures)", TB,
           validate=check_list(parse_updown, "--sweep-bandwidth"), group="link"),
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



def options() -> list[Option]:
    """Every option: the programs' (``workloads.settings``), then the testbed's own."""
    found = {o.name: o for o in settings.options()}
    for option in TESTBED_OPTIONS:
        if option.name in found:
            raise ValueError(f"option --{option.name} is declared twice")
        found[option.name] = option
    return list(found.values())


def option(name: str) -> Option:
    """The option named ``name`` (``link-trace`` or ``link_trace``), a program's or the testbed's."""
    for o in options():
        if o.name == name or o.dest == name:
            return o
    raise KeyError(name)


def run_options() -> list[Option]:
    """The options of ``testbed run``: every option that is a choice of the run."""
    return [o for o in options() if not o.per_process]
