"""Tiled enhancement (server/inference/tiling.py): the windows, the measured receptive radius, and the engine's
tiled result against one whole pass on a real image, with the shipped enhancer and a larger random-init one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.settings import DEFAULT_ENHANCER as ENHANCER
from core.settings import InferenceSettings
from gan.models import build
from gan.registry import load_model
from server.inference import ImageTooLarge, InferenceEngine
from server.inference.tiling import receptive_radius, tiles


@pytest.mark.parametrize("height", [1, 63, 64, 65, 200, 513, 1000])
@pytest.mark.parametrize("tile,margin", [(64, 10), (128, 31), (512, 11)])
def test_windows_keep_every_pixel_once_and_away_from_cut_edges(height: int, tile: int, margin: int) -> None:
    width = 3 * height // 2 + 7
    windows = tiles(height, width, tile, margin)
    kept = np.zeros((height, width), np.int32)
    for w in windows:
        for span, length in ((w.rows, height), (w.cols, width)):
            assert span.start >= 0 and span.start + span.size <= length  # inside the image
            assert span.size == min(tile, length)  # every window has the tile's shape (or the whole axis)
            assert span.start <= span.keep_from < span.keep_to <= span.start + span.size
            # a kept pixel is at least `margin` from any edge of its window that is not the image's edge
            assert span.keep_from == 0 or span.keep_from - span.start >= margin
            assert span.keep_to == length or span.start + span.size - span.keep_to >= margin
        kept[w.rows.keep_from : w.rows.keep_to, w.cols.keep_from : w.cols.keep_to] += 1
    assert (kept == 1).all()


def test_windows_need_a_tile_larger_than_both_margins() -> None:
    with pytest.raises(ValueError, match="twice the margin"):
        tiles(100, 100, 20, 10)


class Stack(nn.Module):
    """Convs of known reach: 3×3 dilation 2 (2), then 5×5 (2), then ×2 nearest upsampling: radius 4."""

    def __init__(self, global_mean: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=2, dilation=2)
        self.b = nn.Conv2d(4, 1, 5, padding=2)
        self.global_mean = global_mean

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        y = self.b(torch.tanh(self.a(x)))
        if self.global_mean:
            y = y + x.mean(dim=(2, 3), keepdim=True)
        return nn.functional.interpolate(y, scale_factor=2, mode="nearest")


def test_receptive_radius_is_measured_and_global_operations_have_none() -> None:
    assert receptive_radius(Stack(), 1, 0, 2) == 4
    assert receptive_radius(Stack(global_mean=True), 1, 0, 2) is None
    noise_map = build("enhancer", n_blocks=1, noise_input="map")  # its noise channels hold a whole-image mean
    assert receptive_radius(noise_map, 1, 22, 2) is None


def real_image() -> np.ndarray:
    """A real 700×530 fundus crop (scikit-image's retina, green channel) in [0, 1]."""
    from skimage import data

    return (data.retina()[300:1000, 400:930, 1] / 255.0).astype(np.float32)


def save_enhancer(root: Path, **config: object) -> Path:
    """A random-init enhancer of ``config`` saved into a registry at ``root``."""
    from gan.registry import save_model

    torch.manual_seed(0)
    save_model(build("enhancer", **config), root, ENHANCER, "enhancer", dict(config),
               {"version": "0.0.0-test", "training": {"data": "none", "command": "pytest", "seed": 0},
                "input": {"channels": 1, "scale": 2, "context_size": 22, "normalisation": "[0, 1]"},
                "synthetic_output": False})  # fmt: skip
    return root


@pytest.mark.parametrize("registry", ["shipped", "random-init", "unshuffle"])
def test_tiled_enhancement_equals_one_whole_pass(registry: str, model_root: Path, tmp_path: Path) -> None:
    """A 700×530 real image through 128² tiles and through one pass agree to float rounding (ONNX Runtime).

    Models: the shipped one; the test registry's (4 blocks, 3×3 gates: a wider reach); a pixel-unshuffle trunk
    (even sizes only: the engine pads, and tiles keep even offsets)."""
    weights = {"shipped": None, "random-init": model_root,
               "unshuffle": save_enhancer(tmp_path / "reg", trunk="unshuffle")}[registry]  # fmt: skip
    whole = InferenceEngine.from_settings(
        InferenceSettings(weights_dir=weights, cache_dir=tmp_path, threads=1, tile_size=1024,
                          **({} if weights is None else {"enhancer": {"version": None}})),
        roles=("enhancer",),
    )
    served = whole.model(ENHANCER)
    assert served.receptive_radius is not None and 0 < served.receptive_radius < 40
    tiled = InferenceEngine([served], whole.settings.model_copy(update={"tile_size": 128}), warm_up=False)
    image = real_image()[None, :, :-1]  # an odd width
    context = np.linspace(0, 1, 22, dtype=np.float32)
    try:
        expected = whole.enhance(image, context).images
        got = tiled.enhance(image, context).images
    finally:
        whole.close()
        tiled.close()
    assert got.shape == expected.shape == (1, 1400, 1058)
    assert np.abs(got - expected).max() < 1e-4
    # more than one window ran
    assert tiled.metrics.value("aegle_inference_batch_size_count", model=ENHANCER) > 1


def test_a_model_that_cannot_be_tiled_refuses_images_over_one_tile(tmp_path: Path) -> None:
    module, card = load_model(save_enhancer(tmp_path, n_blocks=1, noise_input="map"), ENHANCER)
    settings = InferenceSettings(weights_dir=tmp_path, cache_dir=tmp_path / "cache", threads=1, tile_size=64,
                                 backend="torch")  # fmt: skip
    eng = InferenceEngine([InferenceEngine.serve(module, card, "torch", settings)], settings, warm_up=False)
    try:
        assert eng.enhance(np.zeros((1, 64, 48), np.float32)).images.shape == (1, 128, 96)
        with pytest.raises(ImageTooLarge, match="at most 64 pixels, got 65×48"):
            eng.enhance(np.zeros((1, 65, 48), np.float32))
    finally:
        eng.close()
