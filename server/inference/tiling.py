"""Large images through a local model in fixed-size overlapping tiles, with the same result as one whole pass.

A convolutional enhancer's output pixel depends only on input pixels within its receptive radius ``r``. Cut the
image into ``tile × tile`` windows that overlap by ``2·margin`` (``margin > r``), keep from each window only the
part at least ``margin`` pixels from its cut edges, and the stitched output equals the whole-image output: every
kept pixel saw all of its neighbourhood, and windows are clamped inside the image, so where a window edge lies on
the image edge the model sees the same border as in a whole pass. Memory per model call is that of one tile,
whatever the image size (a 4000² upload no longer needs ~13 GB of activations), and every call has one shape.

:func:`receptive_radius` measures ``r`` of a torch module with autograd; a model with a global operation (e.g. a
mean over the whole image) has no finite radius and cannot be tiled (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Span", "Tile", "paste", "receptive_radius", "tiles"]

PROBE_SIZE = 96  # input side of the receptive-field probe (even, for trunks that need it): radii up to 47


@dataclass(frozen=True, slots=True)
class Span:
    """A window along one axis: input ``[start, start + size)``, of which it keeps ``[keep_from, keep_to)``."""

    start: int
    size: int
    keep_from: int
    keep_to: int


@dataclass(frozen=True, slots=True)
class Tile:
    """One window of an image: its rows and its columns."""

    rows: Span
    cols: Span

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The window's input pixels (a view) of an H×W ``image``."""
        r, c = self.rows, self.cols
        return image[r.start : r.start + r.size, c.start : c.start + c.size]


def _spans(length: int, tile: int, margin: int) -> list[Span]:
    """Windows along one axis; what they keep is contiguous and covers ``[0, length)`` exactly once."""
    if length <= tile:
        return [Span(0, length, 0, length)]
    stride = tile - 2 * margin
    starts = [*range(0, length - tile, stride), length - tile]
    spans = []
    begin = 0
    for i, start in enumerate(starts):
        end = length if i == len(starts) - 1 else start + tile - margin
        spans.append(Span(start, tile, begin, end))
        begin = end
    return spans


def tiles(height: int, width: int, tile: int, margin: int) -> list[Tile]:
    """The windows covering a ``height × width`` image: one (the whole image) when it fits in a tile."""
    if tile <= 2 * margin:
        raise ValueError(f"tile {tile} must exceed twice the margin {margin}")
    return [Tile(r, c) for r in _spans(height, tile, margin) for c in _spans(width, tile, margin)]


def paste(out: np.ndarray, part: np.ndarray, window: Tile, scale: int) -> None:
    """Write the kept part of one window's output (``scale``× the window) into the whole output ``out``."""
    r, c = window.rows, window.cols
    out[scale * r.keep_from : scale * r.keep_to, scale * c.keep_from : scale * c.keep_to] = part[
        scale * (r.keep_from - r.start) : scale * (r.keep_to - r.start),
        scale * (c.keep_from - c.start) : scale * (c.keep_to - c.start),
    ]


def receptive_radius(module: nn.Module, channels: int, context_size: int, scale: int) -> int | None:
    """Input pixels an output pixel of ``module(x, context)`` depends on, at most, from its own position.

    Measured: the gradient of the centre output pixel with respect to a random input. ``None`` when the
    dependence reaches the probe's edge (a global operation, or a radius over :data:`PROBE_SIZE` // 2).
    """
    import torch

    x = torch.rand(1, channels, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    context = torch.zeros(1, context_size) if context_size else None
    centre = PROBE_SIZE // 2
    with torch.enable_grad():
        out = module(x, context) if context is not None else module(x)
        # Every output pixel (all scale² sub-pixel phases) that lies on the centre input pixel.
        pixel = out[0, :, scale * centre : scale * (centre + 1), scale * centre : scale * (centre + 1)].sum()
        (grad,) = torch.autograd.grad(pixel, x)
    rows, cols = np.nonzero(grad[0].abs().sum(dim=0).numpy())
    if rows.size == 0:
        return 0
    if min(rows.min(), cols.min()) == 0 or max(rows.max(), cols.max()) == PROBE_SIZE - 1:
        return None
    return int(max(np.abs(rows - centre).max(), np.abs(cols - centre).max()))
