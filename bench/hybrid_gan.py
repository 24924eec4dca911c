"""Hybrid GAN: parameter budget, generation speed, criteria statistics and honest fidelity of the shipped weights.

Method, all in one process and one run:

* **Weights** — ``<name>-dcgan|cgan|srgan`` from the registry root ``--weights`` (default ``gan/weights``),
  sha256-checked by :func:`gan.registry.load_model`; nothing is trained here.
* **Budget** — :func:`gan.models.hybrid.generator_path_parameters` (DCGAN + cGAN + SRGAN generators) against
  :data:`gan.models.hybrid.PARAMETER_BUDGET` (0.67 M).
* **Speed** — one timed :func:`gan.synthesis.generate` of ``--n`` images (256; 64 with ``--quick``), half
  lesion, half no lesion, full chain: 5× candidates → criteria top 20 % → SRGAN to 128×128, torch with
  ``--threads`` (1) threads. ``images_per_s`` is wall clock (contended on a shared machine), ``cpu_s_per_image``
  the process CPU time per image; the 1-minute load average is reported next to them.
* **Criteria** — the 5·n candidates (labels as above) scored by :class:`gan.models.hybrid.QualityCriteria`: medians
  of each criterion over the kept top 20 % and over the rejected rest, and ``real_in_top20``: the fraction of real
  held-out patches that land in the top 20 % when scored in one batch with as many candidates (0.2 if the
  criteria could not tell real from generated; lower means they prefer generated images).
* **Fidelity** — against real **held-out** patches (:func:`gan.lesions.lesion_patches` ``"test"``: brain2 MR and
  lung2 CT, subjects never trained on), all at 64×64 in [0, 1]: the generated set is the final 128×128 output
  2×2 block-averaged back to 64×64 (the training pixel size), and, separately, the 64×64 cGAN output before the
  SRGAN. Per set: Wasserstein-1 distance of the pooled intensity distributions (``intensity_w1``), median
  :func:`gan.metrics.mean_gradient` and :func:`gan.metrics.spatial_frequency` (and their ratio to the held-out
  medians), mean intensity per label, and memorisation: for each image the highest
  :func:`gan.metrics.ssim` (data range 1) to the TRAINING patches (the 5 nearest by Euclidean distance checked).
  **Baseline, same run**: the real TRAINING patches measured the same way against the held-out set (what two real
  patch sets of different subjects give), and the held-out patches' own nearest-training SSIM (what "not
  memorised" looks like). A generated set whose nearest-training SSIM is far above that baseline copies its
  training data.
* **FID / IS** — :func:`gan.fid.fid_and_is` (held-out real vs the final images) with ``--inception FILE`` (an ONNX
  Inception, see :mod:`gan.fid`); without it ``"unavailable"`` with the reason, never a number.

    python -m bench.hybrid_gan [--quick] [--weights gan/weights] [--inception inception.onnx]

The last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "run"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _unit(images: Any) -> np.ndarray:
    """N×C×H×W tensor in [−1, 1] → N×H×W float64 in [0, 1] (channel mean: the data are grey replicated)."""
    return ((images.detach().cpu().double().clamp(-1, 1).mean(dim=1) + 1) / 2).numpy()


def _block_mean(images: np.ndarray, factor: int) -> np.ndarray:
    n, h, w = images.shape
    return images.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def _nearest_ssim(images: np.ndarray, reference: np.ndarray, candidates: int = 5) -> np.ndarray:
    """For each image, the highest SSIM to ``reference`` among its ``candidates`` nearest (Euclidean) patches."""
    from gan import ssim

    flat_ref = reference.reshape(len(reference), -1)
    ref_sq = (flat_ref**2).sum(axis=1)
    out = np.empty(len(images))
    for i, image in enumerate(images):
        distance = ref_sq - 2 * flat_ref @ image.ravel()
        nearest = np.argsort(distance)[:candidates]
        out[i] = max(ssim(reference[j], image, 1.0) for j in nearest)
    return out


def _fidelity(images: np.ndarray, labels: np.ndarray, held_out: np.ndarray, held_labels: np.ndarray,
              train: np.ndarray | None) -> dict[str, Any]:  # fmt: skip
    """Statistics of one 64×64 [0, 1] image set against the held-out real patches (see the module docstring).

    ``train`` None skips the nearest-training-patch SSIM (for the training patches themselves it is 1).
    """
    from scipy.stats import wasserstein_distance

    from gan import mean_gradient, spatial_frequency

    rng = np.random.default_rng(0)

    def pooled(x: np.ndarray) -> np.ndarray:
        flat = x.ravel()
        return flat[rng.choice(len(flat), min(len(flat), 200_000), replace=False)]

    gradient = np.median([mean_gradient(x) for x in images])
    frequency = np.median([spatial_frequency(x) for x in images])
    ref_gradient = np.median([mean_gradient(x) for x in held_out])
    ref_frequency = np.median([spatial_frequency(x) for x in held_out])
    figures = {
        "n": len(images),
        "intensity_w1": float(wasserstein_distance(pooled(images), pooled(held_out))),
        "mean_gradient": float(gradient),
        "mean_gradient_ratio": float(gradient / ref_gradient),
        "spatial_frequency": float(frequency),
        "spatial_frequency_ratio": float(frequency / ref_frequency),
        "mean_intensity_by_label": {str(k): float(images[labels == k].mean()) for k in (0, 1) if (labels == k).any()},
        "held_out_mean_intensity_by_label": {str(k): float(held_out[held_labels == k].mean()) for k in (0, 1)},
    }
    if train is not None:
        figures["nearest_train_ssim_median"] = float(np.median(_nearest_ssim(images, train)))
    return figures


def run(
    weights: str | Path | None = None,
    name: str = "hybrid-gan",
    *,
    quick: bool = False,
    n: int | None = None,
    inception: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every figure of the benchmark as a JSON-serialisable dict (see the module docstring)."""
    import torch

    from gan import (
        DEFAULT_ROOT,
        PARAMETER_BUDGET,
        QualityCriteria,
        fid_and_is,
        generate,
        generator_path_parameters,
        lesion_patches,
        load_card,
        load_generators,
        load_pyradiomics,
    )

    root = Path(weights) if weights is not None else DEFAULT_ROOT
    n = n or (64 if quick else 256)
    labels = torch.arange(n) % 2
    generators = load_generators(root, name)
    parameters = generator_path_parameters(generators["dcgan"], generators["cgan"], generators["srgan"])
    _log(f"generator path: {parameters} parameters (budget {PARAMETER_BUDGET})")

    cpu, wall = time.process_time(), time.perf_counter()
    final = generate(root, n, labels, seed, generators=generators)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    _log(f"generated {n} images ({tuple(final.images.shape[1:])}) in {wall:.1f} s wall, {cpu:.1f} s CPU")
    selected = generate(root, n, labels, seed, generators=generators, refine=False)  # same seed: the SR input
    candidates = generate(root, 5 * n, torch.arange(5 * n) % 2, seed, generators=generators, oversample=1, keep=1.0,
                          refine=False)  # fmt: skip

    volumes = load_pyradiomics()
    card = load_card(root / f"{name}-cgan" / "card.json")
    train_info = card.training.data if isinstance(card.training.data, dict) else {}
    train_parts = [
        lesion_patches(s, per_subject=int(train_info.get("per_subject", 300)),
                       seed=int(train_info.get("patch_seed", 0)), volumes=volumes)
        for s in train_info.get("splits", ["train", "val"])
    ]  # fmt: skip
    train = np.concatenate([p.images for p in train_parts]).astype(np.float64)
    train_labels = np.concatenate([p.labels for p in train_parts])
    held = lesion_patches("test", per_subject=64 if quick else 200, seed=seed + 1, volumes=volumes)
    held_out = held.images.astype(np.float64)
    _log(f"real patches: {len(train)} training, {len(held_out)} held-out ({sorted(set(held.subjects))})")

    criteria = QualityCriteria()
    scores = criteria.quality_scores(candidates.images)
    _, kept = criteria.select_top(candidates.images, 0.2)
    is_kept = torch.zeros(len(candidates), dtype=torch.bool)
    is_kept[kept] = True
    real_batch = torch.from_numpy(held_out[: len(candidates)]).float().mul(2).sub(1)[:, None].expand(-1, 3, -1, -1)
    pooled_batch = torch.cat([candidates.images[: len(real_batch)], real_batch])
    _, top = criteria.select_top(pooled_batch, 0.2)
    real_in_top = float((top >= len(real_batch)).sum()) / len(real_batch)
    criteria_stats = {
        "candidates": len(candidates),
        "kept": int(is_kept.sum()),
        "kept_median": {k: float(v[is_kept].median()) for k, v in scores.items()},
        "rejected_median": {k: float(v[~is_kept].median()) for k, v in scores.items()},
        "real_in_top20": real_in_top,
    }

    label_array = labels.numpy()
    pick = np.random.default_rng(seed).choice(len(train), min(len(train), n), replace=False)
    fidelity = {
        "final_128_to_64": _fidelity(_block_mean(_unit(final.images), 2), label_array, held_out, held.labels, train),
        "cgan_64": _fidelity(_unit(selected.images), label_array, held_out, held.labels, train),
        "baseline_real_train": _fidelity(train[pick], train_labels[pick], held_out, held.labels, None),
        "baseline_held_out_nearest_train_ssim_median": float(np.median(_nearest_ssim(held_out[:n], train))),
    }
    fid = fid_and_is(torch.from_numpy(held_out).float().mul(2).sub(1)[:, None], final.images, inception)
    return {
        "generator_path_parameters": parameters,
        "parameter_budget": PARAMETER_BUDGET,
        "within_budget": parameters <= PARAMETER_BUDGET,
        "images_per_s": n / wall,
        "cpu_s_per_image": cpu / n,
        "n_generated": n,
        "output_shape": list(final.images.shape[1:]),
        "synthetic": final.synthetic,
        "generator_chain": final.generator,
        "load_average_1min": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
        "criteria": criteria_stats,
        "fidelity": fidelity,
        "fid": fid["fid"],
        "inception_score": fid["inception_score"],
        "fid_detail": fid,
        "held_out_subjects": sorted(set(held.subjects)),
        "quick": quick,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.hybrid_gan``: print progress to stderr and the figures as the last stdout line."""
    parser = argparse.ArgumentParser(prog="python -m bench.hybrid_gan", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=None, help="registry root holding <name>-dcgan|cgan|srgan (gan/weights)")
    parser.add_argument("--name", default="hybrid-gan")
    parser.add_argument("--quick", action="store_true", help="64 images, 128 held-out patches (under a minute)")
    parser.add_argument("--n", type=int, default=None, help="images to generate (default 256, 64 with --quick)")
    parser.add_argument("--inception", default=None, help="user-supplied Inception ONNX file for FID/IS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    summary = run(args.weights, args.name, quick=args.quick, n=args.n, inception=args.inception, seed=args.seed)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
