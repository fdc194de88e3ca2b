"""Every backend of ``testbed run``, declared once: its name, what it is, where its code
lives, what it refuses, where a sweep runs its trials (every backend can), and where its
host facts come from. ``--backend``'s choices and help, validation, the runner, the CLI
and sweeps ask this registry; a backend's own file holds what only it knows (it implements
``testbed.backend.Backend`` and checks a spec for itself). Adding a backend is one
declaration here plus its file."""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BackendKind:
    name: str
    help: str            # what it is, for --backend's help
    opens: str           # "module:callable" that makes it for a validated spec: (spec, say) -> Backend
    refuses: str         # "module:callable" (spec) -> None: SpecError for what it cannot take, checked first
    checks: str          # "module:callable" (spec, links) -> None: SpecError for what only it (its host) can
                         # say, checked last (``links``: the planned emulated links, None for loopback)
    trials: str          # where ``testbed sweep`` runs its trials: "ray" (each a process on a Ray node, side by
                         # side as the CPUs allow) or "here" (one after another from this machine)
    own_ports: bool      # trials side by side on one host need ports of their own
    trial_cpus: float | None  # a sweep trial's CPUs by default (None: the whole node)
    cluster_host: bool = False  # its processes run elsewhere: the manifest records the nodes, as each arm ends

    def open(self, spec, say=print):
        return _resolve(self.opens)(spec, say)

    def refuse(self, spec) -> None:
        _resolve(self.refuses)(spec)

    def check(self, spec, links) -> None:
        _resolve(self.checks)(spec, links)


BACKENDS: dict[str, BackendKind] = {kind.name: kind for kind in (
    BackendKind("local", "processes on this machine", "testbed.local:LocalBackend", "testbed.local:refuses",
                "testbed.local:check_spec", trials="ray", own_ports=True, trial_cpus=None),
    BackendKind("k8s", "the Helm chart on a cluster", "testbed.k8s.backend:open_backend", "testbed.k8s.checks:refuses",
                "testbed.k8s.checks:check_spec", trials="here", own_ports=False, trial_cpus=None,
                cluster_host=True),  # trials "here": each a release installed from this machine, one at a time
    BackendKind("inproc", "each arm in one process, its sources stepped in turn: the same bytes and training "
                "without sockets, caps or links, for fast accuracy sweeps", "testbed.inproc:InprocBackend",
                "testbed.inproc:refuses", "testbed.inproc:check_spec", trials="ray", own_ports=False, trial_cpus=1.0),
)}


SWEEP_DEFAULT = "inproc"  # a sweep spec that names no backend: accuracy sweeps are the common case


def get(name: str) -> BackendKind:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None


def _resolve(where: str):
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)
