"""Training of the hybrid GAN (:mod:`gan.models.hybrid`) on real lesion / no-lesion patches.

Generation (the chain the server runs) is :mod:`gan.synthesis`, which this module imports, never the reverse.

Data: :func:`gan.lesions.lesion_patches` of the ``train`` and ``val`` subject splits (pyradiomics brain1 and breast1
MR, lung1 CT; the ``test`` subjects brain2 and lung2 are never used here and serve as held-out reference in
``bench.hybrid_gan``), 64×64, grey levels in [0, 1] mapped to [−1, 1] and replicated to 3 channels.

Stages (Adam lr 1e-4, β1 0.5, β2 0.999, batch 16 by default; BCE GAN losses from :mod:`gan.losses`):

1. **DCGAN** — :class:`~gan.models.hybrid.DCGANGenerator` from N(0, 1) noise against a
   :class:`~gan.models.hybrid.PairDiscriminator` with an empty condition and no labels (conv 64/128/256, no batch
   norm: a plain DCGAN discriminator).
2. **cGAN** — :class:`~gan.models.hybrid.ConditionalGenerator` (label embedding × noise, plus a conditioning
   image) against the label-projecting pair discriminator on ``cat(image, condition)``. The conditioning image is
   :func:`gan.synthesis.condition_image`: an 8×8 block-mean layout of a 64×64 image, upsampled back to 64×64
   (bilinear). In training it is the layout of the *real* patch the generator must produce (loss: adversarial +
   ``cgan_content_weight`` × L1 to that patch, as in pix2pix); in generation it is the layout of the DCGAN's coarse
   sample. Why: the DCGAN supplies plausible global anatomy (where tissue, background and bright structures are),
   the cGAN adds texture and the label-specific content. A layout this coarse (8-pixel blocks) cannot carry the
   detail of a lesion, so the label has to, and conditions built the same way from real and from DCGAN images look
   alike (both are smooth layouts), which keeps training and generation close.
3. **Criteria** — :class:`~gan.models.hybrid.QualityCriteria` (entropy, gradient, Laplacian variance; not
   trainable) keeps the top 20 % of the candidates of each label (:func:`gan.synthesis.generate` draws 5× the
   images asked for).
4. **SRGAN** — :class:`~gan.models.hybrid.SRGenerator` (×2) trained on real patches: 2×2 block mean of a 64×64
   patch (32×32) → the patch; loss = ``sr_content_weight`` × L1 + ``sr_perceptual_weight`` × perceptual +
   ``sr_adversarial_weight`` × adversarial (pair discriminator on ``cat(image, bilinear-upsampled input)``). The
   perceptual term compares feature maps of :meth:`gan.losses.FeatureNetwork.se_classifier`, the SE-CNN
   classifier's convolutional trunk (random weights unless ``--feature-network se-classifier:<registry name>``):
   **it is not VGG** (no VGG weights ship here). In generation the SRGAN maps the selected 64×64 images to
   **128×128**: a ×2 view of the same field (half the pixel spacing of the training patches).

Every generated image is a :class:`~gan.models.hybrid.SyntheticBatch` (``synthetic=True``, generator chain,
labels); sample grids written during training have ``synthetic`` in the file name, a red frame around every tile
and a JSON side file with ``"synthetic": true``. Outputs per stage under ``<out>/<name>-<stage>/``: the generator
(``model.safetensors`` + ``card.json`` via :func:`gan.registry.save_model`, saved every ``checkpoint_every`` steps
and at the end), ``loss-generator.png``, ``loss-discriminator.png``, ``history.json`` and
``samples-synthetic.png`` (+ ``.json``). CLI: ``python -m gan.train_hybrid [options]`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from gan import data as gdata
from gan.intensity import NORMALISATION
from gan.lesions import LesionPatches, lesion_patches
from gan.losses import FeatureNetwork, PerceptualLoss, discriminator_loss, generator_adversarial_loss
from gan.models.hybrid import SyntheticBatch, sample
from gan.synthesis import STAGES, condition_image, layout
from gan.train.plots import write_loss_curve, write_synthetic_grid
from gan.train.scaffold import (
    Progress,
    add_options,
    cli_option,
    command_line,
    config_from_args,
    torch_threads,
    write_history,
)

__all__ = ["HybridConfig", "main", "to_model_range", "train_hybrid"]

_NORMALISATION = (
    f"gan.lesions patches ([0, 1]: {NORMALISATION}; CT: the lung window) mapped to [-1, 1] (2x - 1), grey level "
    "replicated to 3 channels"
)


@dataclass
class HybridConfig:
    """Everything :func:`train_hybrid` needs (stored in the model cards); the :func:`cli_option` fields are the
    options of ``python -m gan.train_hybrid``."""

    out: str = cli_option("var/train", help="registry root for <name>-dcgan|cgan|srgan (e.g. gan/weights)")
    name: str = cli_option("hybrid-gan")  # stage directories are <name>-dcgan, <name>-cgan, <name>-srgan
    splits: tuple[str, ...] = cli_option(("train", "val"), help="gan.lesions splits to train on (never test)")
    per_subject: int = cli_option(300)
    patch_seed: int = cli_option(0)
    dcgan_steps: int = cli_option(3000)
    cgan_steps: int = cli_option(3000)
    srgan_steps: int = cli_option(600)
    batch_size: int = cli_option(16)
    lr: float = cli_option(1e-4)
    beta1: float = cli_option(0.5)
    seed: int = cli_option(0)
    cgan_content_weight: float = cli_option(10.0)
    sr_content_weight: float = cli_option(1.0)
    sr_perceptual_weight: float = cli_option(10.0)
    sr_adversarial_weight: float = cli_option(1e-3)
    feature_network: str = cli_option(
        "se-classifier", help="se-classifier (random trunk) or se-classifier:<registry name>; not VGG"
    )
    sr_channels: int = 32
    sr_blocks: int = 6
    checkpoint_every: int = cli_option(250)
    log_every: int = cli_option(50)
    threads: int | None = cli_option(None, type=int, help="torch intra-op threads")
    command: str | None = None

    def stage_name(self, stage: str) -> str:
        """Registry name of a stage's generator, e.g. ``hybrid-gan-cgan``."""
        return f"{self.name}-{stage}"


# ---------------------------------------------------------------------------------------------------- tensors


def to_model_range(patches: LesionPatches) -> tuple[Tensor, Tensor]:
    """``(images N×3×H×W in [−1, 1], labels N int64)`` from lesion patches in [0, 1]."""
    images = torch.from_numpy(patches.images).mul(2.0).sub(1.0)[:, None].expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(patches.labels)


def _grey01(images: Tensor) -> Tensor:
    """N×3×H×W in [−1, 1] → N×1×H×W in [0, 1] (channel mean): the perceptual network's input."""
    return (images.mean(dim=1, keepdim=True) + 1.0) / 2.0


# --------------------------------------------------------------------------------------------------- training


def _stage_models(stage: str, config: HybridConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Constructor configs of a stage's (generator, discriminator)."""
    if stage == "dcgan":
        return {}, {"condition_channels": 0, "num_classes": 0}
    if stage == "cgan":
        return {}, {}
    return {"channels": config.sr_channels, "num_blocks": config.sr_blocks}, {"num_classes": 0}


def _card(config: HybridConfig, stage: str, subjects: list[str], scores: dict[str, float]) -> dict[str, Any]:
    what = {
        "dcgan": "DCGAN stage: coarse 64x64 images from N(0, 1) noise (unconditional)",
        "cgan": "cGAN stage: label (0 no lesion, 1 lesion) + conditioning image (8x8 block-mean layout, upsampled)",
        "srgan": "SRGAN stage: x2 refinement 64x64 -> 128x128; perceptual loss on the SE-CNN trunk "
        f"({config.feature_network}), not VGG",
    }[stage]
    return {
        "version": "0.1.0",
        "training": {
            "data": {
                "patches": "gan.lesions.lesion_patches, 64x64, balanced lesion / no lesion",
                "splits": list(config.splits),
                "subjects": subjects,
                "per_subject": config.per_subject,
                "patch_seed": config.patch_seed,
            },
            "command": config.command or f"gan.train_hybrid({config!r})",
            "seed": config.seed,
        },
        "metrics": scores,
        "input": {
            "channels": 3,
            "scale": 2 if stage == "srgan" else 1,
            "context_size": 0,
            "normalisation": _NORMALISATION,
            "output_range": "[-1, 1] (tanh)",
        },
        "synthetic_output": True,
        "notes": f"{what}. Adam lr {config.lr}, beta1 {config.beta1}, batch {config.batch_size}. Outputs are "
        "synthetic images: never for diagnosis, never sent to a clinical PACS. Metrics are training-loss means over "
        "the last 100 steps (no quality claim); see bench.hybrid_gan.",
    }


class _Stage:
    """One adversarial stage: generator, discriminator, their optimisers, loss history, checkpoints."""

    def __init__(self, stage: str, config: HybridConfig, subjects: list[str]) -> None:
        from gan.models import build

        self.stage, self.config, self.subjects = stage, config, subjects
        g_arch, d_arch = STAGES[stage]
        self.g_config, self.d_config = _stage_models(stage, config)
        self.generator = build(g_arch, **self.g_config)
        self.discriminator = build(d_arch, **self.d_config)
        betas = (config.beta1, 0.999)
        self.g_optim = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas)
        self.d_optim = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=betas)
        self.history: list[dict[str, float]] = []
        self.directory = Path(config.out) / config.stage_name(stage)

    def step(self, d_loss: Tensor, g_loss_fn: Any) -> None:
        """One discriminator update on ``d_loss``, then one generator update on ``g_loss_fn()``."""
        self.d_optim.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optim.step()
        self.discriminator.requires_grad_(False)
        g_loss, parts = g_loss_fn()
        self.g_optim.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_optim.step()
        self.discriminator.requires_grad_(True)
        record = {"generator": float(g_loss.detach()), "discriminator": float(d_loss.detach()), **parts}
        if not all(np.isfinite(list(record.values()))):
            raise FloatingPointError(f"{self.stage}: non-finite loss at step {len(self.history) + 1}: {record}")
        self.history.append(record)

    def scores(self) -> dict[str, float]:
        recent = self.history[-100:]
        return {f"{k}_loss": float(np.mean([h[k] for h in recent])) for k in recent[0]} if recent else {}

    def save(self) -> Path:
        """Checkpoint the generator (weights + card) into its registry directory."""
        from gan.registry import save_model

        g_arch = STAGES[self.stage][0]
        card = _card(self.config, self.stage, self.subjects, self.scores() | {"steps": float(len(self.history))})
        return save_model(self.generator, self.config.out, self.config.stage_name(self.stage), g_arch,
                          self.g_config, card)  # fmt: skip

    def finish(self, samples: SyntheticBatch) -> None:
        """Final checkpoint, loss curves, history and a marked sample grid."""
        self.save()
        for key in ("generator", "discriminator"):
            write_loss_curve(self.directory / f"loss-{key}.png", [h[key] for h in self.history], [], [])
        write_history(self.directory / "history.json", self.config, stage=self.stage, losses=self.history)
        write_synthetic_grid(self.directory / "samples-synthetic.png", samples)


def _run(stage: _Stage, steps: int, update: Callable[[int], None]) -> None:
    """``steps`` calls of ``update(step)`` with progress output and periodic checkpoints."""
    config = stage.config
    progress = Progress(steps, config.log_every)
    stage.generator.train()
    stage.discriminator.train()
    for step in range(1, steps + 1):
        update(step)
        last = stage.history[-1]
        rate = progress.advance(step, g=f"{last['generator']:.3f}", d=f"{last['discriminator']:.3f}")
        if rate is not None:
            recent = stage.history[-config.log_every :]
            detail = ", ".join(f"{k} {np.mean([h[k] for h in recent]):.4f}" for k in last)
            print(f"{stage.stage} step {step}/{steps}: {detail} ({rate:.1f} it/s)", file=sys.stderr, flush=True)
        if step % config.checkpoint_every == 0:
            stage.save()
    progress.close()


def _batches(images: Tensor, labels: Tensor, batch_size: int, rng: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless random mini-batches (epochs of a fresh permutation)."""
    while True:
        order = torch.randperm(len(images), generator=rng)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield images[idx], labels[idx]


def train_hybrid(config: HybridConfig, patches: LesionPatches | None = None) -> dict[str, Path]:
    """Train the DCGAN, cGAN and SRGAN stages in order; return each stage's registry directory.

    ``patches`` defaults to :func:`gan.lesions.lesion_patches` of ``config.splits`` (test subjects refused).
    """
    with torch_threads(config.threads):
        return _train(config, patches)


def _load_patches(config: HybridConfig) -> LesionPatches:
    if "test" in config.splits:
        raise ValueError("the test split (held-out subjects) must never be used for training")
    volumes = gdata.load_pyradiomics()
    parts = [lesion_patches(s, per_subject=config.per_subject, seed=config.patch_seed, volumes=volumes)
             for s in config.splits]  # fmt: skip
    return LesionPatches(
        images=np.concatenate([p.images for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        subjects=[s for p in parts for s in p.subjects],
        modalities=[m for p in parts for m in p.modalities],
    )


def _train(config: HybridConfig, patches: LesionPatches | None) -> dict[str, Path]:
    torch.manual_seed(config.seed)
    rng = torch.Generator().manual_seed(config.seed)
    patches = patches if patches is not None else _load_patches(config)
    held = sorted(set(patches.subjects) & gdata.HELD_OUT_TEST_SUBJECTS)
    if held:
        raise ValueError(f"held-out test subjects must never be used for training: {held}")
    if patches.images.shape[1:] != (64, 64):
        raise ValueError(f"the hybrid GAN trains on 64×64 patches, got {patches.images.shape[1:]}")
    images, labels = to_model_range(patches)
    subjects = sorted(set(patches.subjects))
    batches = _batches(images, labels, config.batch_size, rng)
    preview = torch.Generator().manual_seed(config.seed + 1)
    preview_labels = torch.arange(16) % 2
    out: dict[str, Path] = {}

    # Stage 1: DCGAN.
    dc = _Stage("dcgan", config, subjects)

    def dcgan_update(_step: int) -> None:
        real, _ = next(batches)
        empty = real[:, :0]  # no condition: the pair discriminator sees the image alone
        fake = dc.generator(torch.randn(len(real), dc.generator.noise_dim, generator=rng))
        d_loss = discriminator_loss(dc.discriminator(real, empty), dc.discriminator(fake.detach(), empty))
        dc.step(d_loss, lambda: (generator_adversarial_loss(dc.discriminator(fake, empty)), {}))

    _run(dc, config.dcgan_steps, dcgan_update)
    dc.finish(sample(dc.generator, 16, rng=preview))
    out["dcgan"] = dc.directory

    # Stage 2: cGAN (condition = layout of the real patch in training).
    cg = _Stage("cgan", config, subjects)

    def cgan_update(_step: int) -> None:
        real, y = next(batches)
        cond = condition_image(real)
        fake = cg.generator(torch.randn(len(real), cg.generator.noise_dim, generator=rng), y, cond)
        d_loss = discriminator_loss(cg.discriminator(real, cond, y), cg.discriminator(fake.detach(), cond, y))

        def g_loss() -> tuple[Tensor, dict[str, float]]:
            adversarial = generator_adversarial_loss(cg.discriminator(fake, cond, y))
            content = F.l1_loss(fake, real)
            parts = {"adversarial": float(adversarial.detach()), "content": float(content.detach())}
            return adversarial + config.cgan_content_weight * content, parts

        cg.step(d_loss, g_loss)

    _run(cg, config.cgan_steps, cgan_update)
    coarse = sample(dc.generator, 16, rng=preview)
    cg.finish(sample(cg.generator, labels=preview_labels, condition=layout(coarse), rng=preview))
    out["cgan"] = cg.directory

    # Stage 4: SRGAN (stage 3, the criteria, has nothing to train).
    sr = _Stage("srgan", config, subjects)
    perceptual = PerceptualLoss(FeatureNetwork.from_spec(config.feature_network))

    def srgan_update(_step: int) -> None:
        hr, _ = next(batches)
        lr_img = F.avg_pool2d(hr, 2)
        cond = F.interpolate(lr_img, scale_factor=2, mode="bilinear", align_corners=False)
        fake = sr.generator(lr_img)
        d_loss = discriminator_loss(sr.discriminator(hr, cond), sr.discriminator(fake.detach(), cond))

        def g_loss() -> tuple[Tensor, dict[str, float]]:
            adversarial = generator_adversarial_loss(sr.discriminator(fake, cond))
            content = F.l1_loss(fake, hr)
            feature = perceptual(_grey01(fake), _grey01(hr))
            total = (
                config.sr_content_weight * content
                + config.sr_perceptual_weight * feature
                + config.sr_adversarial_weight * adversarial
            )
            parts = {"content": float(content.detach()), "perceptual": float(feature.detach()),
                     "adversarial": float(adversarial.detach())}  # fmt: skip
            return total, parts

        sr.step(d_loss, g_loss)

    _run(sr, config.srgan_steps, srgan_update)
    cgan_out = sample(cg.generator, labels=preview_labels, condition=layout(coarse), rng=preview)
    sr.finish(sample(sr.generator, condition=cgan_out))
    out["srgan"] = sr.directory
    return out


# -------------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gan.train_hybrid", description=__doc__.split("\n")[0])
    add_options(parser, HybridConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gan.train_hybrid ...``: train the three stages, print their directories as JSON, return 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    config = config_from_args(HybridConfig, parser.parse_args(argv), command=command_line(parser, argv))
    started = time.perf_counter()
    directories = train_hybrid(config)
    summary = {k: str(v) for k, v in directories.items()} | {"seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary, indent=2))
    return 0
