"""Hybrid GAN for synthetic medical images (after the MixGANMed / Hybrid GAN papers).

Pipeline (each stage its own module; training loops live elsewhere)::

    N(0, 1) noise ──DCGANGenerator──▶ coarse 64×64 images
    (noise, label, coarse image) ──ConditionalGenerator──▶ 64×64 images   (judged by PairDiscriminator)
    QualityCriteria.select_top ──▶ best 20 % by entropy / gradient / Laplacian variance
    SRGenerator ──▶ refined 128×128 images

Every generated image leaves through :func:`sample`, which wraps it in a :class:`SyntheticBatch`
(``synthetic=True`` plus the generator chain); :func:`select_top` keeps that wrapper.

Parameter budget. The papers report ≤ 0.67 M parameters for the generator path. Here the path is
**DCGANGenerator + ConditionalGenerator + SRGenerator** (discriminators and the parameter-free criteria
do not count), see :func:`generator_path_parameters`. The specified cGAN dense layer 100 → 16 384 has
1 654 784 parameters on its own, so it cannot fit. It is therefore **factorised (low rank)** by default:
100 → ``dense_rank`` (= 8, no bias) → 16 384, i.e. W = B·A with rank 8 (148 k parameters); the output is
still a 16 384-vector reshaped to 8×8×256. ``dense_rank=None`` restores the full dense layer (the literal
paper layer, ≈ 2.13 M for the path) for anyone who wants it and accepts exceeding the budget.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "PARAMETER_BUDGET",
    "ConditionalGenerator",
    "DCGANGenerator",
    "LowRankLinear",
    "PairDiscriminator",
    "QualityCriteria",
    "SRGenerator",
    "SyntheticBatch",
    "count_parameters",
    "generator_path_parameters",
    "quality_scores",
    "sample",
    "select_top",
]

PARAMETER_BUDGET = 670_000
"""Reported upper bound on the generator-path parameter count (DCGAN + cGAN + SRGAN generators)."""


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (each shared tensor counted once; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


def generator_path_parameters(dcgan: nn.Module, cgan: nn.Module, sr: nn.Module) -> int:
    """Parameters of the generator path: DCGAN generator + conditional generator + SR generator.

    Discriminators and the (parameter-free) quality criteria are not part of the path. Parameters shared
    between the modules are counted once.
    """
    seen: dict[int, int] = {}
    for module in (dcgan, cgan, sr):
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv / linear / embedding weights ~ N(0, 0.02), BN weight ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check_noise(noise: Tensor, noise_dim: int) -> Tensor:
    if noise.ndim == 4 and noise.shape[2:] == (1, 1):
        noise = noise.flatten(1)
    if noise.ndim != 2 or noise.shape[1] != noise_dim:
        raise ValueError(f"expected noise of shape N×{noise_dim} (or N×{noise_dim}×1×1), got {tuple(noise.shape)}")
    return noise


# --------------------------------------------------------------------------- stage 1: DCGAN


class DCGANGenerator(nn.Module):
    """DCGAN generator: N(0, 1) noise → coarse images in [−1, 1] (tanh).

    ConvTranspose(k4, s1) maps the noise to 4×4×``widths[0]``; each further ConvTranspose(k4, s2, p1) doubles
    the size (BN + ReLU after all but the last). Output side = 4·2^len(widths): 64 with the default four
    widths. Defaults: 100-d noise, 3 channels (it feeds the cGAN's 64×64×3 condition), ≈ 146 k parameters.
    """

    def __init__(self, noise_dim: int = 100, out_channels: int = 3, widths: Sequence[int] = (64, 32, 16, 8)) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must have at least one entry")
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(noise_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in itertools.pairwise(widths):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], out_channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.noise_dim = noise_dim
        self.out_channels = out_channels
        self.image_size = 4 * 2 ** len(widths)
        _dcgan_init(self)

    def forward(self, noise: Tensor) -> Tensor:
        """``noise`` N×noise_dim (or N×noise_dim×1×1) → N×out_channels×image_size×image_size."""
        return self.net(_check_noise(noise, self.noise_dim)[:, :, None, None])


# --------------------------------------------------------------------------- stage 2: conditional GAN


class LowRankLinear(nn.Module):
    """Factorised dense layer ``y = B(A x) + b`` with A: in → rank (no bias), B: rank → out."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


def _down(c_in: int, c_out: int, norm: bool) -> nn.Sequential:
    """3×3 stride-2 convolution (halves H and W) + optional BN + LeakyReLU(0.2)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """4×4 stride-2 transposed convolution (doubles H and W) + BN + ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


class ConditionalGenerator(nn.Module):
    """Label- and image-conditioned generator (64×64 output).

    * **Label**: ``nn.Embedding(num_classes, noise_dim)`` **multiplied element-wise into the noise**
      (``z ⊙ e_y``, as in the Keras ACGAN/cGAN recipe), so the label adds no channels.
    * **Noise branch** (``noise_branch``): z ⊙ e_y → dense to 16 384 → reshape 256×8×8 → BN → ReLU.
      The dense layer is :class:`LowRankLinear` of rank ``dense_rank`` (default 8) to respect the
      0.67 M generator-path budget; ``dense_rank=None`` uses the full 100 → 16 384 ``nn.Linear`` (1.65 M).
    * **Condition branch**: 64×64×3 → ``cond_down1`` (stride 2) → 32×32×32 → ``cond_down2`` (stride 2) →
      16×16×64 → ``cond_down3`` (stride 2) → 8×8×128; 3×3 convolutions, LeakyReLU(0.2), BN on the last two.
    * **Fusion**: channel concatenation → 384×8×8 (see :meth:`features`).
    * **Decoder**: 1×1 conv 384 → ``decoder_widths[0]`` (BN + ReLU; channel reduction at 8×8), then
      transposed convolutions (k4, s2) 8 → 16 → 32 → 64 with tanh output, ``out_channels`` (default 3).

    Defaults: ≈ 309 k parameters (of which 148 k in the factorised dense layer).
    """

    NOISE_SHAPE = (256, 8, 8)
    CONDITION_SIZE = 64

    def __init__(
        self,
        noise_dim: int = 100,
        num_classes: int = 2,
        condition_channels: int = 3,
        out_channels: int = 3,
        dense_rank: int | None = 8,
        decoder_widths: Sequence[int] = (64, 32, 16),
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(decoder_widths) != 3:
            raise ValueError("decoder_widths needs 3 entries (8×8 bottleneck, 16×16, 32×32)")
        dense_out = math.prod(self.NOISE_SHAPE)  # 16 384
        dense = (
            nn.Linear(noise_dim, dense_out) if dense_rank is None else LowRankLinear(noise_dim, dense_out, dense_rank)
        )
        self.label_embedding = nn.Embedding(num_classes, noise_dim)
        self.noise_branch = nn.Sequential(
            dense, nn.Unflatten(1, self.NOISE_SHAPE), nn.BatchNorm2d(self.NOISE_SHAPE[0]), nn.ReLU(inplace=True)
        )
        self.cond_down1 = _down(condition_channels, 32, norm=False)
        self.cond_down2 = _down(32, 64, norm=True)
        self.cond_down3 = _down(64, 128, norm=True)
        fused = self.NOISE_SHAPE[0] + 128  # 384
        w0, w1, w2 = decoder_widths
        self.decoder = nn.Sequential(
            nn.Conv2d(fused, w0, 1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
            _up(w0, w1),  # 16×16
            _up(w1, w2),  # 32×32
            nn.ConvTranspose2d(w2, out_channels, 4, 2, 1),  # 64×64
            nn.Tanh(),
        )
        self.noise_dim, self.num_classes = noise_dim, num_classes
        self.condition_channels, self.out_channels = condition_channels, out_channels
        _dcgan_init(self)

    def features(self, noise: Tensor, labels: Tensor, condition_image: Tensor) -> dict[str, Tensor]:
        """Intermediate maps: ``noise`` 256×8×8, ``condition16`` 64×16×16, ``condition`` 128×8×8, ``fused`` 384×8×8."""
        noise = _check_noise(noise, self.noise_dim)
        if labels.shape != (noise.shape[0],):
            raise ValueError(f"labels must have shape ({noise.shape[0]},), got {tuple(labels.shape)}")
        size = self.CONDITION_SIZE
        if condition_image.shape != (noise.shape[0], self.condition_channels, size, size):
            raise ValueError(
                f"condition_image must be N×{self.condition_channels}×{size}×{size} with N={noise.shape[0]}, "
                f"got {tuple(condition_image.shape)}"
            )
        n = self.noise_branch(noise * self.label_embedding(labels))
        c16 = self.cond_down2(self.cond_down1(condition_image))
        c8 = self.cond_down3(c16)
        return {"noise": n, "condition16": c16, "condition": c8, "fused": torch.cat([n, c8], dim=1)}

    def forward(self, noise: Tensor, labels: Tensor, condition_image: Tensor) -> Tensor:
        """N×noise_dim noise, N integer labels, N×3×64×64 condition → N×out_channels×64×64 in [−1, 1]."""
        return self.decoder(self.features(noise, labels, condition_image)["fused"])


class PairDiscriminator(nn.Module):
    """cGAN discriminator on the 6-channel pair ``cat(image, condition)`` (64×64×3 each).

    Conv(k4, s2, p1) 64 → 128 → 256 with LeakyReLU(0.2) and **no normalisation** → flatten (256×8×8) →
    linear → 1 logit. Label conditioning by **projection** (Miyato & Koyama, 2018):
    ``logit = w·φ + b + ⟨embed(y), φ⟩`` with φ the flattened features. ``num_classes=0`` disables it.
    """

    def __init__(
        self,
        image_channels: int = 3,
        condition_channels: int = 3,
        num_classes: int = 2,
        widths: Sequence[int] = (64, 128, 256),
        image_size: int = 64,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = image_channels + condition_channels
        for width in widths:
            layers += [nn.Conv2d(c_in, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = image_size // 2 ** len(widths)
        if side < 1 or image_size % 2 ** len(widths):
            raise ValueError(f"image_size {image_size} must be divisible by {2 ** len(widths)}")
        feature_dim = c_in * side * side
        self.linear = nn.Linear(feature_dim, 1)
        self.embedding = nn.Embedding(num_classes, feature_dim) if num_classes > 0 else None
        self.image_channels, self.condition_channels, self.image_size = image_channels, condition_channels, image_size
        self.num_classes = num_classes
        _dcgan_init(self)

    def forward(self, image: Tensor, condition: Tensor, labels: Tensor | None = None) -> Tensor:
        """``image`` N×3×64×64 (real or generated), ``condition`` N×3×64×64, ``labels`` N → logits N×1."""
        if image.shape[0] != condition.shape[0] or image.shape[2:] != condition.shape[2:]:
            raise ValueError(f"image {tuple(image.shape)} and condition {tuple(condition.shape)} do not pair up")
        phi = self.features(torch.cat([image, condition], dim=1))
        logit = self.linear(phi)
        if self.embedding is not None:
            if labels is None:
                raise ValueError("this discriminator is label-conditioned: pass labels")
            logit = logit + (self.embedding(labels) * phi).sum(dim=1, keepdim=True)
        return logit


# --------------------------------------------------------------------------- stage 3: quality criteria


def _average_ranks(values: Tensor) -> Tensor:
    """Ascending ranks 0 … N−1 of a 1-D tensor; tied values share the mean of their ranks."""
    _, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts
    return (start.to(torch.float64) + (counts.to(torch.float64) - 1) / 2)[inverse]


class QualityCriteria(nn.Module):
    """Non-trainable, batched no-reference quality criteria (no parameters; kernels are buffers).

    For images N×C×H×W (H, W >= 3), per image:

    * ``entropy``: Shannon entropy **in bits** of the intensity histogram with ``bins`` (256) equal-width bins
      over the fixed ``value_range`` ([−1, 1], the tanh range); values outside are clamped into the end bins.
      All channels and pixels of an image share one histogram. Constant image → 0; maximum log2(bins).
    * ``gradient``: mean Sobel gradient magnitude ``sqrt(gx² + gy²)`` with the Sobel kernels divided by 8
      (a unit-slope ramp has gradient 1), evaluated without padding (valid (H−2)×(W−2) region) per channel.
    * ``laplacian_var``: population variance of the 4-neighbour Laplacian ``[[0,1,0],[1,−4,1],[0,1,0]]`` over
      the valid region of all channels.

    Combined score (:meth:`combined_score`): mean over the three criteria of the image's ascending rank in
    the batch (0 = lowest … N−1 = highest, ties get the average rank); higher is better. Note these criteria
    also reward noise, so they select sharp, information-rich images, not plausible ones.
    """

    CRITERIA = ("entropy", "gradient", "laplacian_var")

    def __init__(self, bins: int = 256, value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        lo, hi = float(value_range[0]), float(value_range[1])
        if not hi > lo:
            raise ValueError(f"value_range must be increasing, got {value_range}")
        self.bins, self.lo, self.hi = bins, lo, hi
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("kernels", torch.stack([sobel_x, sobel_x.T, laplacian])[:, None], persistent=False)

    @staticmethod
    def _check(images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[2] < 3 or images.shape[3] < 3:
            raise ValueError(f"expected N×C×H×W images with H, W >= 3, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            images = images.to(torch.float32)
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf values")
        return images

    @torch.no_grad()
    def quality_scores(self, images: Tensor) -> dict[str, Tensor]:
        """Per-image ``entropy`` (bits), ``gradient`` and ``laplacian_var``, each a float tensor of shape N."""
        x = self._check(images)
        n, c, h, w = x.shape
        # Entropy of the per-image intensity histogram.
        idx = ((x.reshape(n, -1) - self.lo) / (self.hi - self.lo) * self.bins).floor().clamp(0, self.bins - 1).long()
        counts = torch.zeros(n, self.bins, dtype=torch.float64, device=x.device)
        counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
        p = counts / counts.sum(dim=1, keepdim=True)
        entropy = -(p * torch.log2(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=1)
        # Sobel gradient and Laplacian, each channel filtered separately (valid region, no padding).
        responses = F.conv2d(x.reshape(n * c, 1, h, w), self.kernels.to(x.dtype)).reshape(n, c, 3, h - 2, w - 2)
        gradient = torch.sqrt(responses[:, :, 0] ** 2 + responses[:, :, 1] ** 2).mean(dim=(1, 2, 3))
        laplacian_var = responses[:, :, 2].reshape(n, -1).var(dim=1, unbiased=False)
        return {"entropy": entropy.to(x.dtype), "gradient": gradient, "laplacian_var": laplacian_var}

    def combined_score(self, images: Tensor) -> Tensor:
        """Mean of the per-criterion ascending ranks within the batch (float64, shape N; higher is better)."""
        scores = self.quality_scores(images)
        return torch.stack([_average_ranks(scores[k]) for k in self.CRITERIA]).mean(dim=0)

    def select_top(
        self, images: Tensor | SyntheticBatch, fraction: float = 0.2
    ) -> tuple[Tensor | SyntheticBatch, Tensor]:
        """Keep the best ``ceil(fraction · N)`` images (at least 1 when N > 0) by :meth:`combined_score`.

        Returns ``(kept, indices)`` with ``indices`` best first (ties: lower batch index first). A
        :class:`SyntheticBatch` input gives a :class:`SyntheticBatch` output (still marked synthetic).
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        tensor = images.images if isinstance(images, SyntheticBatch) else images
        n = tensor.shape[0]
        k = max(1, math.ceil(fraction * n - 1e-9)) if n else 0  # tolerance: 0.2 · 15 must give 3, not 4
        order = torch.sort(self.combined_score(tensor), descending=True, stable=True).indices if n else None
        indices = order[:k] if order is not None else torch.zeros(0, dtype=torch.long, device=tensor.device)
        indices = indices.to(tensor.device)
        if isinstance(images, SyntheticBatch):
            return images.subset(indices), indices
        return tensor[indices], indices

    def forward(self, images: Tensor) -> Tensor:
        """Combined score per image (see :meth:`combined_score`)."""
        return self.combined_score(images)


def quality_scores(
    images: Tensor, bins: int = 256, value_range: tuple[float, float] = (-1.0, 1.0)
) -> dict[str, Tensor]:
    """Functional form of :meth:`QualityCriteria.quality_scores`."""
    return QualityCriteria(bins, value_range).to(images.device).quality_scores(images)


def select_top(
    images: Tensor | SyntheticBatch,
    fraction: float = 0.2,
    bins: int = 256,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> tuple[Tensor | SyntheticBatch, Tensor]:
    """Functional form of :meth:`QualityCriteria.select_top`."""
    device = images.images.device if isinstance(images, SyntheticBatch) else images.device
    return QualityCriteria(bins, value_range).to(device).select_top(images, fraction)


# --------------------------------------------------------------------------- stage 4: SRGAN refinement


class _ResidualBlock(nn.Module):
    """SRGAN residual block: conv–BN–PReLU–conv–BN plus identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SRGenerator(nn.Module):
    """SRGAN-style refinement generator (Ledig et al., 2017), scaled down.

    9×9 conv + PReLU → ``num_blocks`` residual blocks (``channels`` wide) → conv + BN + long skip →
    log2(``scale``) × [conv to 4·channels → PixelShuffle(2) → PReLU] → 9×9 conv → tanh.
    Input N×C×H×W in [−1, 1] → N×C×(scale·H)×(scale·W). Defaults (6 blocks × 32, ×2): ≈ 173 k parameters.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 32,
        num_blocks: int = 6,
        scale: int = 2,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f"scale must be a power of two >= 2, got {scale}")
        out_channels = in_channels if out_channels is None else out_channels
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, 9, padding=4), nn.PReLU())
        self.blocks = nn.Sequential(*(_ResidualBlock(channels) for _ in range(num_blocks)))
        self.post = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        upsample: list[nn.Module] = []
        for _ in range(int(math.log2(scale))):
            upsample += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2), nn.PReLU()]
        self.upsample = nn.Sequential(*upsample)
        self.tail = nn.Conv2d(channels, out_channels, 9, padding=4)
        self.in_channels, self.out_channels, self.scale = in_channels, out_channels, scale

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected N×{self.in_channels}×H×W input, got shape {tuple(x.shape)}")
        h = self.head(x)
        h = h + self.post(self.blocks(h))
        return torch.tanh(self.tail(self.upsample(h)))


# --------------------------------------------------------------------------- synthetic-data marking


@dataclass(frozen=True)
class SyntheticBatch:
    """Generated images, always marked synthetic.

    ``images`` N×C×H×W in [−1, 1]; ``generator`` is the chain that produced them, e.g.
    ``"dcgan-generator>cgan-generator>srgan-generator"``; ``labels`` are the conditioning labels, if any.
    ``synthetic`` exists so that serialised records carry the mark; it cannot be set to False.
    """

    images: Tensor
    generator: str
    synthetic: bool = True
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        if self.synthetic is not True:
            raise ValueError("a SyntheticBatch is always synthetic (synthetic=True)")
        if not isinstance(self.images, Tensor) or self.images.ndim != 4:
            raise ValueError("images must be an N×C×H×W tensor")
        if not self.generator:
            raise ValueError("generator must name the producing generator(s)")
        if self.labels is not None and self.labels.shape[0] != self.images.shape[0]:
            raise ValueError("labels and images differ in batch size")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: Tensor) -> SyntheticBatch:
        """The images at ``indices`` (still synthetic, same generator chain)."""
        labels = None if self.labels is None else self.labels[indices.to(self.labels.device)]
        return SyntheticBatch(self.images[indices], self.generator, labels=labels)


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """``eval()`` + ``no_grad`` for the duration, restoring the previous training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def sample(
    model: nn.Module,
    n: int | None = None,
    *,
    noise: Tensor | None = None,
    labels: Tensor | None = None,
    condition: Tensor | SyntheticBatch | None = None,
    rng: torch.Generator | None = None,
) -> SyntheticBatch:
    """Run a generator in eval mode without gradients and wrap its output in a :class:`SyntheticBatch`.

    * :class:`DCGANGenerator`: ``n`` images from N(0, 1) noise (drawn with ``rng``), or from ``noise``.
    * :class:`ConditionalGenerator`: needs ``labels`` (N) and ``condition`` (N×3×64×64 or a SyntheticBatch);
      ``n`` defaults to ``len(labels)``.
    * :class:`SRGenerator`: refines ``condition`` (the low-resolution batch); no noise.

    A SyntheticBatch ``condition`` extends the generator chain (``"dcgan-generator>cgan-generator"``).
    """
    if isinstance(model, DCGANGenerator):
        name = "dcgan-generator"
    elif isinstance(model, ConditionalGenerator):
        name = "cgan-generator"
    elif isinstance(model, SRGenerator):
        name = "srgan-generator"
    else:
        raise TypeError(f"sample() supports DCGANGenerator, ConditionalGenerator and SRGenerator, not {type(model)}")
    device = next(model.parameters()).device
    chain = name
    cond_tensor: Tensor | None = None
    if isinstance(condition, SyntheticBatch):
        chain = f"{condition.generator}>{name}"
        cond_tensor = condition.images
        if labels is None and isinstance(model, SRGenerator):
            labels = condition.labels  # refinement keeps the labels of the images it refines
    elif condition is not None:
        cond_tensor = condition

    def draw(count: int | None, dim: int) -> Tensor:
        if noise is not None:
            return noise.to(device)
        if count is None:
            raise ValueError("give n or noise")
        return torch.randn(count, dim, generator=rng, device=rng.device if rng is not None else device).to(device)

    with _inference(model):
        if isinstance(model, DCGANGenerator):
            images = model(draw(n, model.noise_dim))
        elif isinstance(model, ConditionalGenerator):
            if labels is None or cond_tensor is None:
                raise ValueError("ConditionalGenerator needs labels and condition")
            images = model(
                draw(len(labels) if n is None else n, model.noise_dim), labels.to(device), cond_tensor.to(device)
            )
        else:
            if cond_tensor is None:
                raise ValueError("SRGenerator needs condition (the batch to refine)")
            images = model(cond_tensor.to(device))
    return SyntheticBatch(images, chain, labels=labels)
