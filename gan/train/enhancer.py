"""Training of the context-conditioned enhancer on real images with simulated, vitals-driven degradation.

Data: :mod:`gan.train.data` (pairs of real slices split by subject, degraded from sampled vitals).

Training (:func:`train_enhancer`): Adam with linear warm-up and cosine decay (:meth:`TrainConfig.learning_rate`),
an EMA of the weights (what is validated and saved), fixed seeds, validation PSNR/SSIM (vs bicubic, overall and
for still / blurred pairs) every ``val_every`` steps on fixed val pairs, the lowest-val-loss step checkpointed
through :func:`gan.registry.save_model` with a model card, early stopping on the smoothed val loss, loss curves
as PNG. ``conditioning`` ("alpha", "film", "none") and ``blind`` (context zeroed) give the variants the benchmark
compares. CLI: ``python -m gan.train enhancer --steps N --out DIR --conditioning alpha|film|none [--blind] --seed S``
(:func:`main`; the shipped recipe is in ``docs/training.md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core import CONTEXT_SIZE
from gan import data as gdata
from gan import metrics
from gan.degrade import DegradationParams
from gan.intensity import NORMALISATION
from gan.losses import EnhancerLoss, FeatureNetwork, discriminator_loss
from gan.train.data import BLUR_GROUPS, PairBatch, blur_px, make_pairs, prepare_slices, training_splits
from gan.train.scaffold import (
    RunResult,
    add_options,
    cli_option,
    command_line,
    config_from_args,
    run_steps,
    snapshot,
    torch_threads,
)

__all__ = ["DEFAULT_LOSS_WEIGHTS", "TrainConfig", "TrainResult", "main", "train_enhancer"]

#: Loss weights of the first (non-adversarial) stage.
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"l1": 1.0, "ssim": 0.5, "mse": 0.0}


@dataclass
class TrainConfig:
    """Everything :func:`train_enhancer` needs (stored in the model card); the :func:`cli_option` fields are options
    of ``python -m gan.train enhancer``."""

    out: str = cli_option("var/train", help="output root (checkpoint directory, loss PNG, history)")
    name: str | None = cli_option(None, help="model name (default enhancer-<conditioning>[-blind]-x<scale>)")
    datasets: tuple[str, ...] = cli_option(
        ("pydicom", "mni152", "pyradiomics"), flag="--data", help="comma-separated gan.data datasets"
    )
    modalities: tuple[str, ...] = cli_option(("CT", "MR"))
    split_seed: int = cli_option(0)
    scale: int = cli_option(2, choices=(2, 4))
    patch: int = cli_option(64, help="HR patch side")  # LR is patch / scale
    batch_size: int = cli_option(16)
    steps: int = cli_option(1000)
    lr: float = cli_option(5e-4, help="peak learning rate")  # after the warm-up
    # "cosine": linear warm-up, then cosine decay to lr·final_lr_fraction; "constant"
    lr_schedule: str = cli_option("cosine", choices=("cosine", "constant"))
    warmup_steps: int = cli_option(200, help="linear warm-up (at most steps / 10)")
    final_lr_fraction: float = cli_option(0.02, help="cosine floor / peak")
    # EMA of the weights (what is validated and saved)
    ema_decay: float = cli_option(0.999, help="EMA of the weights; 0 = off")
    seed: int = cli_option(0)
    conditioning: str = cli_option("alpha", choices=("alpha", "film", "none", "gated"))
    # zero the context (train and val)
    blind: bool = cli_option(False, help="zero the context vector (the no-vitals baseline)")
    channels: int = cli_option(32)
    n_blocks: int = cli_option(4, flag="--blocks")
    # "transposed": the paper's (lowres trunk only)
    upsampler: str = cli_option("pixelshuffle", choices=("pixelshuffle", "transposed", "resize"))
    # "unshuffle": the same blocks at half the LR resolution (about 4.6x fewer FLOPs)
    trunk: str = cli_option("lowres", choices=("lowres", "unshuffle"))
    gate_kernel: int = cli_option(3, choices=(1, 3))  # attention gate conv kernel (1: a per-pixel channel mix)
    # "direct": the last upsampling stage outputs the image (no output-resolution conv)
    tail: str = cli_option("conv", choices=("conv", "direct"))
    # "map": Immerkær noise-level channels from the input (gan.models.enhancer)
    noise_input: str = cli_option(
        "none", choices=("none", "map"),
        help="'map': local and global noise-level channels estimated from the input enter the head",
    )  # fmt: skip
    # "nyquist": a fixed low-pass on the residual, zero at Nyquist (gan.models.enhancer.NyquistFilter)
    residual_filter: str = cli_option(
        "none", choices=("none", "nyquist"), help="'nyquist': fixed 5-tap low-pass on the residual (no checkerboard)"
    )
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))  # --<term>-weight
    perceptual_weight: float = cli_option(0.0)
    feature_network: str = cli_option(
        "se-classifier",
        help="se-classifier (random trunk), se-classifier:<registry name> (gan/weights), "
        "se-classifier:<root>/<name>, or a VGG-19 state-dict file",
    )
    adversarial_weight: float = cli_option(0.0)
    adversarial_mode: str = cli_option("bce", choices=("bce", "hinge"))
    d_lr: float = 1e-4
    noise_sigma: tuple[float, float] = (0.01, 0.03)
    missing_prob: float = 0.2
    # contexts that do not match the image (make_pairs mismatch), in training and val pairs alike
    context_mismatch: float = cli_option(
        0.0, help="fraction of pairs whose context shows other vitals than those that degraded the image"
    )
    # patches preferring texture; the rest uniform crops (see make_pairs)
    textured_fraction: float = cli_option(
        0.5, help="fraction of patches cropped where the image is textured (the rest: uniform random crops)"
    )
    # training patches turned by a random flip/rotation (make_pairs dihedral); val never
    augment: bool = cli_option(
        False,
        help="turn each training patch by a random flip/rotation (one of 8) before degrading it; val pairs never",
    )
    val_every: int = cli_option(250)
    val_pairs: int = cli_option(256)
    val_seed: int = 0  # val pairs depend on this only: every variant and training seed sees the same ones
    # validations without improvement of the SMOOTHED val loss before stopping
    patience: int = cli_option(8, help="validations without smoothed improvement")
    # smoothed = s · smoothed + (1 − s) · val loss (early stopping only)
    val_smoothing: float = cli_option(0.6, help="EMA factor of the val loss")
    log_every: int = cli_option(50)
    # > 0: draw batches from this many pairs made once (else fresh pairs every step)
    train_pool: int = cli_option(0, help="> 0: reuse this many pairs")
    # torch intra-op threads for this run (restored afterwards)
    threads: int | None = cli_option(None, type=int, help="torch intra-op threads")
    command: str | None = None

    @property
    def model_name(self) -> str:
        return self.name or f"enhancer-{self.conditioning}{'-blind' if self.blind else ''}-x{self.scale}"

    def model_config(self) -> dict[str, Any]:
        """Constructor kwargs of the ``enhancer`` architecture."""
        return {
            "in_channels": 1,
            "scale": self.scale,
            "channels": self.channels,
            "n_blocks": self.n_blocks,
            "conditioning": self.conditioning,
            "upsampler": self.upsampler,
            "trunk": self.trunk,
            "gate_kernel": self.gate_kernel,
            "tail": self.tail,
            "noise_input": self.noise_input,
            "residual_filter": self.residual_filter,
        }

    def learning_rate(self, step: int) -> float:
        """Learning rate at ``step`` (1-based): linear warm-up, then cosine decay (or constant)."""
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule != "cosine":
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        warmup = min(self.warmup_steps, self.steps // 10)
        if step <= warmup:
            return self.lr * step / warmup
        progress = (step - warmup) / max(self.steps - warmup, 1)
        floor = self.lr * self.final_lr_fraction
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class TrainResult(RunResult):
    """What an enhancer run produced (:class:`~gan.train.scaffold.RunResult`) and the subjects it trained and
    validated on."""

    config: TrainConfig
    train_subjects: list[str]
    val_subjects: list[str]


# ---------------------------------------------------------------------------------------------------- validation


def _psnr_ssim(hr: np.ndarray, out: np.ndarray, params: Sequence[DegradationParams], prefix: str) -> dict[str, float]:
    """Mean PSNR / SSIM over N×1×H×W pairs (data range 1), plus mean PSNR per :data:`BLUR_GROUPS` group.

    A pair reproduced exactly (air windowed to 0 has no signal-dependent noise, so its LR, bicubic and HR are all
    0) has an infinite PSNR; it is left out of the PSNR means (its SSIM counts).
    """
    psnrs = np.array([metrics.psnr(hr[j, 0], out[j, 0], 1.0) for j in range(len(hr))])
    ssims = [metrics.ssim(hr[j, 0], out[j, 0], 1.0) for j in range(len(hr))]
    blur = np.array([blur_px(p) for p in params])
    finite = np.isfinite(psnrs)
    scores = {f"{prefix}_psnr": float(psnrs[finite].mean()), f"{prefix}_ssim": float(np.mean(ssims))}
    for group, (lo, hi) in BLUR_GROUPS.items():
        chosen = (blur >= lo) & (blur <= hi) & finite
        if chosen.any():
            scores[f"{prefix}_psnr_{group}"] = float(psnrs[chosen].mean())
    return scores


def _evaluate(
    model: nn.Module, val: PairBatch, content: EnhancerLoss, blind: bool, batch: int = 32
) -> dict[str, float]:
    """Val content loss, PSNR and SSIM (output clamped to [0, 1], data range 1), mean over the val pairs."""
    was_training = model.training
    model.eval()
    losses, outs = [], []
    with torch.no_grad():
        for i in range(0, len(val), batch):
            lr, hr, ctx = val.lr[i : i + batch], val.hr[i : i + batch], val.context[i : i + batch]
            sr = model(lr, torch.zeros_like(ctx) if blind else ctx)
            total, _ = content(sr, hr)
            losses.append(float(total) * lr.shape[0])
            outs.append(sr.clamp(0.0, 1.0).numpy())
    model.train(was_training)
    return {"val_loss": sum(losses) / len(val)} | _psnr_ssim(val.hr.numpy(), np.concatenate(outs), val.params, "val")


def _bicubic(model: nn.Module, val: PairBatch) -> dict[str, float]:
    """PSNR/SSIM of the bicubic upsampling of the val LR patches (the enhancer's global-residual base)."""
    with torch.no_grad():
        up = model.base(val.lr).clamp(0.0, 1.0).numpy()
    return _psnr_ssim(val.hr.numpy(), up, val.params, "bicubic")


def _card(config: TrainConfig, train_subjects: list[str], val_subjects: list[str], scores: dict[str, float]):
    content = {**config.loss_weights, "perceptual": config.perceptual_weight, "adversarial": config.adversarial_weight}
    return {
        "version": "0.1.0",
        "training": {
            "data": {
                "datasets": list(config.datasets),
                "modalities": list(config.modalities),
                "split": f"gan.data.split by subject, seed {config.split_seed}; held-out test subjects excluded",
                "train_subjects": train_subjects,
                "val_subjects": val_subjects,
                "degradation": (
                    f"gan.degrade from sampled vitals (true levels), x{config.scale} block mean, "
                    f"noise sigma U{tuple(config.noise_sigma)}, channels missing p={config.missing_prob}; "
                    f"{config.patch}-px HR patches, {config.textured_fraction:g} of them texture-preferring"
                    + ("; random flips/rotations" if config.augment else "")
                ),
            },
            "command": config.command or f"gan.train_enhancer({config!r})",
            "seed": config.seed,
        },
        "metrics": scores,
        "input": {
            "channels": 1,
            "scale": config.scale,
            "context_size": CONTEXT_SIZE,
            "normalisation": NORMALISATION,
            "context": "zeroed (blind variant)" if config.blind else "core.context vector",
        },
        "synthetic_output": True,
        "notes": (
            f"loss weights {content}; conditioning {config.conditioning}{' (blind)' if config.blind else ''}; "
            "metrics on the val split (patches of the val subjects, data range 1). Trained on simulated "
            "degradation: not validated on real low-quality acquisitions."
        ),
    }


# ------------------------------------------------------------------------------------------------------ training


def train_enhancer(config: TrainConfig, volumes: Sequence[gdata.Volume] | None = None) -> TrainResult:
    """Train the ``enhancer`` on ``volumes`` (default: ``config.datasets`` loaded) and save the best checkpoint.

    Training pairs are drawn fresh every step from the train split (or from a fixed pool of ``train_pool``
    pairs); validation uses ``config.val_pairs`` fixed pairs of the val split. Returns a :class:`TrainResult`;
    files go to ``<out>/<name>/`` (weights, card) and ``<out>/<name>.loss.png`` / ``<out>/<name>.history.json``.
    """
    with torch_threads(config.threads):
        return _train(config, volumes)


def _train(config: TrainConfig, volumes: Sequence[gdata.Volume] | None) -> TrainResult:
    from gan.models import build
    from gan.registry import save_model

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if volumes is None:
        volumes = [v for name in config.datasets for v in gdata.load(name)]
    volumes = [v for v in volumes if v.modality in config.modalities and not v.is_rgb]
    parts = training_splits(volumes, seed=config.split_seed)
    train_slices = prepare_slices(parts["train"], config.modalities)
    val_slices = prepare_slices(parts["val"], config.modalities)
    if not train_slices or not val_slices:
        raise ValueError("the train and the val split both need at least one usable slice")
    train_subjects = sorted({s.subject for s in train_slices})
    val_subjects = sorted({s.subject for s in val_slices})
    pair_kw = {
        "patch": config.patch,
        "noise_sigma": tuple(config.noise_sigma),
        "missing_prob": config.missing_prob,
        "textured_fraction": config.textured_fraction,
        "mismatch": config.context_mismatch,
    }
    val = make_pairs(val_slices, config.scale, np.random.default_rng(config.val_seed), config.val_pairs, **pair_kw)

    model = build("enhancer", **config.model_config())
    model.train()
    # The EMA copy is what is validated and saved (the raw model when ema_decay is 0).
    averaged = copy.deepcopy(model).eval() if config.ema_decay > 0 else model
    weights = dict(config.loss_weights)
    options: dict[str, dict[str, Any]] = {}
    if config.perceptual_weight > 0:
        weights["perceptual"] = config.perceptual_weight
        options["perceptual"] = {"network": FeatureNetwork.from_spec(config.feature_network)}
    content = EnhancerLoss(weights, options)
    discriminator = None
    if config.adversarial_weight > 0:
        discriminator = build("enhancer-discriminator", in_channels=1, base_channels=32)
        d_optim = torch.optim.Adam(discriminator.parameters(), lr=config.d_lr, betas=(0.5, 0.999))
        weights["adversarial"] = config.adversarial_weight
        options["adversarial"] = {"discriminator": discriminator, "mode": config.adversarial_mode}
    criterion = EnhancerLoss(weights, options)
    optim = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.99))

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    name = config.model_name
    baseline = _bicubic(model, val)
    val_history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_state: dict[str, Tensor] | None = None
    best_step, bad = 0, 0
    smoothed_best, smoothed = math.inf, math.nan

    def validate(step: int) -> bool:
        """Evaluate the (averaged) model, checkpoint on a lower val loss; True when patience is exhausted.

        Patience counts validations without improvement of the SMOOTHED val loss, so one noisy validation
        neither stops the run nor resets the count.
        """
        nonlocal best, best_state, best_step, bad, smoothed, smoothed_best
        scores = {"step": float(step), "lr": config.learning_rate(step)}
        scores |= _evaluate(averaged, val, content, config.blind)
        s = config.val_smoothing
        smoothed = scores["val_loss"] if math.isnan(smoothed) else s * smoothed + (1.0 - s) * scores["val_loss"]
        scores["val_loss_smoothed"] = smoothed
        val_history.append(scores)
        if not best or scores["val_loss"] < best["val_loss"] - 1e-7:
            best, best_step = scores, step
            best_state = snapshot(averaged)
            card_metrics = {k: v for k, v in scores.items() if k not in ("step", "lr")} | baseline
            save_model(
                averaged, out, name, "enhancer", config.model_config(),
                _card(config, train_subjects, val_subjects, card_metrics | {"best_step": float(step)}),
            )  # fmt: skip
        if smoothed < smoothed_best - 1e-7:
            smoothed_best, bad = smoothed, 0
        else:
            bad += 1
        print(
            f"val @ {step}: loss {scores['val_loss']:.4f} PSNR {scores['val_psnr']:.2f} dB "
            f"SSIM {scores['val_ssim']:.4f} (bicubic {baseline['bicubic_psnr']:.2f} dB / "
            f"{baseline['bicubic_ssim']:.4f})",
            file=sys.stderr,
        )
        return bad >= config.patience

    train_kw = pair_kw | {"dihedral": config.augment}
    pool = make_pairs(train_slices, config.scale, rng, config.train_pool, **train_kw) if config.train_pool else None

    def train_step(step: int) -> tuple[float, dict[str, float]]:
        if pool is None:
            batch = make_pairs(train_slices, config.scale, rng, config.batch_size, **train_kw)
            lr, hr, ctx = batch.lr, batch.hr, batch.context
        else:
            idx = torch.from_numpy(rng.choice(len(pool), config.batch_size, replace=config.batch_size > len(pool)))
            lr, hr, ctx = pool.lr[idx], pool.hr[idx], pool.context[idx]
        if config.blind:
            ctx = torch.zeros_like(ctx)
        if discriminator is not None:
            discriminator.requires_grad_(False)
        for group in optim.param_groups:
            group["lr"] = config.learning_rate(step)
        sr = model(lr, ctx)
        loss, parts_now = criterion(sr, hr)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if averaged is not model:
            # Bias-corrected start: the decay grows to ema_decay, so early checkpoints are not the initial weights.
            decay = min(config.ema_decay, (1.0 + step) / (10.0 + step))
            with torch.no_grad():
                for avg, live in zip(averaged.parameters(), model.parameters(), strict=True):
                    avg.lerp_(live, 1.0 - decay)
        if discriminator is not None:
            discriminator.requires_grad_(True)
            d_loss = discriminator_loss(discriminator(hr), discriminator(sr.detach()), config.adversarial_mode)
            d_optim.zero_grad(set_to_none=True)
            d_loss.backward()
            d_optim.step()
            parts_now["discriminator"] = float(d_loss.detach())
        return float(loss.detach()), parts_now

    loop = run_steps(config.steps, train_step, validate, val_every=config.val_every, log_every=config.log_every)
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    if discriminator is not None:
        save_model(
            discriminator, out, f"{name}-discriminator", "enhancer-discriminator",
            {"in_channels": 1, "base_channels": 32},
            _card(config, train_subjects, val_subjects, {}) | {"synthetic_output": False},
        )  # fmt: skip

    result_metrics = {k: v for k, v in best.items() if k not in ("step", "lr")} | baseline
    return TrainResult.write(out, config, model, loop, val_history, best_step, result_metrics, started,
                             train_subjects=train_subjects, val_subjects=val_subjects)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gan.train", description="Train Aegle models on real images.")
    sub = parser.add_subparsers(dest="model", required=True)
    p = sub.add_parser("enhancer", help="the context-conditioned enhancer (simulated vitals-driven degradation)")
    add_options(p, TrainConfig)
    for term, weight in DEFAULT_LOSS_WEIGHTS.items():
        p.add_argument(f"--{term}-weight", type=float, default=weight)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gan.train enhancer ...``: train, print the final metrics as JSON, return 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    weights = {term: getattr(args, f"{term}_weight") for term in DEFAULT_LOSS_WEIGHTS}
    config = config_from_args(TrainConfig, args, loss_weights=weights, command=command_line(parser, argv))
    result = train_enhancer(config)
    print(json.dumps(result.summary(train_subjects=result.train_subjects, val_subjects=result.val_subjects), indent=2))
    return 0
