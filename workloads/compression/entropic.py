"""``entropic``: the Entropic Student (paper 004), at the cut.

Source: after the head, an encoder (convolutions with GDN) to a latent of
``latent_channels`` maps at half the cut's resolution, rounded for transmission
(uniform noise in (-0.5, 0.5) while training). A learnable factorized prior, one
Laplace per latent channel, gives each rounded value its probability; the bytes on the
wire are the real range-coded bitstream under that prior (constriction).
Server: a decoder (transposed convolution with inverse GDN) back to the cut's shape,
then the server's layers.

Training, as the paper does it, in two stages:
1. ``prepare``, at the source without the network: the teacher, the unsplit model, is
   trained first on the source's shard (``--pretrain-epochs``); then, for at least
   ``--distill-steps`` batches, the encoder, the prior and a decoder learn
   to reproduce the teacher's features at the cut under the rate-distortion loss
   ``MSE(decoder(y~), teacher features) + beta * bits per sample / cut size``.
   (The student keeps the teacher's first layers, the head, and adds the bottleneck.)
2. The epochs: the encoder and the prior are frozen; the decoder, the prior's parameters
   and the teacher's layers after the cut cross the network once. The server's layers
   start from the teacher's (the first source's: one server model serves every source),
   and the server fine-tunes the decoder and its layers with cross-entropy plus the KL
   divergence to the teacher's class distribution, whose logits the source computes with
   its teacher and sends with every training request (paper 004, section 3.3).
"""
from __future__ import annotations

import copy

import constriction
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import Arrays, ServerPart, SourcePart, at_least, state_bytes, to_wire
from .shipping import flat_state, has_state, load_state_arrays, range_encode, state_arrays
from .shipping import range_decode as decode_symbols
from .. import events
from ..option import knob
from .registry import CompressionConfig, Deviation, ModuleSpec, register

HIDDEN = 64
SUPPORT = 31            # symbols are coded in [-SUPPORT, SUPPORT]; larger values are clipped
STAGE_LR = 1e-3
SHIPPED = "decoder."    # arrays that cross once: the decoder's weights
PRIOR = "prior."        # ... and the prior's parameters
TAIL = "teacher_tail"   # ... and the teacher's layers after the cut, flattened: the server's layers start from them
TEACHER = "teacher"     # every training request: the teacher's logits for its samples (the distillation target)
# Fine-tuning (paper 004, section 3.3): cross-entropy plus the KL divergence between the
# softened class distributions of student and teacher. The paper's weights and temperature
# are in its supplement, which we do not have: an equal weight at temperature 1.
KD_WEIGHT = 1.0
KD_TEMPERATURE = 1.0
_FAMILY = constriction.stream.model.QuantizedLaplace(-SUPPORT, SUPPORT)


class GDN(nn.Module):
    """Generalized divisive normalization, y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)
    (or its inverse), with beta and gamma kept positive by squaring."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels))

    def forward(self, x):
        gamma = (self.gamma ** 2).view(*self.gamma.shape, 1, 1)
        norm = torch.sqrt(F.conv2d(x ** 2, gamma, self.beta ** 2 + 1e-6))
        return x * norm if self.inverse else x / norm


class LaplacePrior(nn.Module):
    """One Laplace per channel: the probability of a rounded value is the mass of the
    Laplace on [v - 0.5, v + 0.5], as the range coder computes it."""

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def params(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (like.dim() - 2)
        return self.loc.view(shape).expand_as(like), self.log_scale.exp().clamp_min(0.05).view(shape).expand_as(like)

    def bits(self, y: torch.Tensor) -> torch.Tensor:
        loc, scale = self.params(y)
        laplace = torch.distributions.Laplace(loc, scale)
        mass = laplace.cdf(y + 0.5) - laplace.cdf(y - 0.5)
        return -torch.log2(mass.clamp_min(1e-9)).sum()


def _encoder(channels: int, latent: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, HIDDEN, 3, padding=1), GDN(HIDDEN),
                         nn.Conv2d(HIDDEN, latent, 3, stride=2, padding=1))


def _decoder(channels: int, latent: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(latent, HIDDEN, 4, stride=2, padding=1), GDN(HIDDEN, inverse=True),
                         nn.Conv2d(HIDDEN, channels, 3, padding=1), nn.ReLU(inplace=True))


def range_code(values: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rounded values (clipped to the coder's support) -> bytes under the Laplace prior."""
    return range_encode(np.clip(values, -SUPPORT, SUPPORT), _FAMILY, loc.reshape(-1), scale.reshape(-1))


def range_decode(data: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return decode_symbols(data, _FAMILY, loc.reshape(-1), scale.reshape(-1))


def _check_cut(cut_shape) -> None:
    if cut_shape[1] % 2 or cut_shape[2] % 2:
        raise ValueError(f"entropic halves the cut's resolution: it needs even sizes, got {tuple(cut_shape[1:])}")


class EntropicSource(SourcePart):
    coded_arrays = ("bits",)  # the range-coded latent, the rate paper 004 plots; the decoder and prior cross once, apart

    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        _check_cut(cut_shape)
        self.cut_shape, self.beta, self.classes, self.model = tuple(cut_shape), config.beta, config.classes, config.model
        self.latent_channels, self.distill_steps = config.latent_channels, config.distill_steps
        self.encoder = _encoder(cut_shape[0], config.latent_channels)
        self.prior = LaplacePrior(config.latent_channels)
        self.decoder = _decoder(cut_shape[0], config.latent_channels)  # trained here, then shipped once
        self.shipped = False
        self._teacher: list[nn.Module] = []  # the teacher's layers after the cut (a list: not this module's own)

    def prepare(self, head, batches, trace) -> None:
        teacher_tail = self._train_teacher(head, batches, trace)
        for p in teacher_tail.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher_tail.eval()]  # its logits teach the student; its weights start the server's layers
        for p in head.parameters():
            p.requires_grad_(False)
        head.eval()
        params = list(self.encoder.parameters()) + list(self.prior.parameters()) + list(self.decoder.parameters())
        optimizer = torch.optim.Adam(params, lr=STAGE_LR)
        size = float(np.prod(self.cut_shape))
        self.train()
        for step, (x, _) in enumerate(at_least(batches, self.distill_steps)):
            with torch.no_grad():
                target = head(x)
            y = self.encoder(target)
            noisy = y + torch.rand_like(y) - 0.5
            distortion = F.mse_loss(self.decoder(noisy), target)
            rate = self.prior.bits(noisy) / len(x)
            loss = distortion + self.beta * rate / size
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            trace.event(events.PRETRAIN, stage="distill", step=step, samples=len(x), loss=round(loss.item(), 6),
                        distortion=round(distortion.item(), 6), bits_per_sample=round(rate.item(), 2))
        for p in params:
            p.requires_grad_(False)
        self.eval()

    def _train_teacher(self, head, batches, trace) -> nn.Module:
        """The unsplit model, trained first (head + a local copy of the server's layers)."""
        from ..models import build_split_model

        tail = build_split_model(self.model, len(head), self.classes).tail  # len(head): its blocks
        params = list(head.parameters()) + list(tail.parameters())
        optimizer = torch.optim.Adam(params, lr=STAGE_LR)
        head.train()
        tail.train()
        for step, (x, labels) in enumerate(batches()):
            loss = F.cross_entropy(tail(head(x)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            trace.event(events.PRETRAIN, stage="teacher", step=step, samples=len(x), loss=round(loss.item(), 6))
        return tail

    def forward(self, maps):
        # a training step carries the teacher's logits; the head is the teacher's, so its
        # features are ``maps``
        training_step = self.training_step()
        with torch.no_grad():
            side = {TEACHER: to_wire(self._teacher[0](maps))} if training_step and self._teacher else {}
            return torch.round(self.encoder(maps)), side

    def encode(self, sent, side) -> Arrays:
        values = sent.cpu().numpy()
        loc, scale = (t.detach().cpu().numpy() for t in self.prior.params(sent))
        arrays = {"bits": range_code(values, loc, scale), "latent_shape": np.array(values.shape, dtype="<i4"), **side}
        if not self.shipped:  # the decoder, the prior and the teacher's layers cross once
            arrays.update(state_arrays(self.decoder, SHIPPED))
            arrays.update(state_arrays(self.prior, PRIOR))
            if self._teacher:
                arrays[TAIL] = flat_state(self._teacher[0])
            self.shipped = True
        return arrays


class EntropicServer(ServerPart):
    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        _check_cut(cut_shape)
        self.cut_shape, self.latent_channels = tuple(cut_shape), config.latent_channels
        self.template = _decoder(cut_shape[0], config.latent_channels)
        self.decoders = nn.ModuleDict()     # each source distilled its own; fine-tuned here
        self.priors = nn.ModuleDict()
        self.classes = config.classes
        self._tail_state: np.ndarray | None = None   # the last decode's teacher layers, until taken
        self._teacher_logits: torch.Tensor | None = None  # the last decode's distillation target

    ships_tail = True

    def take_tail_state(self):
        state, self._tail_state = self._tail_state, None
        return state

    def distill_loss(self, logits):
        """KL(teacher || student) of the class distributions softened by KD_TEMPERATURE,
        times T^2 (Hinton et al.'s scaling), weighted by KD_WEIGHT."""
        teacher, self._teacher_logits = self._teacher_logits, None
        if teacher is None:
            return None
        t = KD_TEMPERATURE
        return KD_WEIGHT * t * t * F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher / t, dim=1),
                                            reduction="batchmean", log_target=True)

    def largest_request(self, batch_size: int) -> int:
        symbols = batch_size * self.latent_channels * (self.cut_shape[1] // 2) * (self.cut_shape[2] // 2)
        shipped = state_bytes(self.template) + state_bytes(LaplacePrior(self.latent_channels))
        teacher = 4 * batch_size * self.classes  # the teacher's logits (its layers once: the server adds them)
        return 4 * symbols + 16 + 16 + teacher + shipped  # bits (under 32 per symbol), latent_shape, sent once: the rest

    def decode(self, arrays: Arrays, device, source: int = 0):
        key = str(source)
        if has_state(arrays, SHIPPED):
            self._load(key, arrays, device)
        if key not in self.decoders:
            raise ValueError(f"entropic: no decoder received from source {source} yet (it comes with its first message)")
        bits, shape = arrays.get("bits"), arrays.get("latent_shape")
        if bits is None or shape is None or shape.shape != (4,) or bits.dtype != np.uint8 or bits.ndim != 1 \
                or shape.dtype.kind not in "ui":
            raise ValueError("an entropic message needs uint8 'bits' and 'latent_shape'")
        n, c, h, w = (int(v) for v in shape)
        if c != self.latent_channels or (h, w) != (self.cut_shape[1] // 2, self.cut_shape[2] // 2):
            raise ValueError(f"latent shape {tuple(shape)} does not fit this cut")
        self.check_batch(n, "an entropic message")
        teacher, tail = arrays.get(TEACHER), arrays.get(TAIL)
        if teacher is not None and (teacher.dtype != np.float32 or teacher.shape != (n, self.classes)
                                    or not np.isfinite(teacher).all()):
            raise ValueError(f"the teacher's logits must be {n} x {self.classes} finite float32 values, got "
                             f"{teacher.dtype} {teacher.shape}")
        if tail is not None and (tail.dtype != np.float32 or tail.ndim != 1):  # its size and values: the server's
            raise ValueError("the teacher's layers must come as one array of float32 values")
        if bits.size > 4 * n * c * h * w + 16:  # what no latent of that shape could need
            raise ValueError(f"{bits.size} bytes of bitstream for a latent of {n * c * h * w} values")
        latent = torch.zeros(n, c, h, w)
        loc, scale = (t.detach().cpu().numpy() for t in self.priors[key].params(latent))
        values = range_decode(bits, loc, scale)
        latent = torch.from_numpy(values.astype(np.float32)).view(n, c, h, w).to(device)
        restored = self.decoders[key](latent)
        self._teacher_logits = None if teacher is None else torch.from_numpy(teacher).to(device)
        self._tail_state = tail  # taken (or not) by the server once the request is accepted
        return restored, restored

    def _load(self, key: str, arrays: Arrays, device) -> None:
        decoder = load_state_arrays(copy.deepcopy(self.template), arrays, SHIPPED, "entropic decoder")
        prior = load_state_arrays(LaplacePrior(self.latent_channels), arrays, PRIOR, "entropic prior")
        for p in prior.parameters():
            p.requires_grad_(False)  # the coder's model must stay the source's
        self.decoders[key] = decoder.to(device)
        self.priors[key] = prior


register(ModuleSpec(
    "entropic", "004 (Entropic Student)", "GDN encoder to a latent at half the cut's resolution, learned factorized "
    "Laplace prior, the real range-coded bitstream; teacher then distillation at the source; the decoder and the "
    "teacher's layers cross once, the server fine-tunes from them with cross-entropy and KL to the teacher's logits", EntropicSource, EntropicServer,
    (knob("beta", float, 1.0, "weight of the rate in the distillation loss (higher: fewer bytes)", positive=True),
     knob("latent-channels", int, 16, "latent maps at half the cut's resolution", min=1),
     knob("distill-steps", int, 500, "the distillation at the source takes at least this many batches, in whole "
          "passes of the pre-training batches (--pretrain-epochs x --batches), as many as that needs; the teacher "
          "trains one such pass", ("source",), min=1)),
    at_source="encoder, prior, range coder", at_server="decoder + the rest",
    # Fine-tuning a distilled decoder (the paper's second stage) at a tenth of the
    # testbed's lr: at 0.01 with momentum the loss rose in our runs. The tail is not scaled.
    server_lr_scale=0.1,
    deviations=(
        Deviation("one teacher pretrained offline on the whole training set; the student's layers after the "
                  "bottleneck start from the teacher's",
                  "each source trains its own teacher on its shard for --pretrain-epochs; the server's layers start "
                  "from the teacher of the first source whose first request reaches the server (source 0 "
                  "in-process; the server traces which: its tail_from event); its weights cross once, counted in "
                  "the stream bytes, and the other sources' teachers are not used there",
                  "the data lives at the sources and one server model serves every source; the reproductions "
                  "(004-rate-accuracy) run one source, as the paper"),
        Deviation("fine-tuning with cross-entropy and the KL divergence to the teacher's softened outputs, weights "
                  "and temperature in the paper's supplement",
                  f"cross-entropy plus {KD_WEIGHT:g} x KL at temperature {KD_TEMPERATURE:g}; each source runs its "
                  "teacher's layers after the cut on every training batch (compute at the capped source: it shows "
                  "in samples/s and latency) and sends the logits with the request (stream bytes, not payload)",
                  "the supplement is not available here; the teacher lives at the source"),
        Deviation("the teacher's first layers replaced by a light encoder (the student's head is new)",
                  "the teacher's head kept (frozen) before the encoder, and the decoder restores the cut's features",
                  "the testbed's split points: the head is the split model's, the bottleneck sits at the cut"),
        Deviation("the bottleneck in the first layers of ResNet-50 on 224x224 ImageNet images, its latent a small "
                  "fraction of the input",
                  "the bottleneck at --split: --latent-channels maps at half the cut's resolution (16 x 16 x 16 = "
                  "4,096 values at resnet18 split 2, more than the 3,072 of a 32x32 image; 256 at vgg11-slim split 2)",
                  "CIFAR-size images and the testbed's split points; choose --latent-channels for the cut"),
        Deviation("a factorized (non-parametric) prior per channel, as in Balle et al.",
                  "one Laplace per latent channel (location and scale learnt)",
                  "the range coder (constriction) codes a quantized Laplace exactly; the rate is the real bitstream "
                  "either way"),
        Deviation("the student distilled for as long as the paper's training on ImageNet",
                  "the distillation at the source at least --distill-steps batches (default 500), in whole passes of "
                  "--pretrain-epochs x --batches batches; the teacher one such pass",
                  "an autoencoder does not learn in a smoke run's few passes (vgg11-slim, 96 steps: 0.38 accuracy "
                  "against none's 0.82); a spec sets the length its scale can afford"),
        Deviation("beta chosen per experiment on ImageNet",
                  "--beta weights bits per sample divided by the cut's size, not scaled when -slim shrinks the cut",
                  "one knob across models; compare betas within one model"),
    )))
