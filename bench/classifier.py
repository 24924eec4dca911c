"""SE-CNN classifiers on held-out subjects: lesion vs no lesion with and without hybrid-GAN augmentation, and triage.

Method, all in one process:

* **Lesion** — :func:`gan.lesion_data` (real pyradiomics patches, 64×64: train brain1 + breast1
  MR, val lung1 CT, test brain2 MR + lung2 CT; the same test patches for every run). For each seed of
  ``--seeds`` the classifier is trained twice with identical settings: ``plain`` (real patches only) and
  ``augmented`` (the same + ``--synthetic`` hybrid-GAN patches from :func:`gan.generate` with the
  weights ``hybrid-gan-dcgan|cgan|srgan`` under ``--hybrid-root``, default ``gan/weights``; generation seed = the
  training seed). Early stopping on the val loss as in training.
* **Figures** — per arm the MEDIAN over seeds of each test metric (threshold 0.5; AUC from the probabilities). Its
  95 % CI is a two-stage cluster bootstrap of the test set (subjects, then patches within subjects; the same
  resampled indices for every seed and both arms), recomputing the median over seeds on each resample: it covers
  test-set sampling, while the per-seed values (``lesion.<arm>.per_seed``) show the spread between seeds.
  ``lesion_auc_gain`` / ``lesion_f1_gain`` = augmented − plain (the baseline of the same run), with the paired
  bootstrap CI.
* **Triage** — the shipped ``triage-classifier`` (or ``--triage-root``) on fresh degraded central windows of the
  held-out test subjects (:data:`gan.data.HELD_OUT_TEST_SUBJECTS`, ``--triage-per-subject`` each, seed 0);
  ``triage_accuracy`` is exact-match accuracy (all four labels right), plus the "enhance" decision and one-vs-rest
  AUC per class, each with the subject-level bootstrap CI of :mod:`gan.classification_metrics`.

Only two test subjects exist for the lesion task: read the intervals, not the point estimates.

    python -m bench.classifier            # 3 seeds, up to 400 steps per run
    python -m bench.classifier --quick    # 2 seeds, 12 steps, small nets, fewer patches (under a minute idle)

The last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gan import (
    BINARY_METRICS,
    CARD_FILE,
    DEFAULT_ROOT,
    TRIAGE_CLASSES,
    ClassifierConfig,
    bootstrap_ci,
    card_thresholds,
    evaluate_triage,
    held_out_test,
    lesion_data,
    load_card,
    load_dataset,
    load_pyradiomics,
    load_triage,
    predict,
    prepare_slices,
    roc_auc,
    train_classifier,
    triage_test_windows,
)

ARMS = ("plain", "augmented")
_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": roc_auc,
    **{name: (lambda y, p, fn=fn: fn(y, (p >= 0.5).astype(np.int64))) for name, fn in BINARY_METRICS.items()},
}


def _root(root: str | None) -> Path:
    return DEFAULT_ROOT if root is None else Path(root)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lesion_runs(args: argparse.Namespace, out: Path) -> tuple[dict[str, list[np.ndarray]], np.ndarray, list[str]]:
    """Test probabilities per arm and seed, the test labels and the test subjects."""
    import torch

    torch.set_num_threads(args.threads)
    volumes = load_pyradiomics()
    base = {
        "task": "lesion", "out": str(out), "steps": args.steps, "val_every": args.val_every, "patience": 6,
        "widths": tuple(args.widths), "per_subject": args.per_subject, "synthetic": args.synthetic,
        "hybrid_root": args.hybrid_root, "resamples": 10, "threads": args.threads, "log_every": 10**9,
    }  # fmt: skip
    plain = lesion_data(ClassifierConfig(**base), volumes)
    labels, groups = plain.test[1].reshape(-1).astype(np.int64), plain.test_groups
    probabilities: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            config = ClassifierConfig(**base, seed=seed, augment=arm == "augmented", name=f"lesion-{arm}-{seed}")
            task = plain if arm == "plain" else lesion_data(config, volumes)
            if not np.array_equal(task.test[1].reshape(-1), labels):
                raise AssertionError("the test patches differ between runs")
            started = time.perf_counter()
            result = train_classifier(config, data=task)
            probabilities[arm].append(predict(result.model, task.test[0]).reshape(-1))
            _log(f"lesion {arm} seed {seed}: best step {result.best_step}, test AUC "
                 f"{result.metrics['test_lesion_auc']:.3f}, {time.perf_counter() - started:.0f} s")  # fmt: skip
    return probabilities, labels, groups


def _median_over_seeds(metric: Callable, y: np.ndarray, runs: Sequence[np.ndarray], idx: np.ndarray) -> float:
    return float(np.median([metric(y[idx], p[idx]) for p in runs]))


def lesion_figures(
    probabilities: dict[str, list[np.ndarray]], y: np.ndarray, groups: Sequence[str], resamples: int
) -> dict[str, Any]:
    """Median-over-seeds metrics per arm and the augmented − plain gains, each with a paired cluster-bootstrap CI."""
    figures: dict[str, Any] = {}
    for name, metric in _METRICS.items():
        for arm in ARMS:
            runs = probabilities[arm]
            ci = bootstrap_ci(lambda i, m=metric, r=runs: _median_over_seeds(m, y, r, i), len(y), groups,
                                 resamples=resamples, seed=0)  # fmt: skip
            figures[f"lesion_{name}_{arm}"] = ci.value
            figures[f"lesion_{name}_{arm}_ci"] = [ci.low, ci.high]
            figures.setdefault("lesion", {}).setdefault(arm, {}).setdefault("per_seed", {})[name] = [
                metric(y, p) for p in runs
            ]

        def gain(i: np.ndarray, m: Callable = metric) -> float:
            return _median_over_seeds(m, y, probabilities["augmented"], i) - _median_over_seeds(
                m, y, probabilities["plain"], i
            )

        ci = bootstrap_ci(gain, len(y), groups, resamples=resamples, seed=0)
        figures[f"lesion_{name}_gain"] = ci.value
        figures[f"lesion_{name}_gain_ci"] = [ci.low, ci.high]
    return figures


def triage_figures(args: argparse.Namespace) -> dict[str, Any]:
    """The shipped triage classifier on degraded central windows of the held-out test subjects."""
    model, card = load_triage(args.triage_root)
    volumes = [v for name in ("pydicom", "pyradiomics") for v in load_dataset(name)]
    held = [v for v in held_out_test(volumes) if v.modality in ("CT", "MR") and not v.is_rgb]
    images, targets, groups = triage_test_windows(prepare_slices(held, allow_held_out=True), args.triage_per_subject, 0)
    report = evaluate_triage(predict(model, images), targets, groups, args.resamples, seed=0,
                             thresholds=card_thresholds(card))  # the shipped decision rule
    out: dict[str, Any] = {"triage_weights_sha256": card.sha256, "triage_n_test": len(groups)}
    exact = report["all"]["exact_match_accuracy"]
    out |= {"triage_accuracy": exact.value, "triage_accuracy_ci": [exact.low, exact.high]}
    for metric in ("accuracy", "auc", "f1", "recall", "specificity"):
        ci = report["enhance"][metric]
        out |= {f"triage_enhance_{metric}": ci.value, f"triage_enhance_{metric}_ci": [ci.low, ci.high]}
    for name in TRIAGE_CLASSES:
        ci = report[name]["auc"]
        out |= {f"triage_{name}_auc": ci.value, f"triage_{name}_auc_ci": [ci.low, ci.high]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 12 steps, small nets (under a minute idle)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=None, help="max steps per lesion run (default 400)")
    parser.add_argument("--hybrid-root", default=None, help="root of the hybrid-gan-* weights (default gan/weights)")
    parser.add_argument("--triage-root", default=None, help="root of triage-classifier (default gan/weights)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="where run checkpoints go (default: a temporary directory)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seeds = args.seeds or ([0, 1] if quick else [0, 1, 2])
    args.steps = args.steps or (12 if quick else 400)
    args.val_every = 4 if quick else 25
    args.widths = (8, 16) if quick else (8, 16, 32, 64)
    args.per_subject = 40 if quick else 200
    args.synthetic = 40 if quick else 400
    args.resamples = 200 if quick else 1000
    args.triage_per_subject = 10 if quick else 100

    started = time.perf_counter()
    hybrid_sha256 = {  # read before the runs: the weights the runs load
        stage: load_card(_root(args.hybrid_root) / f"hybrid-gan-{stage}" / CARD_FILE).sha256
        for stage in ("dcgan", "cgan", "srgan")
    }
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as tmp:
        probabilities, y, groups = lesion_runs(args, Path(args.out or tmp))
    summary: dict[str, Any] = {
        "quick": quick,
        "seeds": args.seeds,
        "hybrid_weights_sha256": hybrid_sha256,
        "n_test": len(y),
        "test_subjects": sorted(set(groups)),
        **lesion_figures(probabilities, y, groups, args.resamples),
        **triage_figures(args),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
