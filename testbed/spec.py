"""A run spec: what ``testbed run`` was asked for, checked before anything starts."""
from __future__ import annotations

import os
import socket
import sys

from workloads import adapt, settings
from workloads.compression import CompressionConfig
from workloads.compression import get as get_module
from workloads.compression.registry import knobs
from workloads.data import DATASETS, DataError, augmenting, class_count, dataset_kind, describe_data
from workloads.data import check_data_dir as data_dir_checked
from workloads.models import block_count, build_split_model

from . import backends
from .errors import BadInput
from .links.network import probe_kernel
from .links.plan import plan_links
from .links.values import per_source
from .options import option as declaration, run_options

DEFAULT_ARMS = tuple(settings.option("module").run_default.split(","))


class SpecError(BadInput):
    """A bad argument; the message names it."""


class RunSpec:
    """What ``testbed run`` was asked for: the value of every run option, by dest, with
    the declared defaults for those not given. ``modules`` (the arms) is the
    ``--module`` list."""

    def __init__(self, **values):
        declared = {o.dest: o for o in run_options()}
        if "modules" in values:
            values["module"] = values.pop("modules")
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise SpecError(f"unknown setting(s) {', '.join(unknown)}")
        resolved = {dest: o.run_default if o.run_default is not None else o.default for dest, o in declared.items()}
        resolved.update(values)
        if isinstance(resolved["module"], str):
            resolved["module"] = tuple(m.strip() for m in resolved["module"].split(",") if m.strip())
        resolved["module"] = tuple(resolved["module"])
        if isinstance(resolved["cpu"], str):  # "0.4,0.2" from code; the CLI converts already
            try:
                resolved["cpu"] = declared["cpu"].convert(resolved["cpu"])
            except ValueError as exc:
                raise SpecError(str(exc)) from None
        if isinstance(resolved["cpu"], list):
            resolved["cpu"] = tuple(resolved["cpu"])
        if isinstance(resolved["cpu"], tuple) and len(set(resolved["cpu"])) == 1:
            resolved["cpu"] = resolved["cpu"][0]  # 0.4,0.4 is 0.4
        object.__setattr__(self, "values", resolved)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("a RunSpec does not change; make a new one")

    @property
    def cpus(self) -> list[float]:
        """Each source's CPU cap (``--cpu`` as one value, or a list cycled over the sources)."""
        cpu = self.values["cpu"]
        values = list(cpu) if isinstance(cpu, tuple) else [cpu]
        return [values[i % len(values)] for i in range(self.sources)]

    @property
    def memories(self) -> list[str | None]:
        """Each source's ``--memory`` limit as given (None: no limit), cycled over the sources."""
        values = per_source(self.values["memory"], lambda text, _: text, "--memory")
        return [values[i % len(values)] if values else None for i in range(self.sources)]

    @property
    def cpu_cap(self) -> float | list[float]:
        """The cap as the summary records it: one number, or one per source."""
        return self.cpus if isinstance(self.values["cpu"], tuple) else self.values["cpu"]

    @property
    def modules(self) -> tuple[str, ...]:
        return self.values["module"]

    def as_dict(self) -> dict:
        """Every setting of the run (the manifest's ``spec``)."""
        return {**self.values, "module": list(self.modules), "modules": list(self.modules)}

    def split_for(self, module: str) -> int:
        """Input-compression modules offload the input: their arm runs at split 0."""
        return get_module(module).split_for(self.split)

    def workload_options(self, module: str) -> dict:
        """The values of every option the programs read, by dest, for ``module``'s arm."""
        programs = {o.dest for o in settings.options() if set(o.roles) & set(settings.PROGRAMS)}
        values = {dest: v for dest, v in self.values.items() if dest in programs}
        if get_module(module).levels is None:  # an arm without a level runs at its fixed one
            values.update(adapt="", **{dest: settings.option(dest).default for dest in adapt.ADAPT_ONLY})
        return {**values, "module": module, "split": self.split_for(module), "classes": run_classes(self)}

    def compression_config(self) -> CompressionConfig:
        return CompressionConfig(model=self.model, **{k.dest: self.values[k.dest] for k in knobs()})


def validate(spec: RunSpec) -> None:
    """Every value against its declaration, then what only the whole run can check."""
    for option in run_options():
        try:
            option.check(spec.values[option.dest])
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    if len(set(spec.modules)) != len(spec.modules) or not spec.modules:
        raise SpecError(f"--module must name each arm once, got {','.join(spec.modules) or 'nothing'}")
    if spec.split > block_count(spec.model):
        raise SpecError(f"--split must be between 0 and {block_count(spec.model)}, got {spec.split}")
    config = spec.compression_config()
    for module in spec.modules:
        try:
            get_module(module).check_config(config)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    _validate_adapt(spec)
    beyond = sorted(s for s in settings.drops(spec.drop) if s >= spec.sources)
    if beyond:
        raise SpecError(f"--drop names source {beyond[0]}, but sources are 0..{spec.sources - 1} (--sources {spec.sources})")
    backend = backends.get(spec.backend)
    backend.refuse(spec)  # what it cannot take at all (a link in one process), before the links are planned
    if spec.sweep_bandwidth and (spec.bandwidth or spec.link_trace):
        raise SpecError("--sweep-bandwidth sets each run's --bandwidth: leave out --bandwidth and --link-trace")
    links = planned_links(spec)
    if spec.download and not spec.data_dir:
        raise SpecError("--download needs --data-dir: the folder to download CIFAR-10 into")
    _validate_dataset(spec)
    backend.check(spec, links)  # what only it, or its host, can say


def planned_links(spec: RunSpec):
    """The emulated links of the spec's (first) run, or None for loopback; bad link
    settings are a SpecError."""
    values = spec.values
    if spec.sweep_bandwidth:
        values = {**values, "bandwidth": spec.sweep_bandwidth.split(",")[0]}
    try:
        return plan_links(values, spec.sources)
    except ValueError as exc:  # LinkError, TraceFileError, a bad profile
        raise SpecError(str(exc)) from None


def refuse_given(spec: RunSpec, dests, why: str) -> None:
    """A SpecError naming every option of ``dests`` the spec gives (not at its empty value)."""
    given = [declaration(dest).flag for dest in dests if spec.values[dest]]
    if given:
        raise SpecError(f"{', '.join(given)} cannot be used with --backend {spec.backend}: {why}")


def _validate_adapt(spec: RunSpec) -> None:
    """``--adapt``: a target, and for every arm whose module has a level, levels it allows
    (at least one arm must have one)."""
    try:
        adapt.check_unused(spec.values)
        if not spec.adapt:
            return
        adapting = [m for m in spec.modules if get_module(m).levels is not None]
        if not adapting:
            adapt.check(spec.values, None, 0)
        kinds = sorted({get_module(m).levels.name for m in adapting})
        if spec.adapt_levels and len(kinds) > 1:
            raise SpecError(f"--adapt-levels gives one set of levels, but the arms adapt {' and '.join(kinds)}: "
                            "run them apart, or leave out --adapt-levels")
        for module in adapting:
            maps = build_split_model(spec.model, spec.split_for(module), 10).cut_shape[0]  # classes: not at the cut
            adapt.check(spec.values, get_module(module).levels, maps)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def _validate_dataset(spec: RunSpec) -> None:
    """What the dataset needs on every backend: a dataset without a synthetic stand-in
    must have its data given; --classes must agree with the dataset."""
    kind = dataset_kind(spec.dataset)
    if kind.classes is not None:  # a folder's number lies in its data (check_data_dir checks it)
        try:
            class_count(spec.dataset, spec.classes)
        except DataError as exc:
            raise SpecError(str(exc)) from None
    if spec.download and not kind.download:
        fetched = " and ".join(k.name for k in DATASETS.values() if k.download)
        raise SpecError(f"--download is for {fetched}, not --dataset {spec.dataset}")
    if backends.get(spec.backend).cluster_host and kind.required:
        if not spec.data_pvc:
            raise SpecError(f"--dataset {spec.dataset} on Kubernetes needs --data-pvc: a claim holding {kind.layout}")
        if kind.classes is None and not spec.classes:
            raise SpecError(f"--dataset {spec.dataset} on Kubernetes needs --classes: the number of class folders "
                            "under train/ on the claim (the testbed cannot count them there)")


def check_data_dir(spec: RunSpec) -> None:
    """``--data-dir`` on this host, for the dataset asked for (workloads.data.check_data_dir)."""
    try:
        data_dir_checked(spec.dataset, spec.data_dir, spec.classes, spec.download)
    except DataError as exc:
        raise SpecError(str(exc)) from None


def run_classes(spec: RunSpec) -> int:
    """The classes the run's model predicts, which every program gets as --classes:
    --classes, else the dataset's own number, else (an image folder on this host) its
    class folders under --data-dir."""
    kind = dataset_kind(spec.dataset)
    if kind.count is not None and not spec.classes and spec.data_dir:
        return kind.count(spec.data_dir)
    return class_count(spec.dataset, spec.classes)


def check_host(spec: RunSpec) -> None:
    """The cores, the data folder and the port, which only this host can check."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if max(spec.cpus) > cores:
        raise SpecError(f"--cpu {max(spec.cpus):g} is more than this host's {cores} cores")
    if spec.server_cpus >= cores:
        raise SpecError(f"--server-cpus {spec.server_cpus} leaves no core for the sources: this host has {cores}")
    check_data_dir(spec)
    check_port_free(spec.port)


def check_links_here(links) -> None:
    """What only this host's kernel and rights can say about emulated links."""
    if not sys.platform.startswith("linux"):
        raise SpecError("emulated links (--bandwidth, --link, --link-trace) need Linux network namespaces")
    kernel = probe_kernel()
    if kernel["rights"] is not True:
        raise SpecError(f"emulated links need network namespaces, and making one failed: {kernel['rights']}; "
                        "run as root, or leave out --bandwidth/--link/--link-trace to run on loopback")
    if links.needs_netem and not kernel["netem"]:
        raise SpecError("--delay and --loss need the netem qdisc, which this kernel does not have (it has "
                        f"{', '.join(kernel['qdiscs'])}); the testbed shapes rate only here: leave them out "
                        "(README: 'What this kernel cannot emulate')")


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like ZeroMQ's listener: connections in TIME_WAIT from a previous run don't count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            raise SpecError(f"port {port} is in use; pick another with --port") from None


def data_in_use(spec: RunSpec) -> str:
    """What data the sources will train on, for the terminal and the manifest (a
    validated spec: a dataset without a stand-in has its data)."""
    data = _data_source(spec)
    dataset = "synthetic" if data.startswith("synthetic") else spec.dataset
    if augmenting(spec.augment, dataset):
        data += "; training batches augmented (random crop with padding 4, horizontal flip)"
    return data


def _data_source(spec: RunSpec) -> str:
    kind = dataset_kind(spec.dataset)
    if kind.real and backends.get(spec.backend).cluster_host:
        if spec.data_pvc:
            classes = f", {spec.classes} classes" if kind.classes is None else ""
            return (f"{spec.dataset} from PersistentVolumeClaim {spec.data_pvc} (read-only at /data in the "
                    f"source pods{classes})")
        return f"synthetic (no {kind.title} on the cluster; give --data-pvc)"  # only a stand-in's dataset gets here
    return describe_data(spec.dataset, spec.data_dir, spec.download)
