"""Small CNN classifier with Squeeze-and-Excitation blocks (Hu et al., 2018).

Used for quality triage (diagnostic vs degraded, and by what) and lesion vs no lesion. The network ends
with global average pooling, so any input of at least 32×32 pixels (any aspect ratio) is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["SEBlock", "SEClassifier", "SqueezeExcitation"]


class SqueezeExcitation(nn.Module):
    """Channel attention: ``x · σ(W₂ · ReLU(W₁ · GAP(x) + b₁) + b₂)`` broadcast over H×W.

    ``W₁`` maps C → ``max(1, C // reduction)`` hidden units, ``W₂`` maps back to C (both with bias).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be >= 1, got {channels}, {reduction}")
        self.hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, self.hidden)
        self.fc2 = nn.Linear(self.hidden, channels)

    def scale(self, x: Tensor) -> Tensor:
        """Per-channel scale in (0, 1), shape N×C."""
        squeezed = x.mean(dim=(2, 3))
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale(x)[:, :, None, None]


class SEBlock(nn.Module):
    """Two 3×3 conv–BN–ReLU layers followed by Squeeze-and-Excitation."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.se = SqueezeExcitation(out_channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return self.se(self.body(x))


class SEClassifier(nn.Module):
    """SE-CNN: ``len(widths)`` SE blocks (2×2 max-pool between blocks) → global average pool → dropout → linear.

    Input N×``in_channels``×H×W with H, W >= 32; returns logits N×``num_classes``. Defaults give ≈ 0.30 M
    parameters.
    """

    MIN_SIZE = 32

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: Sequence[int] = (16, 32, 64, 128),
        reduction: int = 16,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one block")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers.append(SEBlock(channels, width, reduction))
            channels = width
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self.in_channels = in_channels
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected N×{self.in_channels}×H×W input, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.MIN_SIZE:
            raise ValueError(f"spatial size must be >= {self.MIN_SIZE}, got {tuple(x.shape[-2:])}")
        pooled = self.features(x).mean(dim=(2, 3))
        return self.head(self.dropout(pooled))
