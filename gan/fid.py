"""FID and Inception Score from a USER-SUPPLIED Inception network; without one they are ``"unavailable"``.

Nothing is downloaded and torchvision is not needed. The network file is an **ONNX** graph with

- one input: float32 ``N×3×299×299``, RGB, values in **[−1, 1]** (``2·x − 1`` for x in [0, 1]; the input
  convention of the TF-slim Inception-v3 that FID was defined with — the graph must not normalise again);
- an output named ``pool3``: the 2048-d pool-3 features (``N×2048`` or ``N×2048×1×1``), used for FID;
- optionally an output named ``logits``: ``N×1008`` (TF Inception) or ``N×1000`` (torchvision), used for IS
  (softmax over all given classes). Without it IS is ``"unavailable"``.

E.g. export pytorch-fid's ``FIDInceptionA``-based InceptionV3 with ``normalize_input=False`` as
``torch.onnx.export(model, x, "inception.onnx", input_names=["images"], output_names=["pool3", "logits"],
dynamic_axes={"images": {0: "n"}})`` (adapt the forward to return both). Images given here (N×C×H×W in [−1, 1],
C = 1 or 3, any size) are replicated to 3 channels if grey and resized bilinearly (``align_corners=False``) to
299×299 before the network.

FID = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½), with Tr (Σ₁Σ₂)^½ computed as Σ √λᵢ of the symmetric
Σ₁^½ Σ₂ Σ₁^½ (equal in exact arithmetic, numerically robust); from features with fewer images than dimensions,
as the nuclear norm of the N₂×N₁ cross-product (:func:`fid_from_features`). Covariances are unbiased (N − 1).
With fewer than 2048 images Σ is rank-deficient and FID is biased upwards: the sample counts are reported next to
it, so compare FIDs only at equal counts.
IS = exp(E_x KL(p(y|x) ‖ p(y))) per split, mean and standard deviation over ``splits`` equal splits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "InceptionNetwork",
    "activation_statistics",
    "fid_and_is",
    "fid_from_features",
    "frechet_distance",
    "inception_score",
    "load_inception",
]

INPUT_SIZE = 299
FEATURE_DIM = 2048
UNAVAILABLE = "unavailable"


class InceptionNetwork:
    """An ONNX Inception network of the contract above, run with ONNX Runtime (CPU)."""

    def __init__(self, path: str | Path, threads: int = 1, batch_size: int = 32) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Inception network file {self.path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise ValueError(f"{self.path} is not a loadable ONNX graph: {exc}") from None
        inputs = self.session.get_inputs()
        outputs = {o.name for o in self.session.get_outputs()}
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one input, found {[i.name for i in inputs]}")
        if "pool3" not in outputs:
            raise ValueError(f"{self.path}: no output named 'pool3' (outputs: {sorted(outputs)})")
        self.input_name = inputs[0].name
        self.has_logits = "logits" in outputs
        self.batch_size = batch_size

    def __call__(self, images: Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """``(pool3 N×2048 float64, logits N×K float64 or None)`` for N×C×H×W images in [−1, 1]."""
        import torch
        from torch.nn import functional as F

        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected N×1×H×W or N×3×H×W images, got {tuple(images.shape)}")
        names = ["pool3", "logits"] if self.has_logits else ["pool3"]
        features, logits = [], []
        for start in range(0, images.shape[0], self.batch_size):
            x = images[start : start + self.batch_size].detach().to("cpu", torch.float32).clamp(-1, 1)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            out = self.session.run(names, {self.input_name: x.contiguous().numpy()})
            pool = out[0].reshape(out[0].shape[0], -1)
            if pool.shape[1] != FEATURE_DIM:
                raise ValueError(f"{self.path}: pool3 has {pool.shape[1]} features, expected {FEATURE_DIM}")
            features.append(pool.astype(np.float64))
            if self.has_logits:
                logits.append(out[1].reshape(out[1].shape[0], -1).astype(np.float64))
        return np.concatenate(features), (np.concatenate(logits) if self.has_logits else None)


def load_inception(path: str | Path, threads: int = 1) -> InceptionNetwork:
    """Open a user-supplied Inception ONNX file (see the module docstring for the expected inputs/outputs)."""
    return InceptionNetwork(path, threads=threads)


def activation_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (N − 1) of N×D features (float64); needs N >= 2."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an N×D feature matrix with N >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Σ symmetric positive semi-definite)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes do not match: μ {mu1.shape} {mu2.shape}, Σ {sigma1.shape} {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two N×D feature sets; exact also when N < D (rank-deficient covariances).

    With centred, scaled features Aᵢ = (Xᵢ − μᵢ)/√(Nᵢ − 1) (so Σᵢ = AᵢᵀAᵢ), Tr (Σ₁Σ₂)^½ is the nuclear norm of
    A₂A₁ᵀ (an N₂×N₁ matrix): no D×D square root, no rounding noise from its ~D zero eigenvalues. When both sets
    are larger than D, :func:`frechet_distance` of the statistics is used instead (cheaper).
    """
    x1, x2 = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1] or min(len(x1), len(x2)) < 2:
        raise ValueError(f"need two N×D feature sets with the same D and N >= 2, got {x1.shape} and {x2.shape}")
    if min(len(x1), len(x2)) > x1.shape[1]:
        return frechet_distance(*activation_statistics(x1), *activation_statistics(x2))
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    a1 = (x1 - mu1) / math.sqrt(len(x1) - 1)
    a2 = (x2 - mu2) / math.sqrt(len(x2) - 1)
    trace_sqrt = float(np.linalg.svd(a2 @ a1.T, compute_uv=False).sum())
    diff = mu1 - mu2
    return float(diff @ diff + (a1 * a1).sum() + (a2 * a2).sum() - 2.0 * trace_sqrt)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """``(mean, std)`` of exp(E KL(p(y|x) ‖ p(y))) over ``splits`` equal splits of N×K logits (softmax inside)."""
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or z.shape[0] < splits or splits < 1:
        raise ValueError(f"need N×K logits with N >= splits >= 1, got shape {z.shape} and {splits} splits")
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        p = np.exp(part)
        log_marginal = np.log(p.mean(axis=0))
        scores.append(math.exp(float(np.mean((p * (part - log_marginal)).sum(axis=1)))))
    return float(np.mean(scores)), float(np.std(scores))


def fid_and_is(
    real: Tensor, fake: Tensor, inception: str | Path | InceptionNetwork | None, splits: int = 10
) -> dict[str, Any]:
    """FID(real, fake) and IS(fake), or ``"unavailable"`` with the reason (no file, no logits, too few images)."""
    result: dict[str, Any] = {"n_real": int(real.shape[0]), "n_fake": int(fake.shape[0])}
    if inception is None:
        reason = "no Inception network file given (--inception FILE, an ONNX graph; see gan/fid.py)"
        return result | {"fid": UNAVAILABLE, "inception_score": UNAVAILABLE, "reason": reason}
    network = inception if isinstance(inception, InceptionNetwork) else load_inception(inception)
    real_features, _ = network(real)
    fake_features, fake_logits = network(fake)
    result["fid"] = fid_from_features(real_features, fake_features)
    if min(len(real_features), len(fake_features)) < FEATURE_DIM:
        result["fid_note"] = f"fewer than {FEATURE_DIM} images per set: covariances are rank-deficient, FID biased up"
    if fake_logits is None:
        result |= {"inception_score": UNAVAILABLE, "reason": f"{network.path} has no 'logits' output"}
    elif len(fake_logits) < splits:
        result |= {"inception_score": UNAVAILABLE, "reason": f"fewer fake images than IS splits ({splits})"}
    else:
        result["inception_score"], result["inception_score_std"] = inception_score(fake_logits, splits)
    result["inception_file"] = str(network.path)
    return result
