"""BatchNorm and frozen parts: training mode for what trains, and precise statistics for
evaluation (``--bn-batches``).

A part whose parameters are all frozen (a module may freeze the head or its encoder after
pre-training) stays in eval mode while the rest trains (:func:`train_mode`): its BatchNorm
statistics stay those its weights were fitted with, and what it feeds the next part is
what that part trained on.

A BatchNorm layer evaluates with running statistics: an exponential average (momentum
0.1) of the last few training batches' means and variances, taken while the weights
moved. After a short run at a constant learning rate they lag the weights, and the
evaluated accuracy jumps between epochs and seeds by more than the methods differ
(``experiments/every-module.toml``, seeds 0 and 1: ``none`` ends at 0.887 / 0.754 with the
running statistics, 0.957 / 0.930 with 16 batches of these).

"Precise BN" (Wu and Johnson, "Rethinking 'Batch' in BatchNorm", 2021) recomputes them
before evaluating: the current weights, unchanged, see N training batches, and each
layer's statistics are the plain average over them. Here they are kept apart from
training's own: :func:`fresh` makes a set, :func:`using` runs a model with a set
(accumulating into it, or evaluating with it) and puts the layers' own statistics back,
so training goes on as if nothing had been computed. Frozen parts keep theirs. The source
does it for its head and module, the server for its module part and layers, from the
same batches (``calibrate`` requests).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

Statistics = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def frozen_parts(model: nn.Module) -> list[nn.Module]:
    """The submodules whose parameters are all frozen (and which have some)."""
    parts = []
    for child in model.modules():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            parts.append(child)
    return parts


def train_mode(model: nn.Module) -> None:
    """Training mode, except for the frozen parts (eval mode: their statistics stay)."""
    model.train()
    for part in frozen_parts(model):
        part.eval()


def _layers(models):
    """(name, layer) of every BatchNorm layer with running statistics outside frozen parts."""
    for prefix, model in enumerate(models):
        frozen = {id(m) for part in frozen_parts(model) for m in part.modules()}
        for name, layer in model.named_modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats \
                    and id(layer) not in frozen:
                yield f"{prefix}.{name}", layer


def fresh(*models: nn.Module) -> Statistics:
    """Empty statistics (mean 0, variance 1, no batch seen) for every BatchNorm layer of
    ``models`` that trains."""
    return {name: (torch.zeros_like(layer.running_mean), torch.ones_like(layer.running_var),
                   torch.zeros_like(layer.num_batches_tracked)) for name, layer in _layers(models)}


@contextmanager
def using(stats: Statistics, *models: nn.Module, accumulate: bool = False):
    """Run ``models`` (the ones ``stats`` was made for, in the same order) with ``stats`` in
    place of their layers' running statistics. With ``accumulate`` the layers use each
    batch's statistics and add them to ``stats`` as a plain average (the rest of the model
    stays as the caller set it: eval mode for the inference path); without, they evaluate
    with ``stats``. Layers ``stats`` does not name (frozen, or added since) keep their own."""
    saved = []
    try:
        for name, layer in _layers(models):
            if name not in stats:
                continue
            saved.append((layer, layer.running_mean, layer.running_var, layer.num_batches_tracked, layer.momentum,
                          layer.training))
            layer.running_mean, layer.running_var, layer.num_batches_tracked = stats[name]
            if accumulate:
                layer.momentum, layer.training = None, True
            else:
                layer.training = False
        yield
    finally:
        for layer, mean, var, count, momentum, training in saved:
            layer.running_mean, layer.running_var, layer.num_batches_tracked = mean, var, count
            layer.momentum, layer.training = momentum, training
