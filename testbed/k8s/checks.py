"""What ``testbed run --backend k8s`` refuses: what a cluster cannot enforce per pod, and
the options that have no meaning there."""
from __future__ import annotations

from ..options import run_options
from ..spec import RunSpec, SpecError
from .links import link_values

# what a local-only option's user gives on Kubernetes instead
ON_K8S_INSTEAD = {"data_dir": "on Kubernetes give a PersistentVolumeClaim holding CIFAR-10 with --data-pvc NAME "
                              "(mounted read-only at /data in the source pods; by hand: the chart's data.pvc or "
                              "data.volume)"}


def refuses(spec: RunSpec) -> None:
    if isinstance(spec.cpu, tuple):
        raise SpecError("--cpu with one value per source is for the local backend: the chart gives every "
                        "source pod the same CPU limit")
    if "," in spec.memory:
        raise SpecError("--memory with one value per source is for the local backend: the chart gives every "
                        "source pod the same memory limit")
    try:
        link_values(spec)  # a cluster enforces a fixed rate per source pod, no more
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def check_spec(spec: RunSpec, links) -> None:
    for option in run_options():
        if option.local_only and spec.values[option.dest] != option.default:
            instead = ON_K8S_INSTEAD.get(option.dest)
            raise SpecError(f"{option.flag} is for the local backend only: " + (instead or option.help))
