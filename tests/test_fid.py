"""FID / IS: the math against direct scipy computations, and the ONNX loader with a stand-in network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import entropy
from skimage import data as skdata
from torch import nn
from torch.nn import functional as F

from gan.export import export_onnx
from gan.fid import (
    FEATURE_DIM,
    INPUT_SIZE,
    activation_statistics,
    fid_and_is,
    fid_from_features,
    frechet_distance,
    inception_score,
    load_inception,
)


def _random_covariance(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _scipy_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# ------------------------------------------------------------------------------------------------------ math


def test_frechet_distance_matches_scipy_sqrtm_on_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    for d in (1, 5, 32):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_covariance(rng, d), _random_covariance(rng, d)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)
        assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_closed_forms() -> None:
    # 1-D: (m1 − m2)² + (σ1 − σ2)²; commuting diagonal covariances: ‖μ1 − μ2‖² + Σ (√a − √b)².
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == pytest.approx(
        9.0 + 1.0
    )
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    expected = 3.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.ones(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_activation_statistics_and_fid_of_samples_converge() -> None:
    rng = np.random.default_rng(1)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = _random_covariance(rng, d), _random_covariance(rng, d)
    x1 = rng.multivariate_normal(mu1, s1, size=50_000)
    x2 = rng.multivariate_normal(mu2, s2, size=50_000)
    m, s = activation_statistics(x1)
    np.testing.assert_allclose(s, np.cov(x1, rowvar=False))
    assert frechet_distance(m, s, *activation_statistics(x2)) == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=0.05)
    with pytest.raises(ValueError, match="N >= 2"):
        activation_statistics(np.zeros((1, 3)))


def test_fid_from_features_equals_the_covariance_formula_with_few_or_many_samples() -> None:
    rng = np.random.default_rng(3)
    for n1, n2, d in ((7, 11, 40), (300, 250, 6)):  # rank-deficient, then full rank
        x1 = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
        x2 = rng.normal(size=(n2, d)) + 0.3
        expected = _scipy_fid(*activation_statistics(x1), *activation_statistics(x2))
        assert fid_from_features(x1, x2) == pytest.approx(expected, rel=1e-6)
    x = rng.normal(size=(12, FEATURE_DIM))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="same D"):
        fid_from_features(x, x[:, :5])


def test_inception_score_on_known_distributions() -> None:
    k = 10
    assert inception_score(np.zeros((50, k)), splits=5) == pytest.approx((1.0, 0.0))  # same p(y|x) for all: 1
    one_hot = np.eye(k)[np.arange(100) % k] * 60.0  # confident and evenly spread: k
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(120, 7))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    direct = [np.exp(np.mean([entropy(row, part.mean(axis=0)) for row in part])) for part in np.array_split(p, 4)]
    assert inception_score(logits, splits=4) == pytest.approx((np.mean(direct), np.std(direct)), rel=1e-9)
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits[:3], splits=4)


# ---------------------------------------------------------------------------------------------------- loader


class StandInFeatureNet(nn.Module):
    """NOT Inception: a tiny random network with Inception's I/O contract, only to test the ONNX plumbing."""

    def __init__(self, logits: int = 1008) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 13, stride=13)
        self.pool3 = nn.Linear(8, FEATURE_DIM)
        self.classes = nn.Linear(FEATURE_DIM, logits)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.pool3(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return pool[:, :, None, None], self.classes(pool)


def _export(tmp_path: Path, names: tuple[str, ...] = ("pool3", "logits")) -> tuple[Path, StandInFeatureNet]:
    torch.manual_seed(0)
    net = StandInFeatureNet().eval()
    example = (torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE),)
    axes = {"images": {0: "n"}} | {name: {0: "n"} for name in names}
    path = export_onnx(net, example, tmp_path / "stand-in.onnx", ["images"], list(names), dynamic_axes=axes)
    return path, net


@pytest.fixture(scope="module")
def camera_patches() -> torch.Tensor:
    """24 real 64×64 grey patches of scikit-image's camera photograph, in [−1, 1]."""
    camera = torch.from_numpy(skdata.camera().astype(np.float32) / 127.5 - 1.0)
    tiles = [camera[r : r + 64, c : c + 64] for r in range(96, 416, 80) for c in range(64, 448, 64)]
    return torch.stack(tiles)[:, None]


def test_stand_in_network_through_the_onnx_loader(tmp_path: Path, camera_patches: torch.Tensor) -> None:
    path, net = _export(tmp_path)
    network = load_inception(path)
    features, logits = network(camera_patches)
    with torch.no_grad():
        x = F.interpolate(camera_patches.expand(-1, 3, -1, -1), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear")
        pool, expected_logits = net(x)
    assert features.shape == (24, FEATURE_DIM) and logits is not None and logits.shape == (24, 1008)
    np.testing.assert_allclose(features, pool.flatten(1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, expected_logits.numpy(), rtol=1e-4, atol=1e-4)

    real, other = camera_patches[:12], camera_patches[12:]
    same = fid_and_is(real, real, network, splits=4)
    different = fid_and_is(real, other, network, splits=4)
    assert different["fid"] == pytest.approx(fid_from_features(features[:12], features[12:]), rel=1e-9)
    assert same["fid"] == pytest.approx(0.0, abs=1e-9)
    assert different["fid"] > 1e-3 and different["n_real"] == 12 and "fid_note" in different
    assert different["inception_score"] >= 1.0 and different["inception_file"] == str(path)


def test_unavailable_without_a_file_and_clear_errors(tmp_path: Path, camera_patches: torch.Tensor) -> None:
    result = fid_and_is(camera_patches, camera_patches, None)
    assert result["fid"] == "unavailable" and result["inception_score"] == "unavailable"
    assert "no Inception network file" in result["reason"]
    with pytest.raises(FileNotFoundError):
        load_inception(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="not a loadable ONNX graph"):
        load_inception(tmp_path / "garbage.onnx")
    wrong, _ = _export(tmp_path, ("features", "logits"))
    with pytest.raises(ValueError, match="no output named 'pool3'"):
        load_inception(wrong)


def test_is_unavailable_without_logits(tmp_path: Path, camera_patches: torch.Tensor) -> None:
    class PoolOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = StandInFeatureNet()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)[0]

    example = (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),)
    path = export_onnx(PoolOnly(), example, tmp_path / "pool-only.onnx", ["images"], ["pool3"],
                       dynamic_axes={"images": {0: "n"}, "pool3": {0: "n"}})  # fmt: skip
    result = fid_and_is(camera_patches[:12], camera_patches[12:], path)
    assert isinstance(result["fid"], float) and result["inception_score"] == "unavailable"
    assert "no 'logits' output" in result["reason"]
