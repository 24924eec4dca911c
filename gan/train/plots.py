"""Pictures a training run writes, as PNG files without an imaging library: loss curves and marked sample grids."""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from gan.models.hybrid import SyntheticBatch

__all__ = ["write_loss_curve", "write_png", "write_synthetic_grid"]


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an H×W×3 uint8 array as an 8-bit RGB PNG (zlib only, no imaging library)."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"write_png needs H×W×3 uint8, got {arr.shape}")
    h, w, _ = arr.shape

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    path = Path(path)
    path.write_bytes(png)
    return path


def write_loss_curve(
    path: str | Path,
    train: Sequence[float],
    val_steps: Sequence[int],
    val_loss: Sequence[float],
    size: tuple[int, int] = (400, 640),
) -> Path:
    """Loss curves as a PNG: training loss (blue, moving average over ~2 % of the steps), val loss (orange, dots).

    x: step 0 … last; y: linear from the smallest to the largest plotted value; grey lines at quarters of both.
    """
    from skimage.draw import disk, line

    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 40, w - 20, 20, h - 30
    steps = max(len(train), max(val_steps, default=1), 1)
    k = max(1, len(train) // 50)
    smooth = np.convolve(np.asarray(train, float), np.ones(k) / k, mode="valid") if len(train) >= k else np.array([])
    values = np.concatenate([smooth, np.asarray(val_loss, float)]) if len(smooth) + len(val_loss) else np.zeros(1)
    lo, hi = float(np.min(values)), float(np.max(values))
    hi = hi if hi > lo else lo + 1e-6

    def xy(step: float, value: float) -> tuple[int, int]:
        x = left + (right - left) * step / steps
        y = bottom - (bottom - top) * (value - lo) / (hi - lo)
        return round(float(np.clip(y, top, bottom))), round(x)

    for q in range(5):
        y = round(top + (bottom - top) * q / 4)
        x = round(left + (right - left) * q / 4)
        img[y, left : right + 1] = 220
        img[top : bottom + 1, x] = 220
    img[bottom, left : right + 1] = 0
    img[top : bottom + 1, left] = 0

    def polyline(points: list[tuple[int, int]], colour: tuple[int, int, int]) -> None:
        for (r0, c0), (r1, c1) in itertools.pairwise(points):
            rr, cc = line(r0, c0, r1, c1)
            img[rr, cc] = colour

    polyline([xy(i + k, v) for i, v in enumerate(smooth)], (31, 119, 180))
    val_points = [xy(s, v) for s, v in zip(val_steps, val_loss, strict=True)]
    polyline(val_points, (255, 127, 14))
    for r, c in val_points:
        rr, cc = disk((r, c), 3, shape=img.shape[:2])
        img[rr, cc] = (255, 127, 14)
    return write_png(path, img)


def write_synthetic_grid(path: str | Path, batch: SyntheticBatch, columns: int = 8) -> Path:
    """A PNG grid of ``batch`` with a red frame around every tile (visibly synthetic) and ``<path>.json``.

    The file name must contain ``synthetic``; the JSON records ``synthetic: true``, the generator chain and labels.
    """
    path = Path(path)
    if "synthetic" not in path.name:
        raise ValueError(f"a file of synthetic images must say so in its name, got {path.name!r}")
    tiles = ((batch.images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    n, _, h, w = tiles.shape
    rows = -(-n // columns)
    frame = 2
    grid = np.zeros((rows * (h + 2 * frame), columns * (w + 2 * frame), 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        top, left = r * (h + 2 * frame), c * (w + 2 * frame)
        grid[top : top + h + 2 * frame, left : left + w + 2 * frame] = (255, 0, 0)
        rgb = np.repeat(tile[:1], 3, axis=0) if tile.shape[0] == 1 else tile[:3]
        grid[top + frame : top + frame + h, left + frame : left + frame + w] = rgb.transpose(1, 2, 0)
    write_png(path, grid)
    labels = None if batch.labels is None else batch.labels.tolist()
    record = {"synthetic": True, "generator": batch.generator, "labels": labels, "count": n, "tile": [h, w]}
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(record, indent=1))
    return path
