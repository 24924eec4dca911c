"""Context-conditioned enhancer (super-resolution + denoising) and its hybrid discriminator.

After the residual-attention medical-image enhancement paper, with a few cheap-inference choices:

* :class:`ResidualAttentionBlock` — ``Y = X + A ⊙ (W ∗ X)``, ``A = σ(Conv(X))`` (sigmoid gate, same shape
  as the features, one 3×3 conv for ``W`` and one for the gate);
* :class:`MultiScaleBlock` — three parallel 3×3 convolutions with dilation 1, 2, 3 (receptive fields 3, 5,
  7: the paper's 3/5/7 kernels at the cost of 3×3 ones), each followed by LeakyReLU(0.2), fused as
  ``Σ_k λ_k · branch_k(X)`` with ``λ = softmax(fusion_logits)`` (learned, normalised over k);
* :class:`AdaptiveModule` — ``Y = X + α · F(X)`` with ``F`` = multi-scale block + 1×1 projection and ``α``
  produced from the sensor context by :class:`ContextMLP` (``α = 2·σ(·)`` ∈ (0, 2), ONE α PER SAMPLE AND
  PER BLOCK); ``conditioning="film"`` replaces it by ``Y = X + γ ⊙ F(X) + β`` (per channel, ``γ = 1 + Δγ``),
  ``"none"`` by ``Y = X + F(X)`` (the context is then ignored), and ``"gated"`` by a per-pixel
  ``α(x, y) = 2·σ(Conv1×1(SiLU(Conv3×3(X) + e)))`` where ``e`` is the context's embedding for the block: the image
  features and the vitals decide together, so an image that shows no blur can overrule a context that claims it
  (after SFTGAN's spatial feature transform; local, so tiling stays exact);
* upsampling late, at the end of the low-resolution trunk: sub-pixel convolution (PixelShuffle, default) or
  the paper's transposed convolution (kernel 4, stride 2: kernel divisible by stride, no checkerboard), one
  ×2 stage per octave, then a 3×3 conv at the output resolution (``tail="conv"``) — or, with
  ``tail="direct"`` (ESPCN-style), the last ×2 stage outputs the image itself (for ×2 and transposed
  upsampling one ``ConvTranspose2d(channels, C, 4, stride 2)``: no convolution at the output resolution);
* ``gate_kernel=1`` makes the attention gate a 1×1 conv (a per-pixel channel mix, 9× cheaper than 3×3);
* ``trunk="unshuffle"`` (Real-ESRGAN ×2 layout, ~4.6× fewer FLOPs at the default width): the input is
  space-to-depth'd first (PixelUnshuffle(2): H×W×C → H/2×W/2×4C), the SAME blocks run at half the input
  resolution, and a single conv ``channels → (2·scale)²·C`` + PixelShuffle(2·scale) goes straight to the output
  resolution (no upsampling stages, no full-resolution conv). H and W must then be even: ``forward`` raises
  ``ValueError`` otherwise in eager mode; the check is skipped while tracing (ONNX export), so callers of an
  exported graph check with :meth:`ContextEnhancer.check_input_size` or pad (:attr:`ContextEnhancer.size_multiple`);
* ``noise_input="map"`` (after FFDNet's noise-level map, but estimated, not given): two fixed, non-learned input
  channels per image channel next to the image — Immerkær's noise estimate ``√(π/2)/6 · |I ∗ M|`` averaged over a
  7×7 window (local: noise *and* texture) and over the whole image (global) — so that even a one-block trunk, whose
  receptive field is a few pixels, knows how noisy the image is. Derived from the input alone (no vitals): a
  blind model gets it too;
* ``residual_filter="nyquist"``: a fixed separable 5-tap low-pass (:data:`NYQUIST_TAPS`, no parameters) on the
  learned residual at the output resolution, zero at Nyquist: whatever the upsampler's phases learn, the residual
  carries (almost) no period-2 pattern — the checkerboard (:func:`gan.metrics.checkerboard_ratio`);
* global residual: ``output = bicubic_upsample(input) + learned residual`` (:class:`BicubicUpsample`: PyTorch's
  bicubic as a fixed conv, so the ONNX graph has no slow ``Resize``), NOT clamped (clamping would zero
  the gradient of pixels at 0 or 1; clamp before display or DICOM write — or pass ``clamp=True``).

The forward pass has no data-dependent Python control flow; batch and spatial size are free (ONNX dynamic
axes; even H, W for ``trunk="unshuffle"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import CONTEXT_SIZE
from gan.metrics import IMMERKAER_MASK, IMMERKAER_SCALE
from gan.resampling import PAD, phase_taps

SCALES: tuple[int, ...] = (1, 2, 4)
UPSAMPLERS: tuple[str, ...] = ("pixelshuffle", "transposed", "resize")
CONDITIONINGS: tuple[str, ...] = ("alpha", "film", "none", "gated")
#: Hidden width of the ``"gated"`` α map (context embedding size per block).
GATE_WIDTH = 8
TRUNKS: tuple[str, ...] = ("lowres", "unshuffle")
TAILS: tuple[str, ...] = ("conv", "direct")
NOISE_INPUTS: tuple[str, ...] = ("none", "map")
RESIDUAL_FILTERS: tuple[str, ...] = ("none", "nyquist")
#: Taps of the fixed ``residual_filter="nyquist"`` (separable, sum 1): response (10 + 8·cos 2πf − 2·cos 4πf) / 16,
#: 1 at DC, 0.75 at f = ¼, 0.05 at f = 0.45 and 0 at Nyquist (cycles per output pixel).
NYQUIST_TAPS: tuple[float, ...] = (-1 / 16, 4 / 16, 10 / 16, 4 / 16, -1 / 16)
#: Space-to-depth factor of ``trunk="unshuffle"`` (input H and W must be multiples of it).
UNSHUFFLE = 2


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class ResidualAttentionBlock(nn.Module):
    """``Y = X + A ⊙ (W ∗ X)`` with ``A = σ(gate ∗ X)``; ``body`` is ``W``, ``gate`` the gate conv."""

    def __init__(self, channels: int, kernel_size: int = 3, gate_kernel: int | None = None) -> None:
        super().__init__()
        gate_kernel = kernel_size if gate_kernel is None else gate_kernel
        self.body = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Conv2d(channels, channels, gate_kernel, padding=gate_kernel // 2)

    def attention(self, x: Tensor) -> Tensor:
        """The gate ``A = σ(Conv(X))``, in (0, 1), shaped like ``x``."""
        return torch.sigmoid(self.gate(x))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attention(x) * self.body(x)


class MultiScaleBlock(nn.Module):
    """``Σ_k λ_k · LeakyReLU(Conv3×3_{dilation d_k}(X))``, ``λ = softmax(fusion_logits)`` over the branches.

    Dilations ``(1, 2, 3)`` give receptive fields 3, 5 and 7 at the cost of 3×3 convolutions.
    """

    def __init__(self, channels: int, dilations: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__()
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=d, dilation=d), _act()) for d in self.dilations
        )
        #: Learned fusion logits; the weights actually applied are :attr:`weights` (their softmax).
        self.fusion_logits = nn.Parameter(torch.zeros(len(self.dilations)))

    @property
    def weights(self) -> Tensor:
        """λ_k = softmax(fusion_logits)_k (non-negative, sum to 1)."""
        return torch.softmax(self.fusion_logits, dim=0)

    def forward(self, x: Tensor) -> Tensor:
        # λ_k·LeakyReLU(W_k∗X + b_k) = LeakyReLU((λ_k·W_k)∗X + λ_k·b_k) since λ_k > 0 (LeakyReLU is positively
        # homogeneous): scaling the 3×3 weights instead of the feature map leaves the exported graph a plain
        # conv → activation → sum, which ONNX Runtime keeps in its blocked layout (no Mul, no reorders).
        out: Tensor | None = None
        for lam, branch in zip(self.weights, self.branches, strict=True):
            conv, act = branch
            y = act(F.conv2d(x, conv.weight * lam, conv.bias * lam, padding=conv.padding, dilation=conv.dilation))
            out = y if out is None else out + y
        assert out is not None
        return out


class AdaptiveModule(nn.Module):
    """``Y = X + α · F(X)`` (``"alpha"``), ``X + γ ⊙ F(X) + β`` (``"film"``), ``X + F(X)`` (``"none"``) or
    ``X + α(X, e) ⊙ F(X)`` with a per-pixel ``α(X, e) = 2·σ(Conv1×1(SiLU(Conv3×3(X) + e)))`` (``"gated"``).

    ``F`` is a :class:`MultiScaleBlock` followed by a 1×1 projection. ``modulation`` comes from
    :class:`ContextMLP`: N×1 (α ≥ 0) for ``"alpha"``, N×2C (Δγ, β; γ = 1 + Δγ) for ``"film"``, N×
    :data:`GATE_WIDTH` (the context embedding ``e``) for ``"gated"``, ignored (may be None) for ``"none"``.
    """

    def __init__(self, channels: int, conditioning: str = "alpha") -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        self.channels = channels
        self.conditioning = conditioning
        self.multiscale = MultiScaleBlock(channels)
        self.project = nn.Conv2d(channels, channels, 1)
        if conditioning == "gated":
            self.gate_features = nn.Conv2d(channels, GATE_WIDTH, 3, padding=1)
            self.gate_out = nn.Conv2d(GATE_WIDTH, 1, 1)
            with torch.no_grad():  # α = 1 everywhere at initialisation, as "alpha" with a zero logit
                self.gate_out.weight.zero_()
                self.gate_out.bias.zero_()

    def residual(self, x: Tensor) -> Tensor:
        """``F(X)``."""
        return self.project(self.multiscale(x))

    def forward(self, x: Tensor, modulation: Tensor | None = None) -> Tensor:
        f = self.residual(x)
        if self.conditioning == "none":
            return x + f
        if modulation is None:
            raise ValueError(f"conditioning {self.conditioning!r} needs a modulation tensor")
        if self.conditioning == "alpha":
            return x + modulation.reshape(-1, 1, 1, 1) * f
        if self.conditioning == "gated":
            return x + self.alpha_map(x, modulation) * f
        gamma = 1.0 + modulation[:, : self.channels, None, None]
        beta = modulation[:, self.channels :, None, None]
        return x + gamma * f + beta


    def alpha_map(self, x: Tensor, embedding: Tensor) -> Tensor:
        """``"gated"``: the per-pixel α (N×1×H×W, in (0, 2)) of features ``x`` under context embedding N×G."""
        hidden = F.silu(self.gate_features(x) + embedding[:, :, None, None])
        return 2.0 * torch.sigmoid(self.gate_out(hidden))


class ContextMLP(nn.Module):
    """Context vector (N×``context_size``) → per-block modulation: ``Linear → SiLU → Linear``.

    ``"alpha"``: N×``n_blocks`` values ``α = 2·σ(logit)`` ∈ (0, 2) (1 when the logit is 0).
    ``"film"``: N×``n_blocks``×2C raw (Δγ, β) pairs. ``"gated"``: N×``n_blocks``×:data:`GATE_WIDTH` embeddings.
    """

    def __init__(self, context_size: int, n_blocks: int, channels: int, conditioning: str, hidden: int = 64) -> None:
        super().__init__()
        if conditioning not in ("alpha", "film", "gated"):
            raise ValueError(f"ContextMLP serves 'alpha', 'film' or 'gated' conditioning, got {conditioning!r}")
        self.conditioning = conditioning
        self.n_blocks = n_blocks
        self.per_block = {"alpha": 1, "film": 2 * channels, "gated": GATE_WIDTH}[conditioning]
        self.hidden = nn.Linear(context_size, hidden)
        self.out = nn.Linear(hidden, n_blocks * self.per_block)

    def forward(self, context: Tensor) -> Tensor:
        raw = self.out(F.silu(self.hidden(context)))
        if self.conditioning == "alpha":
            return 2.0 * torch.sigmoid(raw)
        return raw.reshape(-1, self.n_blocks, self.per_block)


class EnhancerBlock(nn.Module):
    """One trunk block: residual attention, then the context-adaptive multi-scale module."""

    def __init__(self, channels: int, conditioning: str, gate_kernel: int = 3) -> None:
        super().__init__()
        self.attention = ResidualAttentionBlock(channels, gate_kernel=gate_kernel)
        self.adaptive = AdaptiveModule(channels, conditioning)

    def forward(self, x: Tensor, modulation: Tensor | None) -> Tensor:
        return self.adaptive(self.attention(x), modulation)


def icnr_(conv: nn.Conv2d, upscale: int = 2) -> None:
    """ICNR initialisation (Aitken et al. 2017, "Checkerboard artifact free sub-pixel convolution") in place:
    every group of ``upscale²`` output channels that PixelShuffle interleaves into one output channel starts with
    the same kernel, so the sub-pixel conv starts as a resize (nearest upsampling) followed by a convolution —
    no checkerboard at initialisation, whatever the training later learns."""
    phases = upscale**2
    with torch.no_grad():
        base = torch.empty(conv.out_channels // phases, *conv.weight.shape[1:])
        nn.init.kaiming_normal_(base, a=0.2, nonlinearity="leaky_relu")
        conv.weight.copy_(base.repeat_interleave(phases, dim=0))
        if conv.bias is not None:
            conv.bias.copy_(conv.bias[::phases].repeat_interleave(phases))


def _upsampler(
    kind: str, channels: int, scale: int, transposed_kernel: int, out_channels: int | None = None
) -> nn.Sequential:
    """One ×2 stage per octave of ``scale`` (empty for scale 1).

    With ``out_channels`` the LAST stage maps straight to that many channels at the output resolution, with no
    activation (the ``tail="direct"`` layout: the stage is the output layer).
    """
    octaves = {1: 0, 2: 1, 4: 2}[scale]
    stages: list[nn.Module] = []
    for i in range(octaves):
        last = out_channels is not None and i == octaves - 1
        width = out_channels if last else channels
        if kind == "pixelshuffle":
            conv = nn.Conv2d(channels, 4 * width, 3, padding=1)
            icnr_(conv)
            stages += [conv, nn.PixelShuffle(2)]
        elif kind == "resize":
            # Fixed bicubic ×2 of the features, then a 3×3 conv at the new resolution (resize-convolution): every
            # output pixel gets the same filter, and an interpolator whose phases each sum to 1 passes nothing at
            # Nyquist, so no sub-pixel phase can differ from another (no checkerboard by construction).
            stages += [BicubicUpsample(channels, 2), nn.Conv2d(channels, width, 3, padding=1)]
        else:
            # Output (H−1)·2 − 2p + k = 2H with p = (k − 2)/2; k divisible by the stride avoids checkerboards.
            stages.append(
                nn.ConvTranspose2d(channels, width, transposed_kernel, stride=2, padding=(transposed_kernel - 2) // 2)
            )
        if not last:
            stages.append(_act())
    return nn.Sequential(*stages)


class BicubicUpsample(nn.Module):
    """×``scale`` bicubic upsampling as a fixed depthwise 5×5 conv (one output channel per phase, the
    :func:`gan.resampling.phase_taps`) + PixelShuffle.

    The same values as ``F.interpolate(mode="bicubic", align_corners=False)`` (``a = −0.75``, borders
    edge-replicated like PyTorch's clamped indices; equal to float rounding), but exported to ONNX as Pad + Conv
    + DepthToSpace instead of ``Resize``, whose cubic mode ONNX Runtime runs slowly (it was 23 % of the ×2
    enhancer's CPU time at 256² → 512²). The weights are a non-persistent buffer: not learned, not in the
    state dict.
    """

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.channels = channels
        self.scale = scale
        taps = torch.from_numpy(phase_taps(scale).copy())
        side = taps.shape[1]
        kernel = torch.einsum("yi,xj->yxij", taps, taps).reshape(scale * scale, 1, side, side)  # phase ry·scale + rx
        self.register_buffer("weight", kernel.repeat(channels, 1, 1, 1).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (PAD, PAD, PAD, PAD), mode="replicate")
        return F.pixel_shuffle(F.conv2d(x, self.weight.to(x.dtype), groups=self.channels), self.scale)


class NyquistFilter(nn.Module):
    """Fixed separable low-pass with zero response at Nyquist (:data:`NYQUIST_TAPS`), edges replicated, per channel.

    A non-persistent buffer: not learned, not in the state dict."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        taps = torch.tensor(NYQUIST_TAPS)
        self.register_buffer("weight", torch.outer(taps, taps).expand(channels, 1, -1, -1).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        pad = len(NYQUIST_TAPS) // 2
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        return F.conv2d(x, self.weight.to(x.dtype), groups=self.channels)


class NoiseLevelMap(nn.Module):
    """Image → image plus Immerkær noise-level channels: N×C×H×W → N×3C×H×W ``[x, local, global]``.

    ``r = √(π/2)/6 · |x ∗ M|`` per channel with Immerkær's mask ``M`` (:data:`gan.metrics.IMMERKAER_MASK`; the
    mean of ``r`` over a flat region is the Gaussian noise σ, as in :func:`gan.metrics.noise_sigma`), edges
    replicated; ``local`` = mean of ``r`` over a ``window``×``window`` neighbourhood (inside the image),
    ``global`` = mean of ``r`` over the image, broadcast.
    Both are multiplied by ``gain`` (σ of a few % of the range → values of order 1). Fixed: no parameters.
    """

    def __init__(self, channels: int, window: int = 7, gain: float = 50.0) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd number, got {window}")
        self.channels = channels
        self.window = window
        kernel = torch.tensor(IMMERKAER_MASK) * (IMMERKAER_SCALE * gain)
        self.register_buffer("weight", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        r = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.weight.to(x.dtype), groups=self.channels).abs()
        local = F.avg_pool2d(r, self.window, stride=1, padding=self.window // 2, count_include_pad=False)
        return torch.cat([x, local, r.mean(dim=(2, 3), keepdim=True).expand_as(r)], dim=1)


class ContextEnhancer(nn.Module):
    """Super-resolution + denoising generator conditioned on the sensor context.

    Input: ``x`` float N×C×H×W in [0, 1] — the caller windows / normalises 12/16-bit, HU or 8-bit data first
    (and maps back afterwards); ``context`` N×``context_size`` (:data:`core.context.CONTEXT_SIZE`) or
    None, which means zeros ("no context": every vital missing — what the blind baseline gets).
    Output: N×C×(scale·H)×(scale·W) = bicubic(x) + learned residual, not clamped unless ``clamp=True``.

    Args:
        in_channels: 1 (grey-level, native) or 3 (RGB fundus); the output has the same channels.
        scale: 1 (denoise / deblur only), 2 or 4.
        channels: trunk width (features at the input resolution for ``trunk="lowres"``, at half of it for
            ``"unshuffle"``).
        n_blocks: number of :class:`EnhancerBlock` s (attention + adaptive multi-scale).
        upsampler: ``"pixelshuffle"`` (sub-pixel conv) or ``"transposed"`` (the paper's transposed conv).
        conditioning: ``"alpha"`` (one α per sample and block), ``"film"`` (per-channel γ, β), ``"gated"`` (a
            per-pixel α from the block's features and the context) or ``"none"``.
        context_size: length of the context vector.
        context_hidden: hidden width of the context MLP.
        transposed_kernel: kernel of the transposed conv (stride 2), must be even (divisible by the stride).
        clamp: clamp the output to [0, 1] (off by default: keeps gradients at the range ends).
        gate_kernel: kernel of the attention gate conv (3, or 1: a per-pixel channel mix, 9× cheaper).
        tail: ``"conv"`` (lowres trunk: the upsampling stages keep ``channels`` and a 3×3 conv at the output
            resolution makes the image) or ``"direct"`` (the last upsampling stage outputs the image channels
            itself: no convolution at the output resolution; for scale 2 and transposed upsampling that is one
            ``ConvTranspose2d(channels, in_channels, 4, stride 2)``). Lowres trunk only.
        trunk: ``"lowres"`` (head conv at the input resolution, ×2 upsampling stages, then ``tail`` at the output
            resolution) or ``"unshuffle"`` (PixelUnshuffle(2) → head → blocks at half the input resolution →
            ``tail`` conv to ``(2·scale)²·C`` → PixelShuffle(2·scale); needs even H, W; ``upsampler`` must be
            ``"pixelshuffle"``). Only ``head``, ``upsample`` and ``tail`` differ; the blocks are the same.
        noise_input: ``"none"`` or ``"map"`` (:class:`NoiseLevelMap` channels enter the head with the image).
        residual_filter: ``"none"`` or ``"nyquist"`` (:class:`NyquistFilter` on the residual; fixed, not in the
            state dict, so adding it to trained weights is a configuration change).
    """

    def __init__(
        self,
        in_channels: int = 1,
        scale: int = 2,
        channels: int = 32,
        n_blocks: int = 4,
        upsampler: str = "pixelshuffle",
        conditioning: str = "alpha",
        context_size: int = CONTEXT_SIZE,
        context_hidden: int = 64,
        transposed_kernel: int = 4,
        clamp: bool = False,
        trunk: Literal["lowres", "unshuffle"] = "lowres",
        gate_kernel: int = 3,
        tail: Literal["conv", "direct"] = "conv",
        noise_input: Literal["none", "map"] = "none",
        residual_filter: Literal["none", "nyquist"] = "none",
    ) -> None:
        super().__init__()
        if trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {TRUNKS}, got {trunk!r}")
        if trunk == "unshuffle" and upsampler != "pixelshuffle":
            raise ValueError(
                f"trunk='unshuffle' ends in a PixelShuffle; upsampler must be 'pixelshuffle', got {upsampler!r}"
            )
        if tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
        if tail == "direct" and (trunk != "lowres" or scale == 1):
            raise ValueError(
                "tail='direct' needs trunk='lowres' and scale 2 or 4 (its last upsampling stage is the output)"
            )
        if noise_input not in NOISE_INPUTS:
            raise ValueError(f"noise_input must be one of {NOISE_INPUTS}, got {noise_input!r}")
        if residual_filter not in RESIDUAL_FILTERS:
            raise ValueError(f"residual_filter must be one of {RESIDUAL_FILTERS}, got {residual_filter!r}")
        if gate_kernel not in (1, 3):
            raise ValueError(f"gate_kernel must be 1 or 3, got {gate_kernel!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        if transposed_kernel < 2 or transposed_kernel % 2:
            raise ValueError(f"transposed_kernel must be even (divisible by stride 2), got {transposed_kernel}")
        if in_channels < 1 or channels < 1 or n_blocks < 1:
            raise ValueError("in_channels, channels and n_blocks must be positive")
        self.in_channels = in_channels
        self.scale = scale
        self.channels = channels
        self.n_blocks = n_blocks
        self.upsampler_kind = upsampler
        self.conditioning = conditioning
        self.context_size = context_size
        self.clamp = clamp
        self.trunk = trunk
        self.tail_kind = tail
        self.noise_input = noise_input
        self.residual_filter = residual_filter

        # Only the ends differ between the trunks: lowres = Identity | head | blocks | upsample stages | tail;
        # unshuffle = PixelUnshuffle(2) | head | blocks | (no stages) | tail | PixelShuffle(2·scale).
        unshuffle = trunk == "unshuffle"
        shuffle = UNSHUFFLE * scale
        self.noise_map: nn.Module = NoiseLevelMap(in_channels) if noise_input == "map" else nn.Identity()
        head_in = in_channels * (3 if noise_input == "map" else 1) * (UNSHUFFLE**2 if unshuffle else 1)
        self.unshuffle: nn.Module = nn.PixelUnshuffle(UNSHUFFLE) if unshuffle else nn.Identity()
        self.head = nn.Conv2d(head_in, channels, 3, padding=1)
        self.blocks = nn.ModuleList(EnhancerBlock(channels, conditioning, gate_kernel) for _ in range(n_blocks))
        self.trunk_tail = nn.Conv2d(channels, channels, 3, padding=1)
        self.context_mlp = (
            ContextMLP(context_size, n_blocks, channels, conditioning, context_hidden)
            if conditioning != "none"
            else None
        )
        direct = tail == "direct"
        self.upsample = (
            nn.Sequential()
            if unshuffle
            else _upsampler(upsampler, channels, scale, transposed_kernel, in_channels if direct else None)
        )
        self.tail: nn.Module = (
            nn.Identity()
            if direct
            else nn.Conv2d(channels, in_channels * (shuffle**2 if unshuffle else 1), 3, padding=1)
        )
        self.shuffle: nn.Module = nn.PixelShuffle(shuffle) if unshuffle else nn.Identity()
        self.bicubic: nn.Module = BicubicUpsample(in_channels, scale) if scale > 1 else nn.Identity()
        self.smooth: nn.Module = NyquistFilter(in_channels) if residual_filter == "nyquist" else nn.Identity()
        with torch.no_grad():  # start close to the bicubic baseline
            self.output_layer.weight.mul_(0.1)
            self.output_layer.bias.zero_()

    @property
    def output_layer(self) -> nn.Conv2d | nn.ConvTranspose2d:
        """The residual path's last learned layer: ``tail``, or with ``tail="direct"`` the last upsampling conv."""
        if self.tail_kind == "conv":
            return self.tail
        return self.upsample[-2 if self.upsampler_kind == "pixelshuffle" else -1]  # type: ignore[return-value]

    @property
    def size_multiple(self) -> int:
        """Input H and W must be multiples of this (2 for ``trunk="unshuffle"``, else 1); pad to it if needed."""
        return UNSHUFFLE if self.trunk == "unshuffle" else 1

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless ``height`` and ``width`` are multiples of :attr:`size_multiple`.

        ``forward`` calls it in eager mode only (skipped under tracing, so the exported ONNX graph keeps free
        spatial axes and contains no such check): callers of an exported graph call it themselves before
        running it, or pad the input to :attr:`size_multiple` and crop the output.
        """
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(
                f"trunk={self.trunk!r} needs input height and width divisible by {m}, got {height}×{width}; "
                f"pad the input (e.g. reflect) to a multiple of {m} and crop the output"
            )

    def _context(self, x: Tensor, context: Tensor | None) -> Tensor:
        if context is None:
            return x.new_zeros((x.shape[0], self.context_size))
        if context.dim() != 2 or context.shape[1] != self.context_size:
            raise ValueError(f"context must be N×{self.context_size}, got {tuple(context.shape)}")
        return context.to(dtype=x.dtype)

    def modulation(self, context: Tensor) -> Tensor | None:
        """The context MLP's output: N×n_blocks α (``"alpha"``), N×n_blocks×2C (``"film"``), N×n_blocks×G
        (``"gated"``), None (``"none"``)."""
        return None if self.context_mlp is None else self.context_mlp(context)

    def alphas(self, context: Tensor | None, x: Tensor | None = None) -> Tensor:
        """α per sample and block (N×n_blocks) for ``"alpha"`` conditioning; ``context=None`` means zeros."""
        if self.conditioning != "alpha":
            raise ValueError(f"alphas() needs conditioning='alpha', this model uses {self.conditioning!r}")
        ref = x if x is not None else torch.zeros(1 if context is None else context.shape[0], 1)
        out = self.modulation(self._context(ref, context))
        assert out is not None
        return out

    def base(self, x: Tensor) -> Tensor:
        """The global-residual base: bicubic upsampling of the input (the input itself for scale 1)."""
        return self.bicubic(x)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.trunk != "lowres" and not (torch.jit.is_tracing() or torch.jit.is_scripting()):
            self.check_input_size(int(x.shape[-2]), int(x.shape[-1]))
        mod = self.modulation(self._context(x, context))
        feats = self.head(self.unshuffle(self.noise_map(x)))
        h = feats
        for i, block in enumerate(self.blocks):
            h = block(h, None if mod is None else mod[:, i])
        h = self.trunk_tail(h) + feats
        out = self.base(x) + self.smooth(self.shuffle(self.tail(self.upsample(h))))
        if self.clamp:
            out = out.clamp(0.0, 1.0)
        return out


@dataclass(frozen=True)
class DiscriminatorOutput:
    """Logits of :class:`HybridDiscriminator`: ``combined = α·mean(patch) + β·global_``."""

    patch: Tensor  # N×1×h×w
    global_: Tensor  # N×1
    combined: Tensor  # N×1


class HybridDiscriminator(nn.Module):
    """PatchGAN (pix2pix 70×70 layout, no batch norm) plus a global branch on the same features.

    ``patch``: per-patch logits from a 4×4 conv on the last feature map. ``global_``: global average pool of
    that feature map → linear. ``combined = alpha·mean_hw(patch) + beta·global_`` (raw logits: use with a
    logits-based loss). Spectral norm on every conv / linear layer by default (stabilises the logit scale in
    place of batch norm). Patch map size: 64×64 → 6×6, 128×128 → 14×14 (with ``n_layers=3``).

    Args:
        in_channels: image channels (1 or 3).
        base_channels: width of the first conv (doubled per layer, capped at 8×).
        n_layers: stride-2 layers (receptive field 70 px for 3).
        alpha, beta: weights of the patch mean and of the global logit (0.5 / 0.5: the mean of two logits on
            the same scale — neither local texture nor global realism dominates by default).
        spectral_norm: wrap convs and the linear layer in spectral normalisation.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        n_layers: int = 3,
        alpha: float = 0.5,
        beta: float = 0.5,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        self.alpha = float(alpha)
        self.beta = float(beta)

        def sn(m: nn.Module) -> nn.Module:
            return nn.utils.parametrizations.spectral_norm(m) if spectral_norm else m

        layers: list[nn.Module] = [sn(nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1)), _act()]
        width = base_channels
        for i in range(1, n_layers + 1):
            nxt = base_channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [sn(nn.Conv2d(width, nxt, 4, stride=stride, padding=1)), _act()]
            width = nxt
        self.features = nn.Sequential(*layers)
        self.patch_head = sn(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.global_head = sn(nn.Linear(width, 1))

    def forward(self, x: Tensor) -> DiscriminatorOutput:
        feats = self.features(x)
        patch = self.patch_head(feats)
        global_ = self.global_head(feats.mean(dim=(2, 3)))
        combined = self.alpha * patch.mean(dim=(2, 3)) + self.beta * global_
        return DiscriminatorOutput(patch=patch, global_=global_, combined=combined)
