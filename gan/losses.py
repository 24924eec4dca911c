"""Losses for the context-conditioned enhancer, chosen by name (:data:`LOSSES`) and combined by :class:`EnhancerLoss`.

Every term is an ``nn.Module`` called as ``term(sr, hr)`` on N×C×H×W tensors in [0, 1] (``sr`` unclamped):

* ``l1`` — mean absolute error;
* ``ssim`` — ``1 − SSIM``, Gaussian window σ=1.5 (11 taps), K1=0.01, K2=0.03, data range 1: the convention of
  :func:`gan.metrics.ssim` (population statistics, mean over the valid region only), differentiable;
* ``perceptual`` — L1 between feature maps of a frozen feature network (any ``nn.Module`` returning a tensor or a
  list of tensors). :class:`FeatureNetwork` offers the SE-classifier's convolutional trunk (random or registry
  weights) or a VGG-19 built from a **user-supplied** torchvision-layout state dict (nothing is downloaded);
* ``adversarial`` — generator side of a non-saturating BCE-with-logits (or hinge) GAN loss on the
  :class:`~gan.models.enhancer.HybridDiscriminator` ``combined`` logit; :func:`discriminator_loss` is the
  discriminator side.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ADVERSARIAL_MODES",
    "LOSSES",
    "VGG19_LAYERS",
    "AdversarialLoss",
    "EnhancerLoss",
    "FeatureNetwork",
    "L1Loss",
    "MSELoss",
    "PerceptualLoss",
    "SSIMLoss",
    "discriminator_loss",
    "gaussian_window",
    "generator_adversarial_loss",
    "ssim",
]

ADVERSARIAL_MODES: tuple[str, ...] = ("bce", "hinge")


# --------------------------------------------------------------------------------------------------- pixel losses


class L1Loss(nn.Module):
    """Mean absolute error ``mean(|sr − hr|)``."""

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return (sr - hr).abs().mean()


class MSELoss(nn.Module):
    """Mean squared error ``mean((sr − hr)²)``: the term PSNR measures (L1 aims at the median instead)."""

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return (sr - hr).square().mean()


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> Tensor:
    """1-D normalised Gaussian taps as :func:`scipy.ndimage.gaussian_filter` uses them (radius ``int(t·σ + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: Tensor, taps: Tensor) -> Tensor:
    """Separable Gaussian filter of N×C×H×W without padding (output shrinks by the window radius on each side)."""
    c = x.shape[1]
    k = taps.to(dtype=x.dtype, device=x.device)
    row = k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1)
    col = k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1)
    return F.conv2d(F.conv2d(x, row, groups=c), col, groups=c)


def ssim(
    sr: Tensor, hr: Tensor, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
) -> Tensor:
    """Mean SSIM per sample (N values), averaged over channels and the valid region.

    Same numbers as :func:`gan.metrics.ssim`: that function filters with reflect borders and then crops the
    window radius, so only fully-inside windows count, which is exactly a valid (unpadded) convolution here.
    """
    if sr.shape != hr.shape or sr.dim() != 4:
        raise ValueError(f"ssim needs two N×C×H×W tensors of one shape, got {tuple(sr.shape)}, {tuple(hr.shape)}")
    taps = gaussian_window(sigma)
    if min(sr.shape[-2:]) < taps.numel():
        raise ValueError(f"image too small for SSIM: {tuple(sr.shape[-2:])}, window is {taps.numel()} px")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ux, uy = _filter_valid(sr, taps), _filter_valid(hr, taps)
    vx = _filter_valid(sr * sr, taps) - ux * ux
    vy = _filter_valid(hr * hr, taps) - uy * uy
    vxy = _filter_valid(sr * hr, taps) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


class SSIMLoss(nn.Module):
    """``1 − mean SSIM`` (data range 1, σ=1.5), differentiable."""

    def __init__(self, data_range: float = 1.0, sigma: float = 1.5) -> None:
        super().__init__()
        self.data_range = data_range
        self.sigma = sigma

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return 1.0 - ssim(sr, hr, self.data_range, self.sigma).mean()


# ------------------------------------------------------------------------------------------------ feature networks

#: VGG-19 ``features`` layout (torchvision's ``cfg["E"]``): conv widths, "M" = 2×2 max-pool.
VGG19_LAYERS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg19_features() -> nn.Sequential:
    """VGG-19 ``features`` with torchvision's module indices (so ``features.<i>.weight`` keys load as they are)."""
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG19_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=False)]
            channels = v
    return nn.Sequential(*layers)


class FeatureNetwork(nn.Module):
    """A frozen feature extractor: runs ``layers`` (an ``nn.Sequential``) and returns the outputs at ``taps``.

    Build it with :meth:`se_classifier` (the SE-CNN's conv trunk, ``gan.models.build("se-classifier")``) or
    :meth:`vgg19` (a user-supplied VGG-19 state dict). Always in eval mode with ``requires_grad=False``.
    """

    def __init__(
        self,
        layers: nn.Sequential,
        taps: Sequence[int],
        kind: str,
        in_channels: int = 1,
        rgb: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not taps or max(taps) >= len(layers) or min(taps) < 0:
            raise ValueError(f"taps must index layers 0..{len(layers) - 1}, got {list(taps)}")
        self.layers = layers[: max(taps) + 1]
        self.taps = tuple(sorted(taps))
        self.kind = kind
        self.in_channels = in_channels
        self.rgb = rgb
        self.register_buffer("mean", torch.tensor(mean or [0.0] * (3 if rgb else in_channels)).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0] * (3 if rgb else in_channels)).reshape(1, -1, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureNetwork:
        """Stays in eval mode (frozen batch-norm statistics) whatever the caller asks."""
        return super().train(False)

    @classmethod
    def se_classifier(
        cls,
        model: nn.Module | None = None,
        *,
        registry_root: str | os.PathLike[str] | None = None,
        name: str | None = None,
        in_channels: int = 1,
    ) -> FeatureNetwork:
        """The SE-classifier trunk (features after each SE block).

        ``model``: an ``SEClassifier`` instance; else ``name`` loads one from the weights registry; else a
        freshly initialised one (random, fixed by the torch seed: a random-feature perceptual loss).
        """
        from gan.models import build

        if model is None and name is not None:
            from gan.registry import load_model

            model, _card = load_model(registry_root, name)
        if model is None:
            model = build("se-classifier", in_channels=in_channels)
        trunk = model.features
        if not isinstance(trunk, nn.Sequential):
            raise TypeError("the SE classifier's .features must be an nn.Sequential")
        taps = [i for i, m in enumerate(trunk) if type(m).__name__ == "SEBlock"]
        kind = f"se-classifier:{name}" if name else "se-classifier"
        return cls(trunk, taps, kind, in_channels=getattr(model, "in_channels", in_channels))

    @classmethod
    def from_spec(cls, spec: str) -> FeatureNetwork:
        """The network a command line names: ``se-classifier`` (random trunk), ``se-classifier:<name>`` (registry,
        default root), ``se-classifier:<root>/<name>`` (registry under ``root``), else a VGG-19 state-dict file."""
        if spec == "se-classifier":
            return cls.se_classifier()
        if spec.startswith("se-classifier:"):
            where = Path(spec.split(":", 1)[1])
            root = where.parent if len(where.parts) > 1 else None
            return cls.se_classifier(registry_root=root, name=where.name)
        return cls.vgg19(spec)

    @classmethod
    def vgg19(cls, weights: str | os.PathLike[str], taps: Sequence[int] = (34,)) -> FeatureNetwork:
        """VGG-19 features from a user-supplied torchvision-layout state dict (``.pth`` or ``.safetensors``).

        Keys ``features.<i>.weight/bias`` (or ``<i>.weight/bias``) are used, classifier keys ignored. The default
        tap 34 is conv5_4 before its ReLU (ESRGAN's choice). Grey-level input is repeated to RGB and normalised
        with the ImageNet mean/std. Nothing is downloaded: there is no torchvision here.
        """
        path = Path(weights)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        features = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        layers = _vgg19_features()
        layers.load_state_dict(features, strict=True)
        return cls(layers, taps, "vgg19", in_channels=1, rgb=True, mean=_IMAGENET_MEAN, std=_IMAGENET_STD)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.rgb and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


# ------------------------------------------------------------------------------------------------ perceptual, GAN


class PerceptualLoss(nn.Module):
    """Mean over taps of ``L1(φ_k(sr), φ_k(hr))`` for a frozen feature network φ (tensor or list of tensors)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.network.requires_grad_(False)
        self.network.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The feature network stays in eval mode (frozen normalisation statistics)."""
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        fs, fh = self.network(sr), self.network(hr.detach())
        fs = [fs] if isinstance(fs, Tensor) else list(fs)
        fh = [fh] if isinstance(fh, Tensor) else list(fh)
        return torch.stack([(a - b.detach()).abs().mean() for a, b in zip(fs, fh, strict=True)]).mean()


def _combined(output: Any) -> Tensor:
    return output.combined if hasattr(output, "combined") else output


def generator_adversarial_loss(fake_logits: Any, mode: str = "bce") -> Tensor:
    """Generator side: non-saturating ``BCE(D(G(x)), 1)`` or hinge ``−mean D(G(x))`` on ``combined`` logits."""
    logits = _combined(fake_logits)
    if mode == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    if mode == "hinge":
        return -logits.mean()
    raise ValueError(f"adversarial mode must be one of {ADVERSARIAL_MODES}, got {mode!r}")


def discriminator_loss(real_logits: Any, fake_logits: Any, mode: str = "bce") -> Tensor:
    """Discriminator side: ``BCE(D(hr), 1) + BCE(D(sr), 0)`` or hinge ``relu(1 − D(hr)) + relu(1 + D(sr))``."""
    real, fake = _combined(real_logits), _combined(fake_logits)
    if mode == "bce":
        return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
            fake, torch.zeros_like(fake)
        )
    if mode == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    raise ValueError(f"adversarial mode must be one of {ADVERSARIAL_MODES}, got {mode!r}")


class AdversarialLoss(nn.Module):
    """Generator-side adversarial term for a discriminator returning ``DiscriminatorOutput`` (uses ``combined``).

    The discriminator is held by reference, not registered as a submodule (it is trained by its own optimiser).
    """

    def __init__(self, discriminator: nn.Module, mode: str = "bce") -> None:
        super().__init__()
        if mode not in ADVERSARIAL_MODES:
            raise ValueError(f"adversarial mode must be one of {ADVERSARIAL_MODES}, got {mode!r}")
        self._discriminator = [discriminator]
        self.mode = mode

    @property
    def discriminator(self) -> nn.Module:
        return self._discriminator[0]

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return generator_adversarial_loss(self.discriminator(sr), self.mode)


# ------------------------------------------------------------------------------------------------------- registry

#: Loss terms by name: ``factory(**options) -> nn.Module`` called as ``term(sr, hr)``. ``perceptual`` needs
#: ``network=``, ``adversarial`` needs ``discriminator=`` (and takes ``mode=``).
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "l1": L1Loss,
    "mse": MSELoss,
    "ssim": SSIMLoss,
    "perceptual": PerceptualLoss,
    "adversarial": AdversarialLoss,
}


class EnhancerLoss(nn.Module):
    """``Σ_k w_k · term_k(sr, hr)`` over the named terms of :data:`LOSSES` with a non-zero weight.

    ``options`` maps a term name to its factory's keyword arguments, e.g.
    ``EnhancerLoss({"l1": 1, "perceptual": 0.1}, {"perceptual": {"network": FeatureNetwork.se_classifier()}})``.
    ``forward`` returns ``(total, parts)`` where ``parts`` holds each unweighted term as a float.
    """

    def __init__(self, weights: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown loss term(s) {unknown}; known: {sorted(LOSSES)}")
        bad = {k: w for k, w in weights.items() if not math.isfinite(float(w)) or float(w) < 0}
        if bad:
            raise ValueError(f"loss weights must be finite and >= 0, got {bad}")
        options = dict(options or {})
        self.weights = {k: float(w) for k, w in weights.items() if float(w) != 0.0}
        if not self.weights:
            raise ValueError("at least one loss term needs a non-zero weight")
        self.terms = nn.ModuleDict({k: LOSSES[k](**dict(options.get(k, {}))) for k in self.weights})

    def forward(self, sr: Tensor, hr: Tensor) -> tuple[Tensor, dict[str, float]]:
        total = sr.new_zeros(())
        parts: dict[str, float] = {}
        for name, weight in self.weights.items():
            value = self.terms[name](sr, hr)
            parts[name] = float(value.detach())
            total = total + weight * value
        return total, parts
