"""The shipped enhancers — the fast ``gan/weights/enhancer-x2`` and the quality ``enhancer-x2-quality`` with its blind
twin: each loads through the registry (sha256 checked), its card's test figures are recomputed from the weights on
the held-out pairs they were measured on, and it beats bicubic on the benchmark's pairs by a margin that the same
architecture with random weights does not reach."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench import enhancer_quality as eq
from core.settings import DEFAULT_QUALITY_ENHANCER as QUALITY
from gan import data
from gan.degrade import MODALITY_NOISE
from gan.models import build
from gan.registry import DEFAULT_ROOT, WEIGHTS_FILE, WeightsIntegrityError, load_model, sha256_file
from gan.train.data import prepare_slices

NAME = "enhancer-x2"
#: PSNR gain over bicubic (dB, mean over the benchmark's 192 held-out test pairs) the shipped model must reach.
#: Measured: +0.62 dB with 3.1.0 (the card's ``psnr_gain_vs_bicubic_db``, recomputed below; +0.622 dB on the pairs
#: of today's per-instance normalisation); the same architecture with random weights loses 7.0–8.2 dB (seeds 0–2).
MARGIN_DB = 0.5
#: The card's figures are rounded to 4 decimals.
CARD_ROUNDING = 1e-4


#: The datasets 3.1.0's card figures were measured on (its four held-out subjects).
CARD_DATASETS = ("pydicom", "mni152", "pyradiomics")


def _held_out(datasets: tuple[str, ...]) -> list[data.Volume]:
    volumes = [v for name in datasets for v in data.load(name)]
    return data.held_out_test([v for v in volumes if v.modality in eq.MODALITIES and not v.is_rgb])


@pytest.fixture(scope="module")
def held_out() -> list[data.Volume]:
    return _held_out(tuple(eq.DATASETS))


def _pairs(volumes: list[data.Volume]) -> eq.BenchPairs:
    """The test pairs ``python -m bench.enhancer_quality`` (full mode, seed 0) drew from these volumes until
    2026-12-06, with training's blur mix (``make_bench_pairs`` without ``blur_mix``; the bench now takes half sharp,
    half blurred pairs): the pairs of the card's figures and of :data:`MARGIN_DB`."""
    slices = prepare_slices(volumes, eq.MODALITIES, allow_held_out=True)
    return eq.make_bench_pairs(slices, 2, eq.PAIRS_PER_SUBJECT["full"], seed=0, allow_held_out=True)


@pytest.fixture(scope="module")
def bench_pairs(held_out: list[data.Volume]) -> eq.BenchPairs:
    """Those pairs with today's normalisation."""
    return _pairs(held_out)


@pytest.fixture(scope="module")
def card_pairs() -> eq.BenchPairs:
    """The pairs the card's figures are on: its four held-out subjects, degraded as until 2026-12-06 (CT noise
    Gaussian only: no noise-model draw). 3.1.0 was measured before the one per-instance normalisation
    (gan.intensity), when MR volumes were normalised per volume: a NRRD volume normalised as one instance
    (``single_instance``) reproduces that (DICOM and CT pairs are the same either way)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MODALITY_NOISE, "CT", ("gaussian",))
        return _pairs([dataclasses.replace(v, single_instance=True) for v in _held_out(CARD_DATASETS)])


def _scores(model: torch.nn.Module | None, pairs: eq.BenchPairs) -> dict[str, Any]:
    """Mean PSNR / SSIM (data range 1) of the model's clamped output with the true context — bicubic for ``None``."""
    torch.set_num_threads(1)
    lr = pairs.pairs.lr
    out = eq.bicubic(lr, 2) if model is None else eq.model_output(model, lr, pairs.pairs.context)  # as the bench
    return eq.evaluate(pairs.pairs.hr[:, 0].double().numpy(), out, pairs.modalities)


@pytest.fixture(scope="module")
def bicubic_scores(bench_pairs: eq.BenchPairs) -> dict[str, Any]:
    return _scores(None, bench_pairs)


@pytest.fixture(scope="module")
def shipped_scores(bench_pairs: eq.BenchPairs) -> dict[str, Any]:
    return _scores(load_model(None, NAME)[0], bench_pairs)


def test_shipped_card_and_hash() -> None:
    model, card = load_model(None, NAME)  # verifies the sha256 before deserialising
    assert card.sha256 == sha256_file(DEFAULT_ROOT / NAME / WEIGHTS_FILE)
    assert card.architecture == "enhancer" and card.config["scale"] == 2 and card.config["in_channels"] == 1
    assert card.input.scale == 2 and card.input.context_size == 22
    assert card.training.command.startswith("python -m gan.train enhancer ")
    assert (DEFAULT_ROOT / NAME / WEIGHTS_FILE).stat().st_size < 8 * 2**20  # small enough to ship
    assert not model.training


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_ROOT / NAME, tmp_path / NAME)
    weights = tmp_path / NAME / WEIGHTS_FILE
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01
    weights.write_bytes(bytes(blob))
    with pytest.raises(WeightsIntegrityError):
        load_model(tmp_path, NAME)


def test_card_test_figures_are_recomputed_from_the_weights(card_pairs: eq.BenchPairs) -> None:
    """The sha256 does not cover the card's metrics: every test figure the weights (and bicubic) determine is
    recomputed on the pairs it was measured on. Not recomputed here: the classical (NL-means) figures, which need
    its ~25 s strength search on val, the shuffled-context ones and the blind-twin ones (that model is not shipped)."""
    model, card = load_model(None, NAME)
    bicubic_scores, shipped_scores = _scores(None, card_pairs), _scores(model, card_pairs)
    recomputed = {
        "test_pairs": len(card_pairs),
        "psnr_enhancer_db": shipped_scores["psnr_db"],
        "ssim": shipped_scores["ssim"],
        "psnr_bicubic_db": bicubic_scores["psnr_db"],
        "ssim_bicubic": bicubic_scores["ssim"],
        "psnr_gain_vs_bicubic_db": shipped_scores["psnr_db"] - bicubic_scores["psnr_db"],
    }
    assert {key: card.metrics[key] for key in recomputed} == pytest.approx(recomputed, abs=CARD_ROUNDING)


def test_shipped_model_beats_bicubic_where_random_weights_do_not(
    bench_pairs: eq.BenchPairs, bicubic_scores: dict[str, Any], shipped_scores: dict[str, Any]
) -> None:
    assert set(bench_pairs.pairs.subjects) == set(data.HELD_OUT_TEST_SUBJECTS)
    shipped_gain = shipped_scores["psnr_db"] - bicubic_scores["psnr_db"]
    assert shipped_gain >= MARGIN_DB, f"shipped gain {shipped_gain:.2f} dB"
    # The same assertion with random weights of the same architecture must fail: the margin needs training.
    torch.manual_seed(0)
    random_init = build("enhancer", **load_model(None, NAME)[1].config).eval()
    random_gain = _scores(random_init, bench_pairs)["psnr_db"] - bicubic_scores["psnr_db"]
    assert not random_gain >= MARGIN_DB, f"random weights reach the margin: {random_gain:.2f} dB"


# ------------------------------------------------------------------------------------- the quality model (1.0.0)

QUALITY_TWIN = QUALITY + eq.BLIND_SUFFIX
#: The quality model's PSNR gain over bicubic on the full benchmark's pairs must reach this; measured +0.63 dB
#: (2026-12-06); random weights of its architecture stay near bicubic.
QUALITY_MARGIN_DB = 0.5


@pytest.fixture(scope="module")
def full_bench_pairs(held_out: list[data.Volume]) -> eq.BenchPairs:
    """The pairs of ``python -m bench.enhancer_quality`` (full mode, seed 0, half sharp and half blurred)."""
    slices = prepare_slices(held_out, eq.MODALITIES, allow_held_out=True)
    return eq.make_bench_pairs(slices, 2, eq.PAIRS_PER_SUBJECT["full"], seed=0, allow_held_out=True,
                               blur_mix=eq.BLUR_MIX)  # fmt: skip


def _pair_scores(model: torch.nn.Module | None, pairs: eq.BenchPairs, zero_context: bool = False) -> dict[str, Any]:
    """Per-pair scores as the benchmark computes them: bicubic for ``None``, else the model's clamped output with
    the true context (zero with ``zero_context``)."""
    torch.set_num_threads(1)
    context = torch.zeros_like(pairs.pairs.context) if zero_context else pairs.pairs.context
    out = eq.bicubic(pairs.pairs.lr, 2) if model is None else eq.model_output(model, pairs.pairs.lr, context)
    return eq.pair_scores(pairs.pairs.hr[:, 0].double().numpy(), out, pairs.tissue)


def _finite_mean(values: Any) -> float:
    return float(values[np.isfinite(values)].mean())


@pytest.mark.parametrize("name", [QUALITY, QUALITY_TWIN])
def test_quality_card_and_hash(name: str) -> None:
    model, card = load_model(None, name)
    assert card.sha256 == sha256_file(DEFAULT_ROOT / name / WEIGHTS_FILE) and not model.training
    assert (card.config["upsampler"], card.config["conditioning"], card.config["residual_filter"]) == (
        "resize", "gated", "nyquist")
    assert ("--blind" in card.training.command.split()) == (name == QUALITY_TWIN)
    assert (DEFAULT_ROOT / name / WEIGHTS_FILE).stat().st_size < 8 * 2**20


def test_quality_card_figures_are_recomputed_from_the_weights(full_bench_pairs: eq.BenchPairs) -> None:
    """Every test figure the quality model, its blind twin (zero context) and bicubic determine, recomputed on the
    pairs of its card. Not recomputed: the classical figures (BM3D's search on val takes minutes) and the
    calm/agitated/shuffled conditions."""
    model, card = load_model(None, QUALITY)
    scores, bicubic = _pair_scores(model, full_bench_pairs), _pair_scores(None, full_bench_pairs)
    blind = _pair_scores(load_model(None, QUALITY_TWIN)[0], full_bench_pairs, zero_context=True)
    recomputed = {
        "test_pairs": len(full_bench_pairs),
        "psnr_enhancer_db": _finite_mean(scores["psnr_db"]),
        "tissue_psnr_enhancer_db": _finite_mean(scores["tissue_psnr_db"]),
        "ssim": _finite_mean(scores["ssim"]),
        "psnr_bicubic_db": _finite_mean(bicubic["psnr_db"]),
        "ssim_bicubic": _finite_mean(bicubic["ssim"]),
        "psnr_gain_vs_bicubic_db": _finite_mean(scores["psnr_db"] - bicubic["psnr_db"]),
        "psnr_blind_db": _finite_mean(blind["psnr_db"]),
    }
    assert {key: card.metrics[key] for key in recomputed} == pytest.approx(recomputed, abs=CARD_ROUNDING)
    gain = recomputed["psnr_gain_vs_bicubic_db"]
    assert gain >= QUALITY_MARGIN_DB, f"quality gain {gain:.2f} dB"
    torch.manual_seed(0)  # the same margin with random weights of the same architecture must fail
    random_init = build("enhancer", **card.config).eval()
    random_gain = _finite_mean(_pair_scores(random_init, full_bench_pairs)["psnr_db"] - bicubic["psnr_db"])
    assert not random_gain >= QUALITY_MARGIN_DB, f"random weights reach the margin: {random_gain:.2f} dB"
