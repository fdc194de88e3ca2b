"""Settings of the two programs: command-line options, each with an environment
variable of the same name (``--batch-size`` <-> ``SPLITTEST_BATCH_SIZE``).

The options are declared once here; the source and the server take the subset they
need, and the testbed turns a run spec into exactly these options.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable

ENV_PREFIX = "SPLITTEST_"


@dataclass(frozen=True)
class Option:
    name: str           # command-line name without dashes
    type: Callable[[str], Any]
    default: Any
    help: str
    roles: tuple[str, ...] = ("source", "server")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


SRC, SRV = ("source",), ("server",)
OPTIONS: tuple[Option, ...] = (
    Option("run-id", str, "local", "run identifier written into every trace event"),
    Option("trace", str, "", "trace file (JSON lines); empty: events go to stdout"),
    Option("model", str, "vgg11", "model to split"),
    Option("split", int, 2, "split after this conv block (0: offload the raw input)"),
    Option("module", str, "none", "compression module at the cut"),
    Option("dataset", str, "cifar10", "cifar10 (from --data-dir, else synthetic) or synthetic"),
    Option("resolution", int, 1, "resolution compression factor r of the filter modules (1: off)"),
    Option("prune-delta", float, 0.1, "delta of the prune loss"),
    Option("prune-weight", float, 1000.0, "epsilon: weight of the prune loss"),
    Option("prune-lambda", float, 1.0, "lambda: weight of the lower prune barrier"),
    Option("filter-init", float, 4.0, "filter logits start uniform in [0, this)"),
    Option("filter-lr", float, 1.0, "learning rate of the filter logits (SGD on a clipped gradient)"),
    Option("quality", int, 75, "jpeg / webp quality (1-100)"),
    Option("channels", int, 0, "crbq: maps after channel reduction (0: an eighth of the cut's)"),
    Option("mask-number", int, 2, "cdc: mask number m in 0..4 (2^(4-m) quantizer steps)"),
    Option("mask-schedule", str, "", "cdc: mask numbers over epochs, M:EPOCHS,... (a change fine-tunes)", SRC),
    Option("alpha", float, 48.0, "cdc: the elementary classifier's loss is attenuated by 1/alpha"),
    Option("latent-dim", int, 64, "mcr2: bottleneck neurons"),
    Option("beta", float, 1.0, "entropic: weight of the rate in the distillation loss"),
    Option("latent-channels", int, 16, "entropic: latent maps at half the cut's resolution"),
    Option("keep-neurons", int, 0, "mcr2: neurons sent, the best by Fisher's discriminative power (0: all)", SRC),
    Option("pretrain-epochs", int, 3, "cdc, mcr2, entropic: epochs the source trains on its own before streaming",
           SRC),
    Option("lr", float, 0.01, "learning rate (SGD)"),
    Option("momentum", float, 0.9, "SGD momentum"),
    Option("weight-decay", float, 5e-4, "SGD weight decay"),
    Option("seed", int, 0, "random seed (model initialisation, data order, synthetic data)"),
    Option("port", int, 5555, "server port", SRV),
    Option("device", str, "auto", "auto (CUDA when available), cpu or cuda", SRV),
    Option("threads", int, 0, "torch threads (0: torch's default)"),
    Option("expect-sources", int, 0, "exit after this many sources said bye (0: serve until stopped)", SRV),
    Option("server", str, "tcp://127.0.0.1:5555", "address of the offload server", SRC),
    Option("source-id", int, 0, "this data source's number, 0-based", SRC),
    Option("sources", int, 1, "number of data sources (each trains on its own shard)", SRC),
    Option("budget", int, 4, "feature maps allowed across the cut (filter modules)", SRC),
    Option("schedule", str, "", "budget schedule BUDGET:EPOCHS,... (default: the module's)", SRC),
    Option("lr-boost", float, 2.0, "gamma: learning-rate factor after a budget change", SRC),
    Option("boost-epochs", int, 1, "lk: epochs the boost lasts after a budget change", SRC),
    Option("batch-size", int, 16, "samples per batch", SRC),
    Option("batches", int, 32, "batches per epoch", SRC),
    Option("epochs", int, 4, "epochs", SRC),
    Option("data-dir", str, "", "folder holding CIFAR-10 in torchvision's layout", SRC),
    Option("download", _flag, False, "download CIFAR-10 into --data-dir if missing", SRC),
    Option("eval-samples", int, 256, "held-out samples evaluated at the end of each epoch", SRC),
    Option("timeout", float, 300.0, "seconds to wait for a server reply before giving up", SRC),
)


def parser_for(role: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m workloads.{role}", description=description)
    for option in OPTIONS:
        if role not in option.roles:
            continue
        default = option.default
        if option.env in os.environ:
            try:
                default = option.type(os.environ[option.env])
            except (ValueError, argparse.ArgumentTypeError):
                parser.error(f"environment variable {option.env}={os.environ[option.env]!r} is not a valid {option.name}")
        kwargs = {"type": option.type, "default": default,
                  "help": f"{option.help} (env {option.env}, default {option.default!r})"}
        if option.type is _flag:
            kwargs["nargs"] = "?"
            kwargs["const"] = True
        parser.add_argument(f"--{option.name}", **kwargs)
    return parser


def parse(role: str, description: str, argv=None) -> argparse.Namespace:
    return parser_for(role, description).parse_args(argv)


def to_argv(values: dict[str, Any], role: str) -> list[str]:
    """Command-line arguments for ``role`` from a dict keyed by option dest."""
    argv = []
    for option in OPTIONS:
        if role in option.roles and option.dest in values and values[option.dest] is not None:
            value = values[option.dest]
            argv += [f"--{option.name}", ("true" if value else "false") if isinstance(value, bool) else str(value)]
    return argv


def compression_config(args: argparse.Namespace):
    from .compression import CompressionConfig
    from .data import NUM_CLASSES

    return CompressionConfig(budget=getattr(args, "budget", 4), resolution=args.resolution,
                             prune_delta=args.prune_delta, prune_weight=args.prune_weight,
                             prune_lambda=args.prune_lambda, filter_init=args.filter_init,
                             filter_lr=args.filter_lr, quality=args.quality, channels=args.channels,
                             mask_number=args.mask_number, mask_schedule=getattr(args, "mask_schedule", ""),
                             alpha=args.alpha, latent_dim=args.latent_dim,
                             keep_neurons=getattr(args, "keep_neurons", 0), beta=args.beta,
                             latent_channels=args.latent_channels, classes=NUM_CLASSES[args.dataset], model=args.model)
