"""The context-driven degradation simulation (gan/degrade.py) on real images: camera, a real CT slice, and real
[0, 1]-normalised MR and CT slices for the noise models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from skimage import data

from core.context import context_from_series
from gan import data as gdata
from gan.degrade import (
    MAPPING,
    MODALITY_NOISE,
    NOISE_MODELS,
    POISSON_REFERENCE,
    DegradationParams,
    degrade,
    line_kernel,
    mapping_markdown,
    paired,
    params_from_context,
)
from gan.intensity import normalise_volume
from gan.metrics import noise_sigma

DOCS = Path(__file__).resolve().parents[1] / "docs" / "degradation.md"
CAMERA_RANGE = (0.0, 255.0)


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return data.camera().astype(np.float64)


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, tuple[float, float]]:
    """The real 128×128 CT slice packaged with pydicom, in Hounsfield units, and its value range."""
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None, "pydicom's packaged CT_small.dcm not found"
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return hu, (float(hu.min()), float(hu.max()))


@pytest.fixture(scope="module")
def real_slices() -> dict[str, np.ndarray]:
    """Real slices in model space [0, 1]: an abdominal MR (dark background, own noise σ̂ 0.0016) and a pancreas CT
    in its soft-tissue window (every grey level from fat to contrast-filled vessels)."""
    volumes = {v.source: v for v in gdata.load("pydicom")}
    return {
        "MR": normalise_volume(volumes["pydicom-data:MR-SIEMENS-DICOM-WithOverlays"]).astype(np.float64),
        "CT": normalise_volume(volumes["pydicom-data:explicit_VR-UN"]).astype(np.float64),
    }


def psnr(a: np.ndarray, b: np.ndarray, data_range: tuple[float, float]) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10.0 * np.log10((data_range[1] - data_range[0]) ** 2 / mse)


def sharpness(img: np.ndarray) -> float:
    gy, gx = np.gradient(np.asarray(img, np.float64))
    return float(np.mean(np.hypot(gx, gy)))


def params(levels: dict[str, float | None], modality: str = "CT:CHEST", seed: int = 0, **kw: float):
    return params_from_context(levels, modality, np.random.default_rng(seed), **kw)


# --- kernels -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 3, 5, 9, 15])
@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 90.0, 137.0])
def test_line_kernel_is_normalised(length: int, angle: float) -> None:
    k = line_kernel(length, angle)
    assert k.shape == (length, length)
    assert k.sum() == pytest.approx(1.0)
    assert (k >= 0).all()


@pytest.mark.parametrize("length", [3, 7, 9])
def test_line_kernel_orientation(length: int) -> None:
    c = length // 2
    horizontal = line_kernel(length, 0.0)
    assert np.allclose(horizontal[c], 1.0 / length)  # the whole middle row, uniform
    assert horizontal.sum() == pytest.approx(horizontal[c].sum())
    vertical = line_kernel(length, 90.0)
    assert np.allclose(vertical[:, c], 1.0 / length)
    assert vertical.sum() == pytest.approx(vertical[:, c].sum())
    # 45° counter-clockwise from +x with rows pointing down: bottom-left to top-right.
    diagonal = line_kernel(length, 45.0)
    rows, cols = np.nonzero(diagonal)
    assert len(rows) > 1 and (rows + cols == length - 1).all()  # only on the anti-diagonal
    assert rows.min() < c < rows.max() and np.allclose(diagonal, diagonal[::-1, ::-1])  # centred, symmetric


def test_horizontal_blur_leaves_vertical_edges_soft_and_horizontal_edges_sharp() -> None:
    img = np.zeros((32, 32))
    img[:, 16:] = 1.0  # a vertical edge
    blurred = degrade(img, DegradationParams(motion_blur_px=7, motion_angle_deg=0.0), (0, 1), np.random.default_rng())
    assert 0 < blurred[10, 15] < 1  # smeared across the edge
    img_t = img.T.copy()  # a horizontal edge: a horizontal blur does nothing to it
    assert np.array_equal(
        degrade(img_t, DegradationParams(motion_blur_px=7), (0, 1), np.random.default_rng()), img_t.astype(np.float32)
    )


# --- mapping -----------------------------------------------------------------------------------------------


def test_motion_mapping_is_monotonic_and_saturating() -> None:
    motions = [0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0, 50.0]
    for seed in range(5):
        lengths = [params({"motion": m}, "MR:HEAD", seed).motion_blur_px for m in motions]
        assert lengths == sorted(lengths), lengths
        assert lengths[:3] == [0, 0, 0]  # at rest
        assert lengths[-3:] == [9, 9, 9]  # saturated at ≥ 6 m/s²
        assert lengths[5] >= 3  # 2 m/s² visibly blurs


def test_missing_channels_are_the_reference() -> None:
    for ctx in (None, {}, {"motion": None, "respiratory_rate": None, "heart_rate": None}):
        p = params(ctx, "CT:CHEST")
        assert (p.motion_blur_px, p.resp_blur_px, p.cardiac_blur_px) == (0, 0, 0)


def test_respiratory_blur_only_for_breathing_regions_and_above_threshold() -> None:
    for modality in ("CT:CHEST", "MR:ABDOMEN", "CR:CHEST", "DX:chest"):
        rates = [None, 8.0, 12.0, 16.0, 20.0, 28.0, 40.0, 60.0]
        lengths = [params({"respiratory_rate": r}, modality).resp_blur_px for r in rates]
        assert lengths[:4] == [0, 0, 0, 0], (modality, lengths)  # missing, slow, normal
        assert lengths == sorted(lengths) and lengths[5] > 0 and lengths[-1] == 7, (modality, lengths)
    for modality in ("CT:HEAD", "MR:KNEE", "CT", "CR"):
        assert params({"respiratory_rate": 40.0}, modality).resp_blur_px == 0, modality


def test_cardiac_blur_only_for_chest() -> None:
    assert params({"heart_rate": 150.0}, "CT:CHEST").cardiac_blur_px == 3
    assert params({"heart_rate": 70.0}, "CT:CHEST").cardiac_blur_px == 0
    for modality in ("CT:ABDOMEN", "MR:HEAD", "CT"):
        assert params({"heart_rate": 150.0}, modality).cardiac_blur_px == 0


def test_spo2_temperature_and_blood_pressure_have_no_effect() -> None:
    base = {"motion": 2.0, "respiratory_rate": 25.0, "heart_rate": 100.0}
    reference = params(base, "CT:CHEST", seed=3)
    for extra in (
        {"spo2": 70.0},
        {"spo2": 100.0},
        {"temperature": 40.5},
        {"temperature": 34.0},
        {"systolic_bp": 200.0, "diastolic_bp": 120.0},
        {"spo2": None, "temperature": None},
    ):
        assert params({**base, **extra}, "CT:CHEST", seed=3) == reference, extra
    unmapped = {r.channel for r in MAPPING if r.parameter is None}
    assert unmapped == {"spo2", "temperature", "systolic_bp", "diastolic_bp"}


def test_accepts_a_sensor_context_and_mr_gets_rician_noise() -> None:
    t = 1_800_000_000_000
    series = {"motion": [(t - 1000, 5.0)], "respiratory_rate": [(t - 1000, 35.0)], "spo2": [(t - 1000, 85.0)]}
    ctx = context_from_series("enc-1", series, t)
    from_ctx = params_from_context(ctx, "MR:CHEST", np.random.default_rng(1), noise_sigma=0.02, scale=2)
    from_levels = params_from_context(ctx.levels, "MR:CHEST", np.random.default_rng(1), noise_sigma=0.02, scale=2)
    assert from_ctx == from_levels
    assert from_ctx.noise_model == "rician" and from_ctx.scale == 2 and from_ctx.noise_sigma == 0.02
    assert from_ctx.motion_blur_px > 0 and from_ctx.resp_blur_px > 0 and from_ctx.cardiac_blur_px == 0


def test_noise_model_follows_the_modality() -> None:
    assert set(MODALITY_NOISE) == {"CT", "MR", "CR", "DX"} and set(NOISE_MODELS) == {"gaussian", "rician", "poisson"}
    for seed in range(5):
        assert params({}, "MR:HEAD", seed).noise_model == "rician"
        assert params({}, "CR:CHEST", seed).noise_model == params({}, "DX", seed).noise_model == "poisson"
    drawn = [params({}, "CT:CHEST", seed).noise_model for seed in range(200)]
    assert 70 < drawn.count("poisson") < 130 and drawn.count("gaussian") == 200 - drawn.count("poisson")
    # The draw comes after the blur draws: the blur of a CT is what it was before noise models were added.
    ct, cr = params({"motion": 3.0}, "CT:CHEST", 4), params({"motion": 3.0}, "CR:CHEST", 4)
    assert (ct.motion_blur_px, ct.motion_angle_deg) == (cr.motion_blur_px, cr.motion_angle_deg)
    assert params({}, "CT", 1, noise_model="rician").noise_model == "rician"  # the caller may choose
    with pytest.raises(ValueError, match="noise_model must be one of"):
        DegradationParams(noise_model="speckle")  # type: ignore[arg-type]


def test_docs_carry_the_same_table() -> None:
    assert mapping_markdown() in DOCS.read_text(encoding="utf-8")


# --- severity on real images -------------------------------------------------------------------------------

SEVERITIES = (
    ({"motion": 0.2, "respiratory_rate": 14.0, "heart_rate": 70.0}, 0.01),
    ({"motion": 2.5, "respiratory_rate": 24.0, "heart_rate": 100.0}, 0.03),
    ({"motion": 7.0, "respiratory_rate": 45.0, "heart_rate": 160.0}, 0.06),
)


def _images(camera: np.ndarray, ct: tuple[np.ndarray, tuple[float, float]]):
    return [(camera, CAMERA_RANGE), ct]


def test_more_severe_context_lowers_psnr(camera, ct) -> None:
    for image, rng_range in _images(camera, ct):
        scores = []
        for levels, sigma in SEVERITIES:
            p = params(levels, "CT:CHEST", seed=7, noise_sigma=sigma)
            low = degrade(image, p, rng_range, np.random.default_rng(7))
            scores.append(psnr(low, np.clip(image, *rng_range), rng_range))
        assert scores[0] > scores[1] > scores[2], scores
        assert scores[0] - scores[2] > 6.0, scores


def test_more_severe_blur_lowers_sharpness(camera, ct) -> None:
    for image, rng_range in _images(camera, ct):
        clean = sharpness(image)
        values = []
        for levels, _ in SEVERITIES:
            p = params(levels, "CT:CHEST", seed=7)  # blur only: noise would add gradient
            values.append(sharpness(degrade(image, p, rng_range, np.random.default_rng(7))))
        assert clean >= values[0] > values[1] > values[2], (clean, values)
        assert values[2] < 0.8 * clean


# --- resolution, noise, range ------------------------------------------------------------------------------


def test_scale_returns_the_small_image(camera) -> None:
    rng = np.random.default_rng(0)
    for scale in (1, 2, 4):
        out = degrade(camera, DegradationParams(scale=scale), CAMERA_RANGE, rng)
        assert out.shape == (512 // scale, 512 // scale) and out.dtype == np.float32
    out = degrade(camera[:64, :64], DegradationParams(scale=2), CAMERA_RANGE, rng)
    assert out[0, 0] == pytest.approx(camera[:2, :2].mean())
    rgb = data.astronaut().astype(np.float64)
    out = degrade(rgb, DegradationParams(scale=2, motion_blur_px=5), CAMERA_RANGE, rng)
    assert out.shape == (256, 256, 3) and out.dtype == np.float32


def test_block_mean_of_a_constant_is_the_constant() -> None:
    img = np.full((40, 24), 0.37)
    for scale in (2, 4):
        out = degrade(
            img,
            DegradationParams(scale=scale, motion_blur_px=9, motion_angle_deg=33.0),
            (0, 1),
            np.random.default_rng(),
        )
        assert np.allclose(out, np.float32(0.37))


def test_shape_not_divisible_raises_and_paired_crops(camera) -> None:
    with pytest.raises(ValueError, match="not divisible by scale 4"):
        degrade(camera[:510, :511], DegradationParams(scale=4), CAMERA_RANGE, np.random.default_rng())
    low, high, p = paired(
        camera[:510, :511], {"motion": 3.0}, "CR:CHEST", CAMERA_RANGE, np.random.default_rng(), scale=4
    )
    assert high.shape == (508, 508) and low.shape == (127, 127) and p.scale == 4
    assert high.dtype == low.dtype == np.float32
    assert np.array_equal(high, camera[:508, :508].astype(np.float32))


def test_gaussian_noise_sigma_on_a_flat_region() -> None:
    flat = np.full((256, 256), 0.5)
    out = degrade(flat, DegradationParams(noise_sigma=0.05), (0.0, 1.0), np.random.default_rng(0))
    assert float(out.std()) == pytest.approx(0.05, rel=0.10)
    assert float(out.mean()) == pytest.approx(0.5, abs=0.005)
    # Sigma is a fraction of the data range: the same on a 0–255 scale.
    out = degrade(flat * 255, DegradationParams(noise_sigma=0.05), CAMERA_RANGE, np.random.default_rng(0))
    assert float(out.std()) == pytest.approx(0.05 * 255, rel=0.10)


def test_noise_on_a_flat_region_of_a_real_image(camera) -> None:
    # Camera's sky (top-left) is nearly flat: the noise added there is what was asked for.
    p = DegradationParams(noise_sigma=0.02)
    out = degrade(camera, p, CAMERA_RANGE, np.random.default_rng(1))
    patch = (slice(10, 110), slice(10, 110))
    added = out[patch].astype(np.float64) - camera[patch]
    assert float(added.std()) == pytest.approx(0.02 * 255, rel=0.10)


def test_rician_noise() -> None:
    sigma = 0.05
    zero = degrade(
        np.zeros((256, 256)), DegradationParams(noise_sigma=sigma, noise_model="rician"), (0, 1),
        np.random.default_rng(2),
    )  # fmt: skip
    assert (zero >= 0).all()
    assert float(zero.mean()) == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.10)  # Rayleigh background
    bright = degrade(
        np.full((256, 256), 0.6), DegradationParams(noise_sigma=sigma, noise_model="rician"), (0, 1),
        np.random.default_rng(2),
    )  # fmt: skip
    assert float(bright.std()) == pytest.approx(sigma, rel=0.10)  # high SNR: nearly Gaussian


# --- noise models on real slices: the measured σ is the nominal level -------------------------------------------

LEVELS = (0.01, 0.03, 0.05)


def _noise(image: np.ndarray, model: str, level: float, seed: int = 1) -> np.ndarray:
    """The exact residual of noise alone (no blur, scale 1) on ``image`` in [0, 1]."""
    p = DegradationParams(noise_sigma=level, noise_model=model)  # type: ignore[arg-type]
    return degrade(image, p, (0.0, 1.0), np.random.default_rng(seed)).astype(np.float64) - image


@pytest.mark.parametrize("modality", ["MR", "CT"])
@pytest.mark.parametrize("level", LEVELS)
def test_gaussian_and_rician_residual_sigma_is_the_level_on_a_real_slice(real_slices, modality, level) -> None:
    image = real_slices[modality]
    inside = (image > 5 * level) & (image < 1 - 5 * level)  # nowhere near a clip, and (Rician) high SNR
    assert inside.sum() > 20_000
    for model in ("gaussian", "rician"):
        residual = _noise(image, model, level)[inside]
        assert float(residual.std()) == pytest.approx(level, rel=0.03), model
        assert abs(float(residual.mean())) < 0.1 * level, model  # Rician's bias σ²/2A is small up here


@pytest.mark.parametrize("level", LEVELS)
def test_immerkaer_sees_the_level_on_a_clean_real_region(real_slices, level) -> None:
    """Immerkær's estimate (gan.metrics.noise_sigma) of the noisy image, where the reference is clean and nowhere
    clipped (48² of the liver in the abdominal MR): the nominal level, up to the slice's own σ̂ and texture (mean
    of 8 draws: one estimate on 46² positions scatters by about 4 %)."""
    image = real_slices["MR"][224:272, 72:120]
    assert image.min() > 5 * max(LEVELS) and image.max() < 1 - 5 * max(LEVELS)
    assert noise_sigma(image) < 0.1 * min(LEVELS)
    for model in ("gaussian", "rician", "poisson"):
        estimate = np.mean([noise_sigma(image + _noise(image, model, level, seed)) for seed in range(8)])
        expected = level * (np.sqrt(image / POISSON_REFERENCE).mean() if model == "poisson" else 1.0)
        assert estimate == pytest.approx(np.hypot(expected, noise_sigma(image)), rel=0.04), model


@pytest.mark.parametrize("modality", ["MR", "CT"])
@pytest.mark.parametrize("level", LEVELS)
def test_poisson_noise_is_signal_dependent(real_slices, modality, level) -> None:
    """Poisson-like: the std at intensity t is level·√(t / 0.5), the mean is kept; a Gaussian's std is flat."""
    image = real_slices[modality]
    poisson, gaussian = _noise(image, "poisson", level), _noise(image, "gaussian", level)
    inside = (image > 0.1) & (image < 1 - 5 * level)
    standardised = poisson[inside] / (level * np.sqrt(image[inside] / POISSON_REFERENCE))
    assert float(standardised.std()) == pytest.approx(1.0, abs=0.03)
    assert abs(float(poisson[inside].mean())) < 0.05 * level
    bins = [(image >= lo) & (image < hi) for lo, hi in ((0.15, 0.3), (0.4, 0.6), (0.7, 0.85))]
    assert all(b.sum() > 2000 for b in bins)
    spread = [float(poisson[b].std()) for b in bins]
    assert spread[0] < spread[1] < spread[2]
    assert spread[1] == pytest.approx(level, rel=0.05)  # nominal at mid-range
    assert spread[2] / spread[0] == pytest.approx(np.sqrt(image[bins[2]].mean() / image[bins[0]].mean()), rel=0.06)
    flat = [float(gaussian[b].std()) for b in bins]
    assert max(flat) / min(flat) < 1.03


@pytest.mark.parametrize("level", LEVELS)
def test_rician_bias_at_low_signal(real_slices, level) -> None:
    """MR magnitude noise lifts dark pixels: E|A + n| = σ√(π/2)·L½(−A²/2σ²) (Gudbjartsson & Patz 1995), per pixel of
    the real MR's background and dark tissue, while a Gaussian leaves their mean alone (before the clip at 0)."""
    from scipy.special import ive

    image = real_slices["MR"]
    dark = image < level
    assert dark.sum() > 50_000
    a = image[dark] / level
    x = a**2 / 4  # L½(−a²/2) = e^{−a²/4}[(1 + a²/2) I0(a²/4) + (a²/2) I1(a²/4)], with ive = I·e^{−x}
    expected = level * np.sqrt(np.pi / 2) * ((1 + 2 * x) * ive(0, x) + 2 * x * ive(1, x))
    measured = image[dark] + _noise(image, "rician", level)[dark]
    assert float(measured.mean()) == pytest.approx(float(expected.mean()), rel=0.02)
    assert float(measured.mean() - image[dark].mean()) > 0.8 * level  # the bias: most of σ√(π/2) ≈ 1.25σ
    background = image < 0.05 * level
    assert float(measured[background[dark]].mean()) == pytest.approx(level * np.sqrt(np.pi / 2), rel=0.03)


def test_output_is_clipped_float32(ct) -> None:
    hu, rng_range = ct
    out = degrade(hu, DegradationParams(noise_sigma=0.2), rng_range, np.random.default_rng(0))
    assert out.dtype == np.float32
    assert out.min() >= rng_range[0] and out.max() <= rng_range[1]
    narrow = (-200.0, 200.0)
    out = degrade(hu, DegradationParams(), narrow, np.random.default_rng(0))
    assert out.min() == -200.0 and out.max() == 200.0


def test_deterministic_for_a_seed(ct) -> None:
    hu, rng_range = ct
    levels = {"motion": 3.0, "respiratory_rate": 30.0, "heart_rate": 120.0}
    a = paired(hu, levels, "CT:CHEST", rng_range, np.random.default_rng(42), scale=2, noise_sigma=0.03)
    b = paired(hu, levels, "CT:CHEST", rng_range, np.random.default_rng(42), scale=2, noise_sigma=0.03)
    c = paired(hu, levels, "CT:CHEST", rng_range, np.random.default_rng(43), scale=2, noise_sigma=0.03)
    assert a[2] == b[2] and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and a[2].motion_angle_deg != c[2].motion_angle_deg


# --- bad inputs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "data_range", "message"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), (0, 1), "NaN or infinite"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), (0, 1), "NaN or infinite"),
        (np.zeros((0, 5)), (0, 1), "empty"),
        (np.zeros(16), (0, 1), "ndim=1"),
        (np.zeros((2, 4, 4, 1)), (0, 1), "ndim=4"),
        (np.zeros((4, 4)), (1.0, 1.0), "hi > lo"),
        (np.zeros((4, 4)), (2.0, 1.0), "hi > lo"),
        (np.zeros((4, 4)), (0.0, np.inf), "finite"),
        (np.zeros((4, 4)), (1.0,), "pair"),
        (np.array([["a", "b"]]), (0, 1), "numeric"),
    ],
)
def test_bad_inputs_raise(image: np.ndarray, data_range, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        degrade(image, DegradationParams(), data_range, np.random.default_rng())


def test_bad_params_raise() -> None:
    rng = np.random.default_rng()
    with pytest.raises(ValueError, match=r"scale must be one of \(1, 2, 4\)"):
        DegradationParams(scale=3)
    with pytest.raises(ValueError, match="scale must be one of"):
        params_from_context({}, "CT", rng, scale=8)
    with pytest.raises(ValueError, match="noise_sigma"):
        DegradationParams(noise_sigma=-0.1)
    with pytest.raises(ValueError, match="must be odd"):
        DegradationParams(motion_blur_px=4)
    with pytest.raises(ValueError, match="non-negative int"):
        DegradationParams(resp_blur_px=-3)
    with pytest.raises(ValueError, match="positive odd"):
        line_kernel(4, 0.0)
    with pytest.raises(ValueError, match="unsupported modality 'US'"):
        params_from_context({}, "US:CHEST", rng)
    with pytest.raises(ValueError, match="not finite"):
        params_from_context({"motion": float("nan")}, "CT", rng)
    with pytest.raises(ValueError, match="DegradationParams"):
        degrade(np.zeros((4, 4)), {"scale": 1}, (0, 1), rng)  # type: ignore[arg-type]
