"""bench.enhancer_speed runs end to end with tiny settings and reports positive figures (no timing assertion)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.enhancer_speed import count_flops, run_benchmark
from core.context import CONTEXT_SIZE
from gan.models.enhancer import ContextEnhancer


def test_flop_count_matches_hand_count() -> None:
    import torch

    model = ContextEnhancer(channels=8, n_blocks=1).eval()
    layers = count_flops(model, torch.rand(2, 1, 16, 16), torch.rand(2, CONTEXT_SIZE))
    px = 2 * 16 * 16  # LR pixels in the batch
    conv3 = 2 * 8 * 9 * 8 * px
    expected = (
        2 * 1 * 9 * 8 * px  # head
        + 2 * conv3  # attention body + gate
        + 3 * conv3  # multi-scale branches
        + 2 * 8 * 8 * px  # 1×1 projection
        + conv3  # trunk tail
        + 4 * conv3  # sub-pixel conv 8 → 32
        + 2 * 8 * 9 * 1 * 4 * px  # tail at high resolution
        + 2 * (2 * CONTEXT_SIZE * 64 + 2 * 64 * 1)  # context MLP
    )
    assert sum(layer.flops for layer in layers) == expected


def test_run_benchmark_tiny() -> None:
    result = run_benchmark(batch=2, lr_size=16, runs=1, warmup=0, gemm_n=64, gemm_repeats=1)
    json.dumps(result)  # JSON-ready
    for key in (
        "slices_per_s",
        "slices_per_s_onnxruntime",
        "slices_per_s_torch",
        "gemm_gflops",
        "model_gflop_per_slice",
        "gemm_fraction",
    ):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert result["slices_per_s"] == max(result["slices_per_s_onnxruntime"], result["slices_per_s_torch"])
    assert 0 <= result["parity_max_abs"] < 1e-3
    assert (result["batch"], result["lr_size"], result["hr_size"], result["runs"]) == (2, 16, 32, 1)
    assert result["weights"] == "random-init"


def test_run_benchmark_on_registry_weights(tmp_path: Path) -> None:
    """``--name``: the headline is the registry model's own config and weights (here a tiny unshuffle enhancer)."""
    import torch

    from gan.registry import save_model

    torch.manual_seed(3)
    config = {"in_channels": 1, "scale": 2, "channels": 8, "n_blocks": 1, "trunk": "unshuffle"}
    card = {
        "version": "test", "training": {"data": "none (speed test)", "command": "test", "seed": 3},
        "input": {"channels": 1, "scale": 2, "context_size": CONTEXT_SIZE, "normalisation": "[0, 1]"},
        "synthetic_output": True,
    }  # fmt: skip
    save_model(ContextEnhancer(**config), tmp_path, "tiny-x2", "enhancer", config, card)
    result = run_benchmark(
        batch=2, lr_size=16, runs=1, warmup=0, gemm_n=64, gemm_repeats=1, weights=(tmp_path, "tiny-x2")
    )
    assert result["weights"].startswith("tiny-x2 (sha256 ")
    assert result["config"] == {"channels": 8, "n_blocks": 1, "trunk": "unshuffle"}
    assert result["slices_per_s"] > 0 and 0 <= result["parity_max_abs"] < 1e-3


def test_run_benchmark_measures_both_served_models(tmp_path: Path) -> None:
    """``--name`` and ``--fast-name``: two registry models in one run, each with its own figures; one model named
    twice is measured once."""
    import torch

    from gan.registry import save_model

    card = {
        "version": "test", "training": {"data": "none (speed test)", "command": "test", "seed": 3},
        "input": {"channels": 1, "scale": 2, "context_size": CONTEXT_SIZE, "normalisation": "[0, 1]"},
        "synthetic_output": True,
    }  # fmt: skip
    for name, channels in (("quality-x2", 8), ("fast-x2", 4)):
        torch.manual_seed(3)
        config = {"in_channels": 1, "scale": 2, "channels": channels, "n_blocks": 1}
        save_model(ContextEnhancer(**config), tmp_path, name, "enhancer", config, card)
    tiny = {"batch": 2, "lr_size": 16, "runs": 1, "warmup": 0, "gemm_n": 64, "gemm_repeats": 1}
    both = run_benchmark(**tiny, weights=(tmp_path, "quality-x2"), fast=(tmp_path, "fast-x2"))
    json.dumps(both)
    assert both["weights"].startswith("quality-x2 ") and both["fast"]["weights"].startswith("fast-x2 ")
    assert both["fast"]["config"]["channels"] == 4 and both["config"]["channels"] == 8
    for key in ("fast_slices_per_s", "fast_slices_per_s_onnxruntime"):
        assert isinstance(both[key], float) and both[key] > 0, key
    assert both["fast"]["model_gflop_per_slice"] < both["model_gflop_per_slice"]
    assert 0 <= both["fast"]["parity_max_abs"] < 1e-3
    once = run_benchmark(**tiny, weights=(tmp_path, "fast-x2"), fast=(tmp_path, "fast-x2"))
    assert once["fast_slices_per_s"] == once["slices_per_s"]
