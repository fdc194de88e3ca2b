"""Paper 002's compression-decompression module: a learnable per-map filter.

Source: optional resolution compression (conv, kernel 2+r, stride r, padding r,
BatchNorm), then ``f = sigmoid(f_hat)`` multiplied into the maps; only the top-B
maps by filter value are sent, with their indices. The prune loss
``eps * (exp(delta*(sum f - B)) + lambda*exp(-delta*(sum f - B)))`` is computed
here, at the source, where ``f_hat`` lives, so the filter is actually learned.
Server: the sent maps are placed back at their indices (zeros elsewhere) and, with
resolution compression, a transposed convolution restores the full resolution.

``filter``, ``deprune`` and ``prune`` are the same module; they differ only in the
budget schedule (see ``schedules.py``), which their registry entries name.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .base import Arrays, ServerPart, SourcePart, index_dtype, numel
from ..option import knob
from .registry import CompressionConfig, Deviation, Levels, ModuleSpec, register
from .schedules import BUDGET_KNOBS, all_maps_first, budget_first, fixed

FILTER_GRAD_CLIP = 1.0  # max norm of the logits' gradient per step
FILTER_MOMENTUM = 0.9
LOGIT_BOUND = 15.0      # sigmoid(15) = 1 - 3e-7: fully on or off, still movable
ADMIT_LOGIT = -4.0      # a raised budget's new maps: sigmoid(-4) = 0.018, slope 0.018 (low, still movable)


def _compressed_shape(cut_shape, r: int) -> tuple[int, int, int]:
    channels, height, width = cut_shape
    if r == 1:
        return channels, height, width
    return channels, (height + 2 * r - (2 + r)) // r + 1, (width + 2 * r - (2 + r)) // r + 1


class FeatureFilterSource(SourcePart):
    coded_arrays = ("maps", "index")

    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        self.config = config
        channels = cut_shape[0]
        r = config.resolution
        self.compress = nn.Identity() if r == 1 else nn.Sequential(
            nn.Conv2d(channels, channels, 2 + r, stride=r, padding=r), nn.BatchNorm2d(channels))
        self.channels = channels
        self.logits = nn.Parameter(torch.empty(channels))
        self.budget = channels
        self.reset_filter()
        self.set_budget(config.budget)

    # -- the filter ------------------------------------------------------------
    def filter(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def reset_filter(self, which: torch.Tensor | None = None) -> None:
        """Draw fresh logits, for all maps or only where ``which`` is true."""
        fresh = torch.rand(self.channels) * self.config.filter_init
        with torch.no_grad():
            if which is None:
                self.logits.copy_(fresh)
            else:
                self.logits[which] = fresh[which]

    def set_budget(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"budget must be at least 1 feature map, got {budget}")
        budget = min(int(budget), self.channels)
        if budget == self.budget:
            return
        # A raised budget changes the budget "without resetting other parameters" (paper 002,
        # section 3.1): the B maps that were sent keep their logits, and what both sides learnt
        # on them stays valid. The maps pruned to zero sit at the logit floor, where the sigmoid
        # has no slope and no loss could move them: as many of them as the budget adds are
        # admitted at a low filter value (ADMIT_LOGIT), where it has one, and the others stay
        # as they were learnt. The prune loss's lower barrier (sum f is now below B by about
        # the maps added) and the task loss raise the admitted maps, so they fade in over some
        # steps of the filter's optimiser instead of reaching the server at full strength at
        # once, while the lr boost is on. A lowered budget re-draws the maps that were on
        # (paper 002's resetprune: the entries already on "are randomized" so that they "can
        # potentially be trained to approach 0"), so the filter chooses among them again.
        if budget > self.budget:
            self.admit(budget - self.budget)
        else:
            self.reset_filter(self.filter().detach() > 0.5)
        self.budget = budget

    def admit(self, count: int) -> None:
        """Raise ``count`` of the maps outside the current top-B to at least ADMIT_LOGIT:
        those with the highest logits, ties (the maps at the floor) broken by a draw."""
        logits = self.logits.detach()
        sent = torch.topk(self.filter().detach(), self.budget).indices
        shuffled = torch.randperm(self.channels)
        order = shuffled[torch.argsort(logits[shuffled], descending=True, stable=True)]
        rest = order[~torch.isin(order, sent)]
        admitted = rest[:count]
        with torch.no_grad():
            self.logits[admitted] = logits[admitted].clamp_min(ADMIT_LOGIT)

    # -- under --adapt: the budget is the level ----------------------------------
    def set_level(self, value: int) -> None:
        self.set_budget(value)

    def level_bytes(self, maps, values):
        with torch.no_grad():
            channels, height, width = self.compress(maps[:1]).shape[1:]
        return [2 * 4 * min(b, channels) * height * width for b in values]  # float32 maps out, their gradient back

    # -- how the filter learns -------------------------------------------------
    # The barrier's gradient spans many orders of magnitude (exp of the excess), so the
    # logits take SGD steps on a norm-clipped gradient: the direction keeps the sigmoid's
    # slope, which moves undecided maps faster than saturated ones, so the mass ends on
    # about B maps; the clip keeps a step from flinging every logit to the floor.
    def make_optimizers(self):
        return [torch.optim.SGD([self.logits], lr=self.config.filter_lr, momentum=FILTER_MOMENTUM)]

    def before_step(self) -> None:
        if self.logits.grad is not None:
            torch.nn.utils.clip_grad_norm_([self.logits], FILTER_GRAD_CLIP)

    def after_step(self) -> None:
        with torch.no_grad():  # keep logits where a later budget change can still move them
            self.logits.clamp_(-LOGIT_BOUND, LOGIT_BOUND)

    # -- forward and the prune loss --------------------------------------------
    def forward(self, maps):
        x = self.compress(maps)
        f = self.filter()
        index = torch.topk(f.detach(), self.budget).indices.sort().values
        sent = x[:, index] * f[index].view(1, -1, 1, 1)
        return sent, {"index": index.numpy().astype(index_dtype(self.channels))}

    def extra_loss(self):
        c = self.config
        excess = self.filter().sum() - self.budget
        barrier = torch.exp(c.prune_delta * excess) + c.prune_lambda * torch.exp(-c.prune_delta * excess)
        return c.prune_weight * barrier

    def describe(self):
        f = self.filter().detach()
        top = torch.topk(f, self.budget).values.sum()
        return {"filter_sum": round(float(f.sum()), 4),
                "filter_topb_share": round(float(top / f.sum().clamp_min(1e-12)), 4)}

    def eval_state(self):
        return {"filter": [round(v, 5) for v in self.filter().tolist()]}


class FeatureFilterServer(ServerPart):
    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        self.cut_shape = tuple(cut_shape)
        self.sent_shape = _compressed_shape(cut_shape, config.resolution)
        channels, height, _ = cut_shape
        r = config.resolution
        if r == 1:
            self.decompress = nn.Identity()
        else:
            small = self.sent_shape[1]
            output_padding = height - ((small - 1) * r - 2 * r + (2 + r))
            if not 0 <= output_padding < r:
                raise ValueError(f"resolution factor {r} cannot restore maps of size {height}")
            self.decompress = nn.ConvTranspose2d(channels, channels, 2 + r, stride=r, padding=r,
                                                 output_padding=output_padding)

    def largest_request(self, batch_size: int) -> int:
        return 4 * batch_size * numel(self.sent_shape) + 2 * self.sent_shape[0]  # maps, index (uint16 at most)

    def decode(self, arrays: Arrays, device, source: int = 0):
        maps, index = arrays.get("maps"), arrays.get("index")
        channels, height, width = self.sent_shape
        if maps is None or index is None:
            raise ValueError("a filtered message needs the arrays 'maps' and 'index'")
        if maps.dtype != np.float32 or maps.ndim != 4 or tuple(maps.shape[2:]) != (height, width):
            raise ValueError(f"expected float32 maps of shape (N, B, {height}, {width}), got {maps.dtype} {maps.shape}")
        if index.ndim != 1 or index.shape[0] != maps.shape[1] or index.dtype.kind != "u":
            raise ValueError(f"index must list one unsigned map number per sent map, got {index.dtype} {index.shape}")
        if index.size and (int(index.max()) >= channels or len(np.unique(index)) != index.size):
            raise ValueError(f"index must hold distinct map numbers below {channels}")
        sent = torch.from_numpy(maps).to(device).requires_grad_()
        where = torch.from_numpy(index.astype(np.int64)).to(device)
        full = torch.zeros((maps.shape[0], channels, height, width), device=device, dtype=sent.dtype)
        full = full.index_copy(1, where, sent)
        return sent, self.decompress(full)


KNOBS = BUDGET_KNOBS + (
    knob("resolution", int, 1, "resolution compression factor r (1: off)", min=1),
    knob("prune-delta", float, 0.1, "delta of the prune loss", positive=True),
    knob("prune-weight", float, 1000.0, "epsilon: weight of the prune loss", min=0),
    knob("prune-lambda", float, 1.0, "lambda: weight of the lower prune barrier", min=0),
    knob("filter-init", float, 4.0, "filter logits start uniform in [0, this)", positive=True),
    knob("filter-lr", float, 1.0, "learning rate of the filter logits (SGD on a clipped gradient)", positive=True),
)


def _budgets(values: dict, maps: int) -> tuple[int, ...]:
    """--budget, doubling, up to all maps."""
    budgets, budget = [], min(values["budget"], maps)
    while budget < maps:
        budgets.append(budget)
        budget *= 2
    return (*budgets, maps)


LEVELS = Levels("budget", _budgets, low=1)
AT_SOURCE = "filter f = sigmoid(f_hat), top-B maps and their indices; prune loss"
AT_SERVER = "maps placed back at their indices (transposed conv with --resolution)"

DEVIATIONS = (
    Deviation("f = sigmoid(f_hat) trained with the model (the public code: mask sigmoid(f_hat)^2, f_hat from 15 x "
              "rand)",
              "f = sigmoid(f_hat), the logits drawn in [0, --filter-init) and trained by their own SGD (--filter-lr, "
              f"momentum {FILTER_MOMENTUM:g}) on a gradient clipped to norm {FILTER_GRAD_CLIP:g}, kept within "
              f"+-{LOGIT_BOUND:g}",
              "the prune loss's gradient spans orders of magnitude (exp of the excess): unclipped steps flung every "
              "logit to the floor"),
    Deviation("a raised budget changes B 'without resetting other parameters'",
              "every learnt parameter kept; as many pruned maps as the budget adds are lifted from the logit floor "
              f"(where the sigmoid has no slope and nothing could raise them) to {ADMIT_LOGIT:g} "
              f"(f = {1 / (1 + math.exp(-ADMIT_LOGIT)):.3f}), from where the prune loss raises them",
              "the paper does not say how maps pruned to zero come back; this brings them in low"),
    Deviation("the budget changes between training phases (deprune, prune)",
              "under --adapt the budget also changes within epochs; a lowered one re-draws the maps that were on "
              "(the paper's resetprune) each time",
              "adaptation to the link is the testbed's, not the paper's; it uses the paper's two budget changes"),
)

for _name, _paper, _what, _schedule in (
    ("filter", "002 (with module)", "learnable per-map filter; only the top-B maps (and their indices) cross", fixed),
    ("deprune", "002 §3.2", "the filter at budget B for most epochs, then all maps; lr boost after the change",
     budget_first),
    ("prune", "002 §3.3", "the filter on all maps first, then smaller budgets with the filter reset",
     all_maps_first),
):
    register(ModuleSpec(_name, _paper, _what, FeatureFilterSource, FeatureFilterServer, KNOBS, AT_SOURCE, AT_SERVER,
                        schedule=_schedule, levels=LEVELS, deviations=DEVIATIONS))
