"""``cdc``: classification-driven compression (paper 000).

At the source, a light convolutional autoencoder with the adjustable stochastic
quantizer of mask number m (L = 2^(4-m) steps):

    Q(x) = clip(ceil(x * L + eps), -L + 1, L),  eps ~ U(-0.5, 0.5) while training, 0 otherwise
    Q'(q) = (q - 0.5) / L

on the encoder's output in (-1, 1) (paper 000, section 3.3): 2L = 2^(5-m) levels, sent as
q + L - 1 in 5 - m bits (m = 4: one bit, the sign of the latent).

and an elementary classifier (EC) on the autoencoder's output, whose loss, attenuated
by 1/alpha, guides the autoencoder: loss = MSE(x, D(Q'(Q(E(x))))) + CE(EC(...), y) / alpha.
The edge trains the autoencoder and the EC first, on its own data and without the
network (``prepare``). Then the encoder and decoder are frozen: the decoder's weights
cross the network once (with the first message), and every message carries the
quantized latent packed into the fewest bits per value. The server restores the input
with that decoder and trains the advanced classifier (the whole model, split 0) on it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import Arrays, ServerPart, SourcePart, require_input, state_bytes
from .shipping import has_state, load_state_arrays, state_arrays
from .. import events
from ..option import knob
from .registry import CompressionConfig, Deviation, Levels, ModuleSpec, register

# As many latent values as input pixels (16 maps of 8x8 for a 32x32 image), so that m = 4 (one
# bit per value) is paper 000's 1 BPP and m = 0 its 5 BPP (8 maps made m = 4 half a bit per pixel).
LATENT_CHANNELS = 16
DECODER_PREFIX = "decoder."
PRETRAIN_LR = 1e-2  # Adam; the autoencoder settles within about a hundred steps


def levels(mask: int) -> int:
    if not 0 <= mask <= 4:
        raise ValueError(f"mask number must be between 0 and 4, got {mask}")
    return 2 ** (4 - mask)


def parse_mask_schedule(text: str) -> tuple[tuple[int, int], ...]:
    """``"0:2,2:1,4:1"``: mask number 0 for two epochs, then 2, then 4 (the last one stays)."""
    phases = []
    for part in filter(None, text.split(",")):
        try:
            mask, epochs = (int(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"bad mask schedule entry {part!r}: expected M:EPOCHS, e.g. 0:2,4:1") from None
        levels(mask)
        if epochs < 1:
            raise ValueError(f"bad mask schedule entry {part!r}: epochs must be >= 1")
        phases.append((mask, epochs))
    return tuple(phases)


def mask_for_epoch(schedule, epoch: int, default: int) -> int:
    start = 0
    for mask, epochs in schedule:
        if epoch < start + epochs:
            return mask
        start += epochs
    return schedule[-1][0] if schedule else default


def bits_per_value(mask: int) -> int:
    """The 2L levels -L+1..L, sent as 0..2L-1: 5 - m bits."""
    return int(math.log2(2 * levels(mask)))


def quantize(z: torch.Tensor, mask: int, noisy: bool) -> torch.Tensor:
    """The level -L+1..L of each value of z in (-1, 1)."""
    step = levels(mask)
    noise = torch.rand_like(z) - 0.5 if noisy else torch.zeros_like(z)
    return torch.clamp(torch.ceil(z * step + noise), -step + 1, step)


def to_codes(q: torch.Tensor, mask: int) -> torch.Tensor:
    """Levels -L+1..L as the unsigned codes 0..2L-1 that cross the network."""
    return q + levels(mask) - 1


def from_codes(codes: torch.Tensor, mask: int) -> torch.Tensor:
    return codes - levels(mask) + 1


def dequantize(q: torch.Tensor, mask: int) -> torch.Tensor:
    return (q - 0.5) / levels(mask)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Each value's ``bits`` lowest bits, back to back (big-endian within a byte)."""
    flat = codes.astype(np.uint8).reshape(-1, 1)
    return np.packbits(np.unpackbits(flat, axis=1)[:, 8 - bits:])


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    raw = np.unpackbits(packed)[:count * bits].reshape(count, bits)
    return np.packbits(np.pad(raw, ((0, 0), (8 - bits, 0))), axis=1).reshape(count)


def _halved(size: int) -> int:
    """The output size of a 3x3 convolution with stride 2 and padding 1."""
    return (int(size) - 1) // 2 + 1


def _encoder() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(32, LATENT_CHANNELS, 3, stride=2, padding=1), nn.Tanh())  # E: into (-1, 1)


def _decoder() -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(LATENT_CHANNELS, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                         nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1))


def _elementary_classifier(classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * 16, classes))


class CdcSource(SourcePart):
    coded_arrays = ("codes",)  # the packed latent; the decoder crosses once, apart

    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        require_input(cut_shape, "cdc")
        self.mask_schedule = parse_mask_schedule(config.mask_schedule)
        first = self.mask_schedule[0][0] if self.mask_schedule else config.mask_number
        self.mask, self.bits, self.alpha = first, bits_per_value(first), config.alpha
        self.adapt_steps = config.adapt_finetune_steps
        self.encoder, self.decoder = _encoder(), _decoder()
        self.classifier = _elementary_classifier(config.classes)
        self.decoder_sent = False

    def autoencode(self, x: torch.Tensor, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(restored image, codes); the gradient passes the quantizer straight through."""
        z = self.encoder(x)
        q = quantize(z, self.mask, noisy)
        z_hat = z + (dequantize(q, self.mask) - z).detach()
        return self.decoder(z_hat), q

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        restored, _ = self.autoencode(x, noisy=True)
        reconstruction = F.mse_loss(restored, x)
        guidance = F.cross_entropy(self.classifier(restored), labels)
        return reconstruction + guidance / self.alpha, reconstruction.item(), guidance.item()

    def prepare(self, head, batches, trace) -> None:
        """Train the autoencoder and the EC at the edge, then freeze the autoencoder."""
        self._batches, self._trace = batches, trace  # for fine-tuning when m changes
        self._fit("train")

    def start_epoch(self, epoch: int) -> None:
        """A new mask number fine-tunes the autoencoder from where it is (not from scratch);
        its decoder then crosses the network again, once."""
        mask = mask_for_epoch(self.mask_schedule, epoch, self.mask)
        if mask != self.mask:
            self.mask, self.bits = mask, bits_per_value(mask)
            self._fit("finetune")
            self.decoder_sent = False

    def set_level(self, value: int) -> None:
        """--adapt's mask number: fine-tuned briefly from the current weights; the decoder crosses again."""
        if value != self.mask:
            self.mask, self.bits = value, bits_per_value(value)
            self._fit("adapt", self.adapt_steps)
            self.decoder_sent = False

    def level_bytes(self, maps, values):
        with torch.no_grad():
            per_sample = self.encoder(maps[:1]).numel()
        return [per_sample * bits_per_value(m) / 8 for m in values]  # the packed latent; nothing comes back

    def _fit(self, stage: str, steps: int | None = None) -> None:
        for p in self.parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(self.parameters(), lr=PRETRAIN_LR)
        self.train()
        for step, (x, labels) in enumerate(self._batches()):
            if steps is not None and step >= steps:
                break
            loss, reconstruction, guidance = self.loss(x, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self._trace.event(events.PRETRAIN, stage=stage, step=step, samples=len(x), loss=round(loss.item(), 6),
                              reconstruction=round(reconstruction, 6), ec_loss=round(guidance, 6),
                              mask_number=self.mask)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, maps):
        with torch.no_grad():
            _, q = self.autoencode(maps, noisy=False)
        return to_codes(q, self.mask), {}

    def encode(self, sent, side) -> Arrays:
        codes = sent.to(torch.uint8).cpu().numpy()
        arrays = {"codes": pack(codes, self.bits), "latent_shape": np.array(codes.shape, dtype="<i4"),
                  "mask_number": np.array([self.mask], dtype=np.uint8)}
        if not self.decoder_sent:  # the decoder crosses once
            arrays.update(state_arrays(self.decoder, DECODER_PREFIX))
            self.decoder_sent = True
        return arrays

    def describe(self):
        return {"mask_number": self.mask, "bits_per_value": self.bits}


class CdcServer(ServerPart):
    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        require_input(cut_shape, "cdc")
        self.decoders = nn.ModuleDict()  # each source's edge trained its own autoencoder
        self.latent_size = tuple(_halved(_halved(d)) for d in cut_shape[1:])  # the encoder's two stride-2 convs

    def largest_request(self, batch_size: int) -> int:
        values = batch_size * LATENT_CHANNELS * self.latent_size[0] * self.latent_size[1]
        return math.ceil(values * bits_per_value(0) / 8) + 16 + 1 + state_bytes(_decoder())

    def decode(self, arrays: Arrays, device, source: int = 0):
        if has_state(arrays, DECODER_PREFIX):
            decoder = load_state_arrays(_decoder(), arrays, DECODER_PREFIX, "cdc decoder")
            for p in decoder.parameters():
                p.requires_grad_(False)  # the edge's decoder, used as it was sent
            self.decoders[str(source)] = decoder.to(device)
        decoder = self.decoders[str(source)] if str(source) in self.decoders else None
        if decoder is None:
            raise ValueError(f"cdc: no decoder received from source {source} yet (it comes with its first message)")
        codes, shape, mask = arrays.get("codes"), arrays.get("latent_shape"), arrays.get("mask_number")
        if codes is None or shape is None or mask is None or shape.shape != (4,) or mask.shape != (1,):
            raise ValueError("a cdc message needs 'codes', 'latent_shape' (4 values) and 'mask_number'")
        n, c, h, w = (int(v) for v in shape)
        if c != LATENT_CHANNELS or (h, w) != self.latent_size:
            raise ValueError(f"latent shape {tuple(shape)} is not (N, {LATENT_CHANNELS}, {self.latent_size[0]}, "
                             f"{self.latent_size[1]})")
        self.check_batch(n, "a cdc message")
        bits = bits_per_value(int(mask[0]))
        count = n * c * h * w
        if codes.dtype != np.uint8 or codes.size != math.ceil(count * bits / 8):
            raise ValueError(f"{count} values of {bits} bits need {math.ceil(count * bits / 8)} bytes, got {codes.size}")
        q = from_codes(torch.from_numpy(unpack(codes, bits, count).astype(np.float32)), int(mask[0]))
        with torch.no_grad():
            restored = decoder(dequantize(q.view(n, c, h, w).to(device), int(mask[0])))
        return restored, restored


KNOBS = (
    knob("mask-number", int, 2, "mask number m (2^(4-m) quantizer steps)", min=0, max=4),
    knob("mask-schedule", str, "", "mask numbers over epochs, M:EPOCHS,... (a change fine-tunes the autoencoder)",
         ("source",), validate=parse_mask_schedule),
    knob("alpha", float, 48.0, "the elementary classifier's loss is attenuated by 1/alpha", positive=True),
    knob("adapt-finetune-steps", int, 32, "under --adapt, a new mask number fine-tunes the autoencoder this many "
         "steps from its current weights (the link will not wait for a whole pass)", ("source",), min=1),
)

register(ModuleSpec(
    "cdc", "000 (CDC)", "conv autoencoder with the stochastic quantizer of mask number m, guided by an elementary "
    "classifier; trained at the edge first, then frozen; the latent crosses packed in the fewest bits, the decoder "
    "once (again after a change of m)", CdcSource, CdcServer, KNOBS,
    at_source="encoder, quantizer, elementary classifier", at_server="decoder + the whole model", input_only=True,
    levels=Levels("mask number", lambda values, maps: (4, 3, 2, 1, 0), low=0, high=4, descending=True),
    deviations=(
        Deviation("ResNeXt-29 as the cloud's advanced classifier, trained on the restored images until it converges",
                  "the run's --model (whole, split 0) as the advanced classifier, for the run's epochs",
                  "every arm of a run trains the run's model; the summary states each arm's training before streaming"),
        Deviation("the autoencoder and elementary classifier trained until they converge",
                  "trained for --pretrain-epochs passes over the source's shard before streaming (traced as "
                  "pretraining: steps at the source that the none arm does not get)",
                  "the run's length bounds it; the summary states the pretraining time"),
    )))
