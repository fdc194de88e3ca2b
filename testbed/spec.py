"""A run spec: what ``testbed run`` was asked for, checked before anything starts."""
from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field

from workloads.compression import available as available_modules
from workloads.compression import get as get_module
from workloads.data import NUM_CLASSES, DataError, find_cifar10
from workloads.models import MODELS, block_count

from .cpucap import METHODS

DEFAULT_ARMS = ("none", "filter")
BACKENDS = ("local", "k8s")


class SpecError(ValueError):
    """A bad argument; the message names it."""


@dataclass
class RunSpec:
    sources: int = 8
    cpu: float = 0.4
    modules: tuple[str, ...] = DEFAULT_ARMS
    budget: int = 4
    schedule: str = ""
    batch_size: int = 16
    batches: int = 32
    epochs: int = 4
    split: int = 2
    model: str = "vgg11"
    dataset: str = "cifar10"
    data_dir: str = ""
    download: bool = False
    eval_samples: int = 256
    seed: int = 0
    lr: float = 0.01
    port: int = 5555
    cap_method: str = "auto"
    device: str = "auto"
    out: str = ""
    backend: str = "local"
    extra: dict = field(default_factory=dict)  # further workload options, by dest

    def as_dict(self) -> dict:
        return asdict(self)

    def split_for(self, module: str) -> int:
        """Input-compression modules offload the input: their arm runs at split 0."""
        return 0 if get_module(module).input_only else self.split

    def workload_options(self, module: str) -> dict:
        """The options both programs take, by dest (see workloads.settings)."""
        return {"model": self.model, "split": self.split_for(module), "module": module, "dataset": self.dataset,
                "budget": self.budget, "schedule": self.schedule, "batch_size": self.batch_size,
                "batches": self.batches, "epochs": self.epochs, "data_dir": self.data_dir,
                "download": self.download, "eval_samples": self.eval_samples, "seed": self.seed,
                "lr": self.lr, "sources": self.sources, **self.extra}


def validate(spec: RunSpec) -> None:
    if spec.sources < 1:
        raise SpecError(f"--sources must be at least 1, got {spec.sources}")
    if not spec.cpu > 0:
        raise SpecError(f"--cpu must be a positive number of cores, got {spec.cpu}")
    if spec.cpu > (os.cpu_count() or 1):
        raise SpecError(f"--cpu {spec.cpu} is more than this host's {os.cpu_count()} cores")
    known = available_modules()
    for module in spec.modules:
        if module not in known:
            raise SpecError(f"unknown module {module!r}; known modules: {', '.join(known)}")
    if len(set(spec.modules)) != len(spec.modules) or not spec.modules:
        raise SpecError(f"--module must name each arm once, got {','.join(spec.modules) or 'nothing'}")
    if spec.model not in MODELS:
        raise SpecError(f"unknown model {spec.model!r}; known models: {', '.join(sorted(MODELS))}")
    if spec.dataset not in NUM_CLASSES:
        raise SpecError(f"unknown dataset {spec.dataset!r}; known datasets: {', '.join(sorted(NUM_CLASSES))}")
    if not 0 <= spec.split <= block_count(spec.model):
        raise SpecError(f"--split must be between 0 and {block_count(spec.model)}, got {spec.split}")
    for name in ("budget", "batch_size", "batches", "epochs"):
        if getattr(spec, name) < 1:
            raise SpecError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(spec, name)}")
    if spec.eval_samples < 0:
        raise SpecError(f"--eval-samples must not be negative, got {spec.eval_samples}")
    if not spec.lr > 0:
        raise SpecError(f"--lr must be positive, got {spec.lr}")
    if spec.extra.get("lr_boost", 1.0) <= 0 or spec.extra.get("boost_epochs", 0) < 0:
        raise SpecError("--lr-boost must be positive and --boost-epochs not negative")
    if not 1 <= spec.extra.get("quality", 75) <= 100:
        raise SpecError(f"--quality must be between 1 and 100, got {spec.extra['quality']}")
    if not 0 <= spec.extra.get("mask_number", 2) <= 4:
        raise SpecError(f"--mask-number must be between 0 and 4, got {spec.extra['mask_number']}")
    if spec.extra.get("mask_schedule"):
        from workloads.compression.cdc import parse_mask_schedule
        try:
            parse_mask_schedule(spec.extra["mask_schedule"])
        except ValueError as exc:
            raise SpecError(f"--mask-schedule: {exc}") from None
    if spec.extra.get("alpha", 48.0) <= 0:
        raise SpecError(f"--alpha must be positive, got {spec.extra['alpha']}")
    if spec.extra.get("beta", 1.0) <= 0 or spec.extra.get("latent_channels", 16) < 1:
        raise SpecError("--beta must be positive and --latent-channels at least 1")
    if spec.extra.get("latent_dim", 64) < 1:
        raise SpecError(f"--latent-dim must be at least 1, got {spec.extra['latent_dim']}")
    if not 0 <= spec.extra.get("keep_neurons", 0) <= spec.extra.get("latent_dim", 64):
        raise SpecError(f"--keep-neurons must be between 0 (all) and --latent-dim, got {spec.extra['keep_neurons']}")
    if spec.extra.get("channels", 0) < 0:
        raise SpecError(f"--channels must not be negative, got {spec.extra['channels']}")
    if spec.extra.get("resolution", 1) < 1:
        raise SpecError(f"--resolution must be at least 1, got {spec.extra['resolution']}")
    if spec.download and not spec.data_dir:
        raise SpecError("--download needs --data-dir: the folder to download CIFAR-10 into")
    if spec.cap_method not in METHODS:
        raise SpecError(f"unknown cap method {spec.cap_method!r}; known: {', '.join(METHODS)}")
    if spec.schedule:
        from workloads.compression.schedules import parse_schedule
        try:
            parse_schedule(spec.schedule)
        except ValueError as exc:
            raise SpecError(f"--schedule: {exc}") from None
    if spec.data_dir and spec.backend == "local":
        if not os.path.exists(spec.data_dir) and not spec.download:
            raise SpecError(f"data folder {spec.data_dir} does not exist")
        try:
            find_cifar10(spec.data_dir)
        except DataError as exc:
            raise SpecError(str(exc)) from None
    if not 1 <= spec.port <= 65535:
        raise SpecError(f"--port must be in 1..65535, got {spec.port}")
    if spec.backend not in BACKENDS:
        raise SpecError(f"unknown backend {spec.backend!r}; known: {', '.join(BACKENDS)}")
    if spec.backend == "local":
        check_port_free(spec.port)
    elif spec.data_dir:
        raise SpecError("--data-dir is for the local backend; on Kubernetes give the chart a data.volume")


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like ZeroMQ's listener: connections in TIME_WAIT from a previous run don't count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            raise SpecError(f"port {port} is in use; pick another with --port") from None


def data_in_use(spec: RunSpec) -> str:
    """What data the sources will train on, for the terminal and the manifest."""
    if spec.dataset == "cifar10" and spec.data_dir:
        found = find_cifar10(spec.data_dir)
        if found is not None:
            return f"cifar10 from {found}"
    if spec.dataset == "cifar10" and not spec.download:
        return "synthetic (no CIFAR-10 found" + (f" under {spec.data_dir})" if spec.data_dir else "; give --data-dir)")
    if spec.dataset == "cifar10":
        return f"cifar10, downloaded into {spec.data_dir}"
    return "synthetic"
