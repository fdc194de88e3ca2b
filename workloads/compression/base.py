"""The two halves of a compression module and the arrays that cross the cut.

A module is a pair of ``nn.Module``s. The source part turns the head's output into
the tensor that is sent (still attached to the autograd graph, so the gradient that
comes back can finish the backward pass) plus any side information; ``encode`` gives
the exact arrays that go on the wire. The server part's ``decode`` rebuilds a leaf
tensor from those arrays (its ``.grad`` is what is returned) and the full activation
the server's layers expect.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

Arrays = dict[str, np.ndarray]


def to_wire(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous float32 CPU array that shares memory where it can."""
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


def require_input(cut_shape, name: str) -> None:
    """Modules that compress the input image itself need split 0."""
    if tuple(cut_shape)[0] != 3:
        raise ValueError(f"module {name} compresses the input image: it needs --split 0")


def index_dtype(count: int) -> np.dtype:
    """The smallest unsigned integer type that can index ``count`` items."""
    return np.dtype(np.uint8) if count <= 256 else np.dtype(np.uint16)


def at_least(passes, least: int):
    """The items of ``passes()``, a fresh pass each call, over as many whole passes as it
    takes to yield ``least`` items (at least one pass; a pass with none ends it)."""
    count = 0
    while True:
        before = count
        for item in passes():
            yield item
            count += 1
        if count >= least or count == before:
            return


class SourcePart(nn.Module):
    """Runs at the data source, after the head."""

    # The arrays of ``encode``'s output that are the method's own payload: what the method
    # itself codes (the entropy-coded latent, a codec's entropy-coded data with its tables
    # sent once, the filter's maps and indices). Their bytes are the rate in the unit its
    # paper counts (``coded_sent`` of every batch); everything else a request carries
    # (labels, shapes, lengths, a decoder shipped once, the header, framing, encryption) is
    # stream overhead, counted in the stream bytes only.
    coded_arrays: tuple[str, ...] = ("maps",)

    def coded_bytes(self, arrays: "Arrays") -> int:
        """Bytes of the method's payload in ``arrays`` (one request's), exactly."""
        return sum(int(arrays[name].nbytes) for name in self.coded_arrays if name in arrays)

    @staticmethod
    def training_step() -> bool:
        """Whether the request being computed is a training step's: the source computes those
        with autograd on and every evaluation without. (Not ``self.training``: the source puts
        a part whose parameters are all frozen in eval mode, in training steps too.)"""
        return torch.is_grad_enabled()

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, Arrays]:
        """Return (sent, side): ``sent`` is differentiable, ``side`` is plain arrays."""
        raise NotImplementedError

    def encode(self, sent: torch.Tensor, side: Arrays) -> Arrays:
        return {"maps": to_wire(sent), **side}

    def decode_grad(self, arrays: Arrays, like: torch.Tensor) -> torch.Tensor:
        grad = arrays.get("grad")
        if grad is None or tuple(grad.shape) != tuple(like.shape):
            got = None if grad is None else tuple(grad.shape)
            raise ValueError(f"gradient shape {got} does not match the sent tensor {tuple(like.shape)}")
        return torch.from_numpy(grad).to(like.device, like.dtype)

    def prepare(self, head, batches, trace) -> None:
        """Train what the module trains at the source on its own, before the network is
        used; ``batches()`` yields (images, labels) of the source's shard, anew per call."""

    def start_epoch(self, epoch: int) -> None:
        """Called as each epoch begins (after ``set_budget``)."""

    def extra_loss(self) -> torch.Tensor | None:
        """A loss term that trains parameters living at the source (e.g. a filter)."""
        return None

    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers for parameters that need their own (called once); the source
        trains every other parameter with its SGD."""
        return []

    def before_step(self) -> None:
        """Called between backward and the optimizer steps (e.g. to clip gradients)."""

    def after_step(self) -> None:
        """Called after the optimizer steps (e.g. to keep parameters in range)."""

    def set_budget(self, budget: int) -> None:
        """Change the communication budget (modules without one ignore it)."""

    def set_level(self, value: int) -> None:
        """Take the level ``--adapt`` chose (a module whose registry entry declares ``levels``)."""
        raise NotImplementedError(f"{type(self).__name__} has no level to change")

    def level_bytes(self, maps: torch.Tensor, values) -> list[float]:
        """Bytes per sample that cross the network, both ways, at each level of ``values``,
        for ``maps``: one batch of the head's output."""
        raise NotImplementedError(f"{type(self).__name__} has no level to change")

    def describe(self) -> dict:
        """Small, JSON-able state for every batch's trace event (e.g. the filter's sum)."""
        return {}

    def eval_state(self) -> dict:
        """JSON-able state for the end-of-epoch trace event (e.g. every filter value)."""
        return {}


def numel(shape) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


def state_bytes(module: nn.Module) -> int:
    """Bytes of a module's weights as ``shipping.state_arrays`` sends them (float32)."""
    return 4 * sum(value.numel() for value in module.state_dict().values())


class ServerPart(nn.Module):
    """Runs at the offload server, before the tail."""

    # the most samples one message may hold; the server sets it from --batch-size, and a
    # decode checks every count it reads against it (and against the bytes received)
    # before it allocates anything
    max_batch: int = 4096

    def largest_request(self, batch_size: int) -> int:
        """Bytes of the arrays (labels excluded) of the largest request a source of this
        module legitimately sends at ``batch_size``: one step's arrays plus anything sent
        once with them (a decoder's weights, an entropy model)."""
        raise NotImplementedError

    def check_batch(self, n: int, what: str) -> int:
        if not 0 <= n <= self.max_batch:
            raise ValueError(f"{what} of {n} samples: a message holds 0..{self.max_batch}")
        return n

    def decode(self, arrays: Arrays, device: torch.device, source: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (sent, restored): ``sent`` is a leaf whose grad goes back to the source.
        ``source`` names the sender, for modules that keep per-source state (a decoder
        or an entropy model each source sent once)."""
        raise NotImplementedError

    def encode_grad(self, sent: torch.Tensor) -> Arrays:
        return {"grad": to_wire(sent.grad)}

    # -- what a module may give the server's own layers (the tail) ------------------------
    ships_tail = False  # a source may send weights for the tail once (a teacher's): the server sizes requests by it

    def take_tail_state(self) -> np.ndarray | None:
        """Weights for the server's layers that a source sent (the last decode's), once:
        the tail's ``state_dict`` values flattened in order as float32; None when none came."""
        return None

    def distill_loss(self, logits: torch.Tensor) -> torch.Tensor | None:
        """A term the server adds to the cross-entropy of the last decoded request (a
        distillation term against a teacher's logits); None: none."""
        return None
