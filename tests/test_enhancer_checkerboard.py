"""No checkerboard: on real held-out slices fed as served (``bench.enhancer_quality.served_slices``: the central
128² of up to 8 slices per subject, ×2, no vitals), every shipped enhancer keeps the share of the high-frequency
energy of (output − bicubic) at the Nyquist points (:func:`gan.metrics.checkerboard_ratio`) under a bound that the
classical pipeline meets and a faint period-2 pattern breaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from bench import enhancer_quality as eq
from gan import data
from gan.metrics import checkerboard_ratio, noise_sigma
from gan.registry import list_models, load_model
from gan.train.data import prepare_slices

#: Mean checkerboard ratio over the served held-out slices that a shipped enhancer must not exceed. White noise
#: gives 0.016; on these slices bicubic + NLM (h = 0.6·σ̂) gives 0.038 (asserted below) and bicubic + BM3D
#: (sigma_psd = 1.1·σ̂, the benchmark's best classical; 3 s a slice, so not rerun here) 0.100 (2026-12-06): a
#: strong denoiser leaves some energy there, and the bound keeps half as much again as margin for it.
CHECKERBOARD_BOUND = 0.15
#: Shipped versions known to fail it (name, version) → why; their test is an expected (strict) failure.
KNOWN_CHECKERBOARD: dict[tuple[str, str], str] = {
    ("enhancer-x2", "3.1.0"): "transposed-conv upsampler (kernel 4, stride 2) writes the image residual: ratio "
    "0.254 on these slices (CT 0.370, MR 0.150; abdomen MR 0.48, lung CT 0.40); the artefact seen in bone on CT_small",
}


def _shipped() -> list[object]:
    params = []
    for card in list_models(None):
        if card.architecture != "enhancer":
            continue
        why = KNOWN_CHECKERBOARD.get((card.name, card.version))
        marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
        params.append(pytest.param(card.name, id=f"{card.name}-{card.version}", marks=marks))
    return params


@pytest.fixture(scope="module")
def served() -> eq.ServedSlices:
    volumes = [v for name in eq.DATASETS for v in data.load(name)]
    usable = [v for v in volumes if v.modality in eq.MODALITIES and not v.is_rgb]
    return eq.served_slices(prepare_slices(data.held_out_test(usable), eq.MODALITIES, allow_held_out=True))


@pytest.mark.parametrize("name", _shipped())
def test_shipped_enhancer_has_no_checkerboard(name: str, served: eq.ServedSlices) -> None:
    torch.set_num_threads(1)
    model, card = load_model(None, name)
    ratios = eq.checkerboard_ratios(model, served)
    assert len(ratios) == len(served.subjects) >= 8
    by_subject = eq.summary(ratios, served.modalities, served.subjects)["by_subject"]
    assert ratios.mean() <= CHECKERBOARD_BOUND, (
        f"{name} {card.version}: mean checkerboard ratio {ratios.mean():.3f} > {CHECKERBOARD_BOUND} ({by_subject})"
    )


def test_bound_passes_the_classical_pipeline_and_fails_a_faint_checkerboard(served: eq.ServedSlices) -> None:
    """The controls: bicubic + NLM (no transposed conv anywhere) passes; its output plus a period-2 pattern of at most
    0.5 % of the range, modulated by the image as a transposed conv's phase mismatch is, fails."""
    up = eq.bicubic(served.lr, 2)
    low = served.lr[:, 0].double().numpy()
    nlm = np.stack([eq.classical(u, "nl_means", 0.6, lo) for u, lo in zip(up, low, strict=True)])
    clean = np.array([checkerboard_ratio(o, u) for o, u in zip(nlm, up, strict=True)])
    assert clean.mean() <= 0.5 * CHECKERBOARD_BOUND, clean.mean()
    assert all(noise_sigma(lo) > 0 for lo in low)  # NLM had noise to remove: the residuals are not empty
    stripes = (-1.0) ** np.indices(up.shape[1:])[1]
    faint = [o + 0.005 * stripes * ndimage.gaussian_filter(u, 2.0) for o, u in zip(nlm, up, strict=True)]
    broken = np.array([checkerboard_ratio(f, u) for f, u in zip(faint, up, strict=True)])
    assert broken.mean() > CHECKERBOARD_BOUND, broken.mean()
