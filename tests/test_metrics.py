"""Tests for gan.metrics on real images (skimage camera/astronaut, pydicom CT_small and its abdomen MR) plus
hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom import dcmread, examples
from pydicom.data import get_testdata_file
from scipy import ndimage
from skimage import data as skdata
from skimage import metrics as skm

from gan import metrics as M

RNG_SEED = 1234


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return skdata.camera().astype(np.float64)  # uint8 photograph, range 0..255


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    path = get_testdata_file("CT_small.dcm", download=False)  # ships inside pydicom
    assert path is not None
    return dcmread(path).pixel_array  # int16 CT, 128×128


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut().astype(np.float64)  # 512×512×3 RGB


def _noisy(img: np.ndarray, sd: float, seed: int = RNG_SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return img + rng.normal(0.0, sd, img.shape)


def _blur(img: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    return ndimage.gaussian_filter(img.astype(np.float64), sigma)


# --------------------------------------------------------------------------- PSNR


def test_psnr_matches_skimage_camera(camera: np.ndarray) -> None:
    noisy = np.clip(_noisy(camera, 10.0), 0, 255)
    expected = skm.peak_signal_noise_ratio(camera, noisy, data_range=255)
    assert M.psnr(camera, noisy, 255) == pytest.approx(expected, abs=1e-6)


def test_psnr_matches_skimage_ct(ct: np.ndarray) -> None:
    rng = 4095.0  # 12-bit CT range, not the int16 dtype range
    noisy = _noisy(ct.astype(np.float64), 20.0)
    expected = skm.peak_signal_noise_ratio(ct.astype(np.float64), noisy, data_range=rng)
    assert M.psnr(ct, noisy, rng) == pytest.approx(expected, abs=1e-6)
    blurred = _blur(ct)
    expected = skm.peak_signal_noise_ratio(ct.astype(np.float64), blurred, data_range=rng)
    assert M.psnr(ct, blurred, rng) == pytest.approx(expected, abs=1e-6)


def test_psnr_identical_is_inf(ct: np.ndarray) -> None:
    assert M.psnr(ct, ct.copy(), 4095) == math.inf


# --------------------------------------------------------------------------- SSIM


def _sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float, **kw: object) -> float:
    return float(
        skm.structural_similarity(
            a.astype(np.float64),
            b.astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=data_range,
            **kw,
        )
    )


def test_ssim_matches_skimage_camera(camera: np.ndarray) -> None:
    for degraded in (np.clip(_noisy(camera, 15.0), 0, 255), _blur(camera)):
        assert M.ssim(camera, degraded, 255) == pytest.approx(_sk_ssim(camera, degraded, 255), abs=1e-4)


def test_ssim_matches_skimage_ct(ct: np.ndarray) -> None:
    for degraded in (_noisy(ct.astype(np.float64), 30.0), _blur(ct, 1.0)):
        ours = M.ssim(ct, degraded, 4095)
        assert ours == pytest.approx(_sk_ssim(ct, degraded, 4095), abs=1e-4)
        assert 0.0 < ours < 1.0
    assert M.ssim(ct, ct, 4095) == pytest.approx(1.0, abs=1e-12)


def test_ssim_multichannel_matches_skimage(astronaut: np.ndarray) -> None:
    noisy = np.clip(_noisy(astronaut, 20.0), 0, 255)
    expected = _sk_ssim(astronaut, noisy, 255, channel_axis=-1)
    assert M.ssim(astronaut, noisy, 255) == pytest.approx(expected, abs=1e-4)


def test_ssim_too_small_image() -> None:
    with pytest.raises(ValueError, match="too small"):
        M.ssim(np.zeros((8, 8)), np.zeros((8, 8)), 1.0)


# --------------------------------------------------------------------------- NCC


def test_ncc_matches_corrcoef(camera: np.ndarray, ct: np.ndarray) -> None:
    noisy = _noisy(camera, 40.0)
    assert M.ncc(camera, noisy) == pytest.approx(np.corrcoef(camera.ravel(), noisy.ravel())[0, 1], abs=1e-12)
    blurred = _blur(ct)
    assert M.ncc(ct, blurred) == pytest.approx(np.corrcoef(ct.ravel(), blurred.ravel())[0, 1], abs=1e-12)


def test_ncc_affine_invariance(ct: np.ndarray) -> None:
    assert M.ncc(ct, 2 * ct.astype(np.float64) + 3) == pytest.approx(1.0, abs=1e-12)
    assert M.ncc(ct, -ct.astype(np.float64)) == pytest.approx(-1.0, abs=1e-12)


def test_ncc_constant_image_raises(ct: np.ndarray) -> None:
    with pytest.raises(ValueError, match="constant"):
        M.ncc(ct, np.full(ct.shape, 7.0))


# --------------------------------------------------------------------------- mutual information


def _hist_entropy(img: np.ndarray, bins: int) -> float:
    counts, _ = np.histogram(img.ravel(), bins=bins)
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def test_mi_self_equals_entropy(camera: np.ndarray, ct: np.ndarray) -> None:
    for img in (camera, ct):
        for bins in (32, 256):
            assert M.mutual_information(img, img, bins=bins) == pytest.approx(_hist_entropy(img, bins), abs=1e-10)


def test_mi_independent_noise_near_zero(camera: np.ndarray) -> None:
    noise = np.random.default_rng(RNG_SEED).uniform(0, 255, camera.shape)
    self_mi = M.mutual_information(camera, camera, bins=32)
    indep = M.mutual_information(camera, noise, bins=32)
    assert 0.0 <= indep < 0.01 * self_mi
    # Dependent but degraded image sits in between.
    assert indep < M.mutual_information(camera, _noisy(camera, 20.0), bins=32) < self_mi


def test_nmi_matches_skimage(camera: np.ndarray, ct: np.ndarray) -> None:
    for ref, test in ((camera, _noisy(camera, 20.0)), (ct, _blur(ct))):
        for bins in (50, 100):
            expected = skm.normalized_mutual_information(ref, test, bins=bins)
            assert M.normalized_mutual_information(ref, test, bins=bins) == pytest.approx(expected, abs=1e-10)
    assert M.normalized_mutual_information(ct, ct) == pytest.approx(2.0, abs=1e-12)


def test_mi_bad_bins(ct: np.ndarray) -> None:
    with pytest.raises(ValueError, match="bins"):
        M.mutual_information(ct, ct, bins=1)


# --------------------------------------------------------------------------- SF / mean gradient


def test_spatial_frequency_hand_computed() -> None:
    # Horizontal diffs: [1, 1] and [3, 3] -> RF² = (1+1+9+9)/4 = 5.
    # Vertical diffs:   [2, 4, 6]        -> CF² = (4+16+36)/3 = 56/3.
    img = np.array([[0, 1, 2], [2, 5, 8]])
    assert M.spatial_frequency(img) == pytest.approx(math.sqrt(5 + 56 / 3), abs=1e-12)
    # Checkerboard 0/1: every difference has magnitude 1 -> SF = sqrt(2).
    assert M.spatial_frequency(np.indices((4, 5)).sum(axis=0) % 2) == pytest.approx(math.sqrt(2), abs=1e-12)
    assert M.spatial_frequency(np.full((3, 3), 9)) == 0.0


def test_mean_gradient_hand_computed() -> None:
    # Interior grid is 1×2: positions (0,0): dx=1, dy=2 -> sqrt(5/2); (0,1): dx=1, dy=4 -> sqrt(17/2).
    img = np.array([[0, 1, 2], [2, 5, 8]])
    assert M.mean_gradient(img) == pytest.approx((math.sqrt(2.5) + math.sqrt(8.5)) / 2, abs=1e-12)
    # Linear ramp I = 3i + 4j: dx = 4, dy = 3 everywhere -> sqrt(25/2).
    i, j = np.indices((5, 6))
    assert M.mean_gradient(3 * i + 4 * j) == pytest.approx(math.sqrt(12.5), abs=1e-12)


def test_blur_lowers_sf_and_mean_gradient(camera: np.ndarray, ct: np.ndarray, astronaut: np.ndarray) -> None:
    for img in (camera, ct.astype(np.float64)):
        blurred = _blur(img)
        assert M.spatial_frequency(blurred) < 0.7 * M.spatial_frequency(img)
        assert M.mean_gradient(blurred) < 0.7 * M.mean_gradient(img)
    blurred_rgb = ndimage.gaussian_filter(astronaut, sigma=(2, 2, 0))
    assert M.spatial_frequency(blurred_rgb) < M.spatial_frequency(astronaut)
    assert M.mean_gradient(blurred_rgb) < M.mean_gradient(astronaut)


def test_sf_mg_too_small() -> None:
    for fn in (M.spatial_frequency, M.mean_gradient):
        with pytest.raises(ValueError, match="2×2"):
            fn(np.zeros((1, 5)))


# --------------------------------------------------------------------------- tissue mask, masked PSNR / SSIM


@pytest.fixture(scope="module")
def ct_hu() -> np.ndarray:
    ds = dcmread(get_testdata_file("CT_small.dcm", download=False))
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # neck CT crop, air on top


@pytest.fixture(scope="module")
def mr_abdomen() -> np.ndarray:
    return examples.overlay.pixel_array.astype(np.float64)  # 300×484 axial abdomen MR, body surrounded by air


def _outside_air(air: np.ndarray) -> np.ndarray:
    """The air pixels connected to the image border (not enclosed by the body)."""
    labels, _ = ndimage.label(air)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def test_tissue_mask_covers_tissue_not_air_ct(ct_hu: np.ndarray) -> None:
    mask = M.tissue_mask(ct_hu)
    assert mask.dtype == np.bool_ and mask.shape == ct_hu.shape
    assert mask[(ct_hu > -100) & (ct_hu < 200)].all()  # fat, soft tissue, vessels
    assert mask[ct_hu > 300].all()  # bone
    outside = _outside_air(ct_hu < -500)
    assert outside.sum() > 2000  # the crop's air above the neck
    assert (mask & outside).sum() < 0.1 * outside.sum()
    assert np.array_equal(M.tissue_mask(ct_hu + 1024), mask) and np.array_equal(M.tissue_mask(ct_hu / 7), mask)


def test_tissue_mask_covers_tissue_not_air_mr(mr_abdomen: np.ndarray) -> None:
    mask = M.tissue_mask(mr_abdomen)
    for corner in (mask[:20, :20], mask[:20, -20:], mask[-20:, :20], mask[-20:, -20:]):
        assert not corner.any()
    assert mask[100:200, 150:330].all()  # liver, kidneys, spine, bowel: dark enclosed structures filled
    labels, _ = ndimage.label(mask)
    body = np.bincount(labels.ravel())[1:].max()
    assert 0.55 < body / mask.size < 0.8  # one body, two thirds of the frame
    background = _outside_air(mr_abdomen < 0.05 * mr_abdomen.max())
    assert (mask & background).sum() < 0.05 * background.sum()


def test_tissue_mask_edge_cases() -> None:
    assert not M.tissue_mask(np.full((40, 40), 3.0)).any()  # no contrast, no tissue
    speck = np.zeros((64, 64))
    speck[10:13, 10:13] = 1.0  # 9 pixels: smaller than TISSUE_MIN_SIZE
    speck[30:50, 30:50] = 1.0
    mask = M.tissue_mask(speck)
    assert not mask[10:13, 10:13].any() and mask[30:50, 30:50].all() and mask.sum() == 400
    with pytest.raises(ValueError, match="2-D"):
        M.tissue_mask(np.zeros((8, 8, 3)))


def test_masked_psnr_equals_direct_computation(mr_abdomen: np.ndarray) -> None:
    noisy = _noisy(mr_abdomen, 20.0)
    mask = M.tissue_mask(mr_abdomen)
    mse = float(np.mean((mr_abdomen[mask] - noisy[mask]) ** 2))
    assert M.psnr(mr_abdomen, noisy, 1123.0, mask=mask) == pytest.approx(10 * math.log10(1123.0**2 / mse), abs=1e-10)
    everywhere = np.ones(mr_abdomen.shape, bool)
    assert M.psnr(mr_abdomen, noisy, 1123.0, mask=everywhere) == M.psnr(mr_abdomen, noisy, 1123.0)
    # noise only inside the body: the masked PSNR sees it at full strength, the whole-frame PSNR diluted by air
    inside = np.where(mask, noisy, mr_abdomen)
    assert M.psnr(mr_abdomen, inside, 1123.0, mask=mask) < M.psnr(mr_abdomen, inside, 1123.0) - 1.0


def test_masked_ssim_is_the_mean_of_the_ssim_map_over_the_mask(ct_hu: np.ndarray) -> None:
    degraded = _blur(ct_hu, 1.0)
    _, full = skm.structural_similarity(
        ct_hu, degraded, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2000.0, full=True
    )
    mask = M.tissue_mask(ct_hu)
    expected = full[5:-5, 5:-5][mask[5:-5, 5:-5]].mean()
    assert M.ssim(ct_hu, degraded, 2000.0, mask=mask) == pytest.approx(expected, abs=1e-4)
    everywhere = np.ones(ct_hu.shape, bool)
    assert M.ssim(ct_hu, degraded, 2000.0, mask=everywhere) == M.ssim(ct_hu, degraded, 2000.0)


def test_mask_validation(ct_hu: np.ndarray) -> None:
    with pytest.raises(ValueError, match="boolean"):
        M.psnr(ct_hu, ct_hu + 1, 2000.0, mask=np.ones(ct_hu.shape))
    with pytest.raises(ValueError, match="spatial shape"):
        M.psnr(ct_hu, ct_hu + 1, 2000.0, mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="no pixel"):
        M.psnr(ct_hu, ct_hu + 1, 2000.0, mask=np.zeros(ct_hu.shape, bool))
    border_only = np.zeros(ct_hu.shape, bool)
    border_only[:3] = True
    with pytest.raises(ValueError, match="valid region"):
        M.ssim(ct_hu, ct_hu + 1, 2000.0, mask=border_only)


# --------------------------------------------------------------------------- checkerboard ratio


def test_checkerboard_ratio_high_for_a_checkerboard_on_a_real_image(camera: np.ndarray, ct_hu: np.ndarray) -> None:
    """A faint period-2 pattern modulated by the image — the transposed-conv artefact — added to a real image."""
    for image, data_range in ((camera, 255.0), (ct_hu, 2000.0)):
        smooth = _blur(image, 2.0)
        yy, xx = np.indices(image.shape)
        for pattern in ((-1.0) ** xx, (-1.0) ** yy, (-1.0) ** (xx + yy)):
            artefact = 0.005 * data_range * pattern * smooth / smooth.max()  # 0.5 % of the range at most
            assert M.checkerboard_ratio(image + artefact, image) > 0.5
    # on top of a real residual (the CT slice's own noise and fine detail, what a smoothing base leaves): a 1 % pattern
    # lifts the ratio from below white noise (0.016) to several times it
    smooth = _blur(ct_hu, 2.0)
    alone = M.checkerboard_ratio(ct_hu, smooth)
    checker = 0.01 * 2000.0 * (-1.0) ** np.indices(ct_hu.shape)[1] * smooth / smooth.max()
    assert alone < 0.016 and M.checkerboard_ratio(ct_hu + checker, smooth) > 0.05


def test_checkerboard_ratio_low_for_smooth_and_textured_residuals(camera: np.ndarray, ct_hu: np.ndarray) -> None:
    rng = np.random.default_rng(RNG_SEED)
    for image in (camera, ct_hu):
        assert M.checkerboard_ratio(_blur(image, 3.0), _blur(image, 1.5)) < 0.01  # smooth residual
        assert M.checkerboard_ratio(image, _blur(image, 2.0)) < 0.05  # the real image's own fine detail
        assert M.checkerboard_ratio(image, image) == 0.0
    # white noise: the neighbourhoods' share of the band's area, 12·w² / (1 − 4·b²)
    white = np.mean([M.checkerboard_ratio(camera + rng.normal(0, 5, camera.shape), camera) for _ in range(4)])
    area = 12 * M.CHECKERBOARD_HALF_WIDTH**2 / (1 - 4 * M.CHECKERBOARD_HIGH_BAND**2)
    assert white == pytest.approx(area, rel=0.15)
    ramp = np.add.outer(np.arange(64.0), np.arange(64.0))
    assert M.checkerboard_ratio(ramp, np.zeros((64, 64))) < 1e-3  # a gradient: no high-frequency energy to speak of


def test_checkerboard_ratio_scale_invariant_and_validated(camera: np.ndarray) -> None:
    xx = np.indices(camera.shape)[1]
    residual = (-1.0) ** xx * _blur(camera, 2.0) + _noisy(np.zeros(camera.shape), 20.0)
    ratio = M.checkerboard_ratio(camera + residual, camera)
    assert M.checkerboard_ratio(3 * camera + 3 * residual, 3 * camera) == pytest.approx(ratio, rel=1e-9)
    assert M.checkerboard_ratio(camera + residual + 7.0, camera) == pytest.approx(ratio, rel=1e-9)  # mean removed
    with pytest.raises(ValueError, match="2-D"):
        M.checkerboard_ratio(np.zeros((40, 40, 3)), np.zeros((40, 40, 3)))
    with pytest.raises(ValueError, match="32"):
        M.checkerboard_ratio(np.zeros((16, 40)), np.zeros((16, 40)))
    with pytest.raises(ValueError, match="shape mismatch"):
        M.checkerboard_ratio(camera, camera[:-2])


# --------------------------------------------------------------------------- registry


def test_noise_sigma_immerkaer(ct: np.ndarray) -> None:
    """Gaussian noise on a flat image → σ; a plane → 0; the mask's convolution equals the direct (valid) sum."""
    rng = np.random.default_rng(0)
    for sigma in (0.01, 0.05):
        assert M.noise_sigma(0.5 + rng.normal(0, sigma, (256, 256))) == pytest.approx(sigma, rel=0.03)
    yy, xx = np.mgrid[0:40, 0:50]
    assert M.noise_sigma(3.0 * yy - 2.0 * xx + 7.0) == pytest.approx(0.0, abs=1e-12)
    img = ct[:64, :80]
    mask = np.array(M.IMMERKAER_MASK)
    direct = sum(
        abs(float((img[i - 1 : i + 2, j - 1 : j + 2] * mask).sum())) for i in range(1, 63) for j in range(1, 79)
    ) / (62 * 78)
    assert M.noise_sigma(img) == pytest.approx(direct * math.sqrt(math.pi / 2) / 6, rel=1e-12)
    rgb = np.stack([img, 2 * img, 3 * img], axis=-1)
    assert M.noise_sigma(rgb) == pytest.approx(2 * M.noise_sigma(img), rel=1e-12)  # mean of per-channel σ
    with pytest.raises(ValueError, match="3×3"):
        M.noise_sigma(np.zeros((2, 5)))


def test_compute_registry(ct: np.ndarray) -> None:
    test = _noisy(ct.astype(np.float64), 25.0)
    out = M.compute(["psnr", "ssim", "ncc", "mi", "nmi", "spatial_frequency", "mean_gradient"], ct, test, 4095)
    assert list(out) == ["psnr", "ssim", "ncc", "mi", "nmi", "spatial_frequency", "mean_gradient"]
    assert out["psnr"] == M.psnr(ct, test, 4095)
    assert out["ssim"] == M.ssim(ct, test, 4095)
    assert out["ncc"] == M.ncc(ct, test)
    assert out["mi"] == M.mutual_information(ct, test)
    assert out["nmi"] == M.normalized_mutual_information(ct, test)
    assert out["spatial_frequency"] == M.spatial_frequency(test)
    assert out["mean_gradient"] == M.mean_gradient(test)
    assert all(isinstance(v, float) for v in out.values())
    assert set(M.METRICS) == set(out)
    assert M.compute("psnr", ct, test, 4095) == {"psnr": out["psnr"]}


def test_compute_unknown_name(ct: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute(["psnr", "lpips"], ct, ct, 4095)


# --------------------------------------------------------------------------- validation


def test_shape_mismatch(camera: np.ndarray) -> None:
    for fn in (M.psnr, M.ssim):
        with pytest.raises(ValueError, match="shape mismatch"):
            fn(camera, camera[:-1], 255)
    for fn2 in (M.ncc, M.mutual_information, M.normalized_mutual_information):
        with pytest.raises(ValueError, match="shape mismatch"):
            fn2(camera, camera.T[:, :-1])


def test_empty_arrays() -> None:
    with pytest.raises(ValueError, match="empty"):
        M.psnr(np.zeros((0, 4)), np.zeros((0, 4)), 1.0)
    with pytest.raises(ValueError, match="empty"):
        M.spatial_frequency(np.array([]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf(camera: np.ndarray, bad: float) -> None:
    corrupted = camera.copy()
    corrupted[10, 10] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        M.psnr(camera, corrupted, 255)
    with pytest.raises(ValueError, match="NaN or inf"):
        M.mean_gradient(corrupted)


@pytest.mark.parametrize(
    "bad",
    [np.array([["a", "b"], ["c", "d"]]), np.ones((4, 4), dtype=bool), np.ones((4, 4), dtype=complex)],
)
def test_non_numeric_dtype(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="non-numeric dtype"):
        M.ncc(bad, bad)
    with pytest.raises(ValueError, match="non-numeric dtype"):
        M.spatial_frequency(bad)


@pytest.mark.parametrize("rng", [0, -1.0, math.nan, math.inf, "wide", None])
def test_bad_data_range(camera: np.ndarray, rng: object) -> None:
    for fn in (M.psnr, M.ssim):
        with pytest.raises(ValueError, match="data_range"):
            fn(camera, camera, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data_range"):
        M.compute(["ncc"], camera, camera, rng)  # type: ignore[arg-type]


def test_wrong_ndim() -> None:
    with pytest.raises(ValueError, match="ndim"):
        M.psnr(np.zeros(5), np.zeros(5), 1.0)
