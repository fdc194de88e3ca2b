"""``mcr2``: DuPHiL, MCR^2-guided hierarchical training (paper 003).

Source: the head, then a latent encoder (pooling and two dense layers) to a bottleneck
of ``latent_dim`` values, rounded for transmission (uniform noise in (-1, 1) while
training, as the paper says). Phase 1 (``prepare``, at the source, no network): the
head, the latent encoder and a side branch minimise the MCR^2 loss -R + Rc on the
side branch's L2-normalised features. Then the encoder is frozen; the bottleneck
neurons are ranked by Fisher's discriminative power tr(Sb)/tr(Sw) on the training
shard and only the ``keep_neurons`` best cross the network; a per-dimension
categorical model fitted on the training shard's rounded latents drives a real range
coder (constriction), and crosses the network once. Phase 2 (the epochs): the server's
latent decoder (transposed convolutions) and layers train with cross-entropy.

MCR^2 as in the reference code: ``eps2`` is epsilon squared (0.5), natural logs, the
class-wise rates from per-class sums (no m x m membership matrices).
"""
from __future__ import annotations

import constriction
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import Arrays, ServerPart, SourcePart, at_least
from .shipping import range_decode as decode_symbols
from .shipping import range_encode as encode_symbols
from .. import events
from ..option import knob
from .registry import CompressionConfig, Deviation, ModuleSpec, register

SIDE_DIM = 128
# Each sample's bottleneck is standardised across its neurons (a layer norm without
# affine, the same in training and inference) and scaled so that it spans several
# rounding steps: MCR^2 is blind to scale and would not set one.
LATENT_SCALE = 2.0
HIDDEN = 256
PHASE1_LR = 1e-3
# MCR^2 compares class subspaces: with a handful of samples per class it rewards random
# features. Phase 1 steps on this many batches at once (512 samples of 16; the reference
# code uses ~1000) and takes at least --phase1-steps steps (200 by default). With 8 batches and 40 steps
# the encoder stayed near its random start: on the synthetic set at difficulty 0.6 (2
# sources, 32 batches x 6 epochs) the server reached 25% accuracy on its latent, against
# none's 97%; with these it reaches 94% at 36 bytes per sample (tests/test_mcr2.py).
PHASE1_GROUP = 32
MODEL_PREFIX = "model."
EPS2 = 0.5  # epsilon squared of the coding rates
_FAMILY = constriction.stream.model.Categorical(perfect=False)


# -- MCR^2 ---------------------------------------------------------------------------------
def coding_rate(z: torch.Tensor, eps2: float) -> torch.Tensor:
    """R(Z) = 1/2 logdet(I + d / (n eps2) Z^T Z) for n rows of dimension d."""
    n, d = z.shape
    return 0.5 * torch.logdet(torch.eye(d, dtype=z.dtype) + (d / (n * eps2)) * z.T @ z)


def mcr2_loss(features: torch.Tensor, labels: torch.Tensor, classes: int, eps2: float = 0.5):
    """(-R + Rc, R, Rc) on L2-normalised features."""
    z = F.normalize(features, dim=1)
    n, d = z.shape
    rate = coding_rate(z, eps2)
    compressed = z.new_zeros(())
    for c in range(classes):
        zc = z[labels == c]
        if len(zc):
            compressed = compressed + len(zc) / (2 * n) * torch.logdet(
                torch.eye(d, dtype=z.dtype) + (d / (len(zc) * eps2)) * zc.T @ zc)
    return -rate + compressed, rate, compressed


def fisher_power(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per column: between-class scatter over within-class scatter (the traces of Sb, Sw)."""
    mean = values.mean(axis=0)
    between, within = np.zeros(values.shape[1]), np.zeros(values.shape[1])
    for c in np.unique(labels):
        members = values[labels == c]
        centre = members.mean(axis=0)
        between += len(members) * (centre - mean) ** 2
        within += ((members - centre) ** 2).sum(axis=0)
    return between / np.maximum(within, 1e-12)


# -- the entropy model and the range coder -----------------------------------------------
def fit_model(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per dimension: the lowest value and a smoothed histogram over [lowest, highest]."""
    low, high = codes.min(axis=0), codes.max(axis=0)
    sizes = np.maximum(high - low + 1, 2)  # the coder wants two symbols at least
    pmf = np.zeros((codes.shape[1], int(sizes.max())), dtype=np.float32)
    for k in range(codes.shape[1]):
        counts = np.bincount(codes[:, k] - low[k], minlength=int(sizes[k]))
        pmf[k, :len(counts)] = (counts + 1) / (counts.sum() + len(counts))  # every value in range stays codable
    return low.astype(np.int32), pmf


def max_pmf_width(dim: int) -> int:
    """The most symbols a dimension's model can have: a layer-normalised value lies within
    sqrt(dim) of zero, times LATENT_SCALE, rounded; plus room for the smallest model (2)."""
    return 2 * int(np.ceil(LATENT_SCALE * np.sqrt(dim))) + 3


def range_encode(codes: np.ndarray, low: np.ndarray, pmf: np.ndarray) -> np.ndarray:
    """Range-code rows of integer codes (clipped into the model's range) -> bytes."""
    sizes = (pmf > 0).sum(axis=1)
    return encode_symbols(np.clip(codes - low, 0, sizes - 1), _FAMILY, np.tile(pmf, (codes.shape[0], 1)))


def range_decode(data: np.ndarray, rows: int, low: np.ndarray, pmf: np.ndarray) -> np.ndarray:
    return decode_symbols(data, _FAMILY, np.tile(pmf, (rows, 1))).reshape(rows, len(low)) + low


def _grouped(batches, size: int):
    """Concatenate every ``size`` consecutive (images, labels) batches."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield torch.cat([x for x, _ in group]), torch.cat([y for _, y in group])
            group = []
    if group:
        yield torch.cat([x for x, _ in group]), torch.cat([y for _, y in group])


# -- the two parts ---------------------------------------------------------------------------
class Mcr2Source(SourcePart):
    coded_arrays = ("bits",)  # the arithmetic-coded latent, the rate paper 003 counts; the model crosses once, apart

    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        channels = cut_shape[0]
        self.dim, self.classes, self.eps2 = config.latent_dim, config.classes, EPS2
        self.keep = config.keep_neurons or self.dim
        self.phase1_steps = config.phase1_steps
        self.encoder = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(channels * 4, HIDDEN),
                                     nn.ReLU(inplace=True), nn.Linear(HIDDEN, self.dim),
                                     nn.LayerNorm(self.dim, elementwise_affine=False))
        self.side = nn.Linear(self.dim, SIDE_DIM)
        self.kept = np.arange(self.dim)
        self.low = self.pmf = None
        self.model_sent = False

    def latent(self, maps: torch.Tensor, noisy: bool) -> torch.Tensor:
        y = self.encoder(maps) * LATENT_SCALE
        return y + (torch.rand_like(y) * 2 - 1) if noisy else torch.round(y)

    def prepare(self, head, batches, trace) -> None:
        """Phase 1: MCR^2 on the side branch; then rank neurons and fit the entropy model."""
        params = list(head.parameters()) + list(self.encoder.parameters()) + list(self.side.parameters())
        optimizer = torch.optim.Adam(params, lr=PHASE1_LR)
        head.train()
        self.train()
        seen = []
        for step, (x, labels) in enumerate(at_least(lambda: _grouped(batches(), PHASE1_GROUP), self.phase1_steps)):
            loss, rate, compressed = mcr2_loss(self.side(self.latent(head(x), noisy=True)), labels, self.classes,
                                               self.eps2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            trace.event(events.PRETRAIN, step=step, samples=len(x), loss=round(loss.item(), 6), rate=round(rate.item(), 6),
                        class_rate=round(compressed.item(), 6))
        for p in params:
            p.requires_grad_(False)
        head.eval()
        self.eval()
        with torch.no_grad():
            for x, labels in batches():
                seen.append((self.latent(head(x), noisy=False).numpy().astype(np.int64), labels.numpy()))
        codes = np.concatenate([c for c, _ in seen])
        power = fisher_power(codes.astype(np.float64), np.concatenate([l for _, l in seen]))
        self.kept = np.sort(np.argsort(-power, kind="stable")[:self.keep])
        self.low, self.pmf = fit_model(codes[:, self.kept])
        trace.event(events.ENTROPY_MODEL, kept=self.kept.tolist(), fisher=[round(float(p), 6) for p in power[self.kept]],
                    model_bytes=int(self.pmf.nbytes + self.low.nbytes + self.kept.size * 2))

    def forward(self, maps):
        if self.pmf is None:
            raise ValueError("mcr2 streams only after phase 1 (prepare) has fitted its entropy model")
        with torch.no_grad():
            return self.latent(maps, noisy=False), {}

    def encode(self, sent, side) -> Arrays:
        codes = sent.numpy().astype(np.int64)[:, self.kept]
        arrays = {"bits": range_encode(codes, self.low, self.pmf), "rows": np.array([len(codes)], dtype="<i4")}
        if not self.model_sent:  # the entropy model crosses once
            arrays.update({MODEL_PREFIX + "kept": self.kept.astype("<u2"), MODEL_PREFIX + "low": self.low,
                           MODEL_PREFIX + "pmf": self.pmf})
            self.model_sent = True
        return arrays

    def describe(self):
        return {"latent_dims_sent": int(self.keep)}


class Mcr2Server(ServerPart):
    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        channels, height, width = cut_shape
        if height != width or height < 2 or height & (height - 1):
            raise ValueError(f"mcr2's latent decoder needs a square power-of-two cut, got {height}x{width}")
        self.dim = config.latent_dim
        layers, size, width_in = [], 1, self.dim
        while size < height:  # transposed convolutions double the size up to the cut's (three for 8x8)
            out = channels if size * 2 == height else max(channels, HIDDEN // 2 ** len(layers))
            layers += [nn.ConvTranspose2d(width_in, out, 2, stride=2), nn.ReLU(inplace=True)]
            width_in, size = out, size * 2
        self.decoder = nn.Sequential(*layers)
        self.models: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # per source: kept, low, pmf

    def largest_request(self, batch_size: int) -> int:
        bits = 4 * batch_size * self.dim + 16  # the coder spends under 32 bits on any symbol
        model = self.dim * (2 + 4 + 4 * max_pmf_width(self.dim))  # kept, low, pmf: sent once
        return bits + 4 + model

    def decode(self, arrays: Arrays, device, source: int = 0):
        if MODEL_PREFIX + "pmf" in arrays:
            self.models[source] = self._load(arrays)
        if source not in self.models:
            raise ValueError(f"mcr2: no entropy model received from source {source} yet (it comes with its first message)")
        kept, low, pmf = self.models[source]
        bits, rows = arrays.get("bits"), arrays.get("rows")
        if bits is None or rows is None or rows.shape != (1,) or bits.dtype != np.uint8 or bits.ndim != 1 \
                or rows.dtype.kind not in "ui":
            raise ValueError("an mcr2 message needs uint8 'bits' and 'rows'")
        n = self.check_batch(int(rows[0]), "an mcr2 message")
        if bits.size > 4 * n * len(kept) + 16:  # what no row count it sends could need
            raise ValueError(f"{bits.size} bytes of bitstream for {n} rows of {len(kept)} values")
        codes = range_decode(bits, n, low, pmf)
        latent = np.zeros((n, self.dim), dtype=np.float32)
        latent[:, kept] = codes
        restored = self.decoder(torch.from_numpy(latent).to(device).view(-1, self.dim, 1, 1))
        return restored, restored

    def _load(self, arrays: Arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kept, low, pmf = (arrays.get(MODEL_PREFIX + k) for k in ("kept", "low", "pmf"))
        if kept is None or low is None or pmf is None or pmf.ndim != 2 or kept.ndim != 1 or low.ndim != 1 \
                or not len(kept) == len(low) == len(pmf) or not 0 < len(kept) <= self.dim \
                or kept.dtype.kind != "u" or low.dtype.kind != "i" or pmf.dtype != np.float32 \
                or not 2 <= pmf.shape[1] <= max_pmf_width(self.dim) or int(kept.max()) >= self.dim \
                or not np.isfinite(pmf).all() or (pmf < 0).any() or not (pmf.sum(axis=1) > 0).all():
            raise ValueError("the mcr2 entropy model is malformed")
        return kept.astype(np.int64), low.astype(np.int64), pmf.astype(np.float32)


def latent_bits(codes: np.ndarray, low: np.ndarray, pmf: np.ndarray) -> float:
    """The ideal code length of ``codes`` under the model, in bits (for tests)."""
    sizes = (pmf > 0).sum(axis=1)
    symbols = np.clip(codes - low, 0, sizes - 1)
    p = pmf[np.arange(len(low))[None, :], symbols] / pmf.sum(axis=1)[None, :]
    return float(-np.log2(p).sum())


def _check(config) -> None:
    if config.keep_neurons > config.latent_dim:
        raise ValueError(f"--keep-neurons must be between 0 (all) and --latent-dim ({config.latent_dim}), "
                         f"got {config.keep_neurons}")


register(ModuleSpec(
    "mcr2", "003 (DuPHiL)", "head and a latent encoder trained at the source on the MCR^2 loss (phase 1), then "
    "frozen; the rounded latent crosses range-coded under a per-dimension model sent once; the server's decoder "
    "and layers train with cross-entropy (phase 2)", Mcr2Source, Mcr2Server,
    (knob("latent-dim", int, 64, "bottleneck neurons", min=1),
     knob("keep-neurons", int, 0, "neurons sent, the best by Fisher's discriminative power (0: all)", ("source",),
          min=0),
     knob("phase1-steps", int, 200, "phase 1 (MCR^2 at the source) takes at least this many steps of 32 batches, "
          "passing over the shard as often as that needs", ("source",), min=1)),
    at_source="encoder, side branch, range coder", at_server="latent decoder + the rest",
    # Phase 2 trains the latent decoder from scratch on a coarse, rounded latent: at the
    # testbed's SGD lr of 0.01 that diverged, at a tenth it learns (the tail is not scaled).
    server_lr_scale=0.1, check=_check,
    deviations=(
        Deviation("pre-train with cross-entropy, then alternate phase 1 (MCR^2 on the encoder) and phase 2 "
                  "(cross-entropy on the decoder, encoder frozen) every epoch",
                  "phase 1 once at the source from random weights, then the encoder frozen for every epoch",
                  "not built yet: the cross-entropy pre-training trains the encoder end to end, through the "
                  "server's gradient (the encoder would have to learn from the returned gradient before it is "
                  "frozen), and alternating refits the entropy model and sends it again every epoch; at the "
                  "source's CPU cap each phase 1 is also the run's longest step"),
        Deviation("one device's encoder, one decoder",
                  "each source trains and freezes its own encoder on its shard; the server's one decoder serves all "
                  "of their latent spaces",
                  "the data lives at the sources; the reproductions (003-duphil) run one source, as the paper"),
        Deviation("the latent's resolution learnt by the encoder",
                  "the latent standardised per sample (a LayerNorm without affine) and scaled by 2 before rounding",
                  "MCR^2 is blind to scale and would not set one"),
        Deviation("phase 1 as long as the paper's training (100 epochs of the encoder)",
                  "phase 1 at least --phase1-steps steps (default 200) of 32 batches at a time, before streaming",
                  "MCR^2 needs many samples per class per step; a spec sets the length its scale can afford"),
    )))
