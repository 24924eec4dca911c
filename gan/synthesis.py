"""Generation with the hybrid GAN (:mod:`gan.models.hybrid`): the stage table and the generator chain the server
runs (``POST /api/v1/synthesize``); no training here (that is :mod:`gan.train.hybrid`, which imports this module).

Chain (:func:`generate`): DCGAN coarse layout → cGAN (label + :func:`condition_image` of that layout) → the
:class:`~gan.models.hybrid.QualityCriteria` keep the best 20 % of 5× oversampled candidates per label → SRGAN ×2
(64×64 → 128×128). Every image leaves as a :class:`~gan.models.hybrid.SyntheticBatch` (``synthetic=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gan.models.hybrid import QualityCriteria, SyntheticBatch, sample

__all__ = ["STAGES", "condition_image", "generate", "layout", "load_generators"]

#: Stage name → (generator architecture, discriminator architecture).
STAGES: dict[str, tuple[str, str]] = {
    "dcgan": ("dcgan-generator", "cgan-discriminator"),
    "cgan": ("cgan-generator", "cgan-discriminator"),
    "srgan": ("srgan-generator", "cgan-discriminator"),
}
_LAYOUT = 8  # condition_image block size (pixels)


def condition_image(images: Tensor) -> Tensor:
    """The cGAN's conditioning image: the 8×8-pixel block-mean layout of ``images``, bilinearly upsampled back."""
    coarse = F.avg_pool2d(images, _LAYOUT)
    return F.interpolate(coarse, size=images.shape[-2:], mode="bilinear", align_corners=False)


def layout(batch: SyntheticBatch) -> SyntheticBatch:
    """:func:`condition_image` of a synthetic batch (still marked, same chain)."""
    return SyntheticBatch(condition_image(batch.images), batch.generator, labels=batch.labels)


def load_generators(root: str | Path | None, name: str = "hybrid-gan") -> dict[str, nn.Module]:
    """The three stage generators ``<name>-dcgan|cgan|srgan`` from the registry (sha256 checked), in eval mode."""
    from gan.registry import load_model

    models = {}
    for stage, (arch, _) in STAGES.items():
        model, card = load_model(root, f"{name}-{stage}")
        if card.architecture != arch:
            raise ValueError(f"{name}-{stage} is a {card.architecture!r}, expected {arch!r}")
        models[stage] = model
    return models


def generate(
    root: str | Path | None,
    n: int,
    labels: Sequence[int] | Tensor | int,
    seed: int = 0,
    *,
    name: str = "hybrid-gan",
    oversample: int = 5,
    keep: float = 0.2,
    refine: bool = True,
    generators: dict[str, nn.Module] | None = None,
) -> SyntheticBatch:
    """``n`` synthetic images through the full chain, with the criteria selection, deterministically for ``seed``.

    ``labels``: one label (0 no lesion, 1 lesion) for all, or ``n`` labels; the result keeps them in that order.
    For each label asked ``k`` times, ``oversample·k`` candidates (DCGAN layout → cGAN) are scored by
    :class:`~gan.models.hybrid.QualityCriteria` and the top ``keep`` fraction (``k`` images) is kept; ``oversample
    · keep`` must be 1 (default 5 × 20 %). With ``refine`` the SRGAN then maps them to 128×128 (else 64×64 cGAN
    output). Returns a :class:`SyntheticBatch` (N×3×128×128 or N×3×64×64 in [−1, 1], ``synthetic=True``).
    ``generators`` (from :func:`load_generators`) skips reloading the weights from ``root``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    wanted = torch.full((n,), int(labels)) if isinstance(labels, int) else torch.as_tensor(labels, dtype=torch.long)
    if wanted.shape != (n,):
        raise ValueError(f"labels must be one int or {n} values, got shape {tuple(wanted.shape)}")
    if abs(oversample * keep - 1.0) > 1e-9:
        raise ValueError(f"oversample × keep must be 1 (so exactly n images remain), got {oversample} × {keep}")
    models = generators or load_generators(root, name)
    classes = models["cgan"].num_classes
    if wanted.min() < 0 or wanted.max() >= classes:
        raise ValueError(f"labels must be in 0..{classes - 1}, got {sorted(set(wanted.tolist()))}")
    rng = torch.Generator().manual_seed(seed)
    criteria = QualityCriteria()
    images = None
    chain = ""
    for label in sorted(set(wanted.tolist())):
        where = (wanted == label).nonzero().flatten()
        count = oversample * len(where)
        coarse = sample(models["dcgan"], count, rng=rng)
        candidates = sample(models["cgan"], labels=torch.full((count,), label), condition=layout(coarse), rng=rng)
        kept, _ = criteria.select_top(candidates, keep)
        assert isinstance(kept, SyntheticBatch) and len(kept) == len(where)
        if refine:
            kept = sample(models["srgan"], condition=kept)
        chain = kept.generator
        if images is None:
            images = kept.images.new_empty((n, *kept.images.shape[1:]))
        images[where] = kept.images
    assert images is not None
    return SyntheticBatch(images, chain, labels=wanted)
