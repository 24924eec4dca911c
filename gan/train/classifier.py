"""Training of the SE-CNN classifiers: image-quality triage and lesion vs no lesion, with held-out test metrics.

Tasks (``python -m gan.train_classifier triage|lesion [options]``, :func:`main`), their data in
:mod:`gan.train.classifier_data`: ``triage`` (multi-label quality triage, :mod:`gan.triage`, on degraded windows of
real CT/MR slices) and ``lesion`` (lesion vs no lesion on real tumour-masked pyradiomics patches, with ``--augment``
plus hybrid-GAN synthetic training patches).

Both: BCE on one logit per label (``se-classifier`` with ``num_classes`` = 4 for triage, 1 for lesion), AdamW,
validation every ``val_every`` steps, the best val-loss model saved through :func:`gan.registry.save_model`
(checkpoint), early stopping after ``patience`` validations without improvement, a loss-curve PNG and a history
JSON. At the end the best model is evaluated ONCE on the held-out test split (subjects of
:data:`gan.data.HELD_OUT_TEST_SUBJECTS`, never seen in training or model selection), and the card is rewritten with
those metrics: accuracy, precision, recall, F1, specificity and AUC (one-vs-rest per triage class, plus the
"enhance" decision and exact-match accuracy), each with a 95 % two-stage cluster-bootstrap CI over subjects
(:mod:`gan.train.evaluation`). ``python -m gan.train_classifier calibrate`` (:func:`calibrate_triage`) chooses the
triage decision thresholds on the val split and rewrites the card (weights unchanged).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gan import data as gdata
from gan import triage
from gan.classification_metrics import MetricCI
from gan.intensity import NORMALISATION
from gan.train.classifier_data import TaskData, lesion_data, triage_data
from gan.train.evaluation import (
    DEFAULT_MIN_RECALL,
    choose_thresholds,
    enhance_recall_specificity,
    evaluate_lesion,
    evaluate_triage,
    flat_metrics,
    predict,
)
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

__all__ = ["TASKS", "ClassifierConfig", "ClassifierResult", "calibrate_triage", "main", "train_classifier"]

TASKS = ("triage", "lesion")


@dataclass
class ClassifierConfig:
    """Everything :func:`train_classifier` needs (stored in the model card); the :func:`cli_option` fields are the
    options of ``python -m gan.train_classifier``."""

    task: str = cli_option("triage", choices=TASKS, positional=True)
    out: str = cli_option("var/train", help="output root (checkpoint directory, loss PNG, history)")
    # default: triage-classifier, lesion-classifier[-augmented]
    name: str | None = cli_option(None, help="model name (default triage-classifier / lesion-classifier)")
    datasets: tuple[str, ...] = cli_option(  # triage
        ("pydicom", "mni152", "pyradiomics"), flag="--data", help="triage: comma-separated gan.data datasets"
    )
    split_seed: int = cli_option(0)
    widths: tuple[int, ...] = cli_option((8, 16, 32, 64), help="SE block widths")
    dropout: float = cli_option(0.2)
    batch_size: int = cli_option(32)
    steps: int = cli_option(1500)
    lr: float = cli_option(2e-3)
    weight_decay: float = cli_option(1e-4)
    seed: int = cli_option(0)
    val_every: int = cli_option(50)
    val_samples: int = cli_option(256, help="triage: fixed val windows")
    test_per_subject: int = cli_option(100, help="triage: test windows")  # fixed test windows per held-out subject
    patch: int = cli_option(64, help="lesion: patch side")
    per_subject: int = cli_option(200, help="lesion: patches per subject")  # half lesion
    # lesion: which patches (fixed across training seeds, so every run sees the same test set)
    patch_seed: int = cli_option(0, help="lesion: which patches")
    augment: bool = cli_option(False, help="lesion: add hybrid-GAN synthetic patches")  # to the training pool
    synthetic: int = cli_option(400, help="lesion: number of synthetic patches")  # half lesion
    # where the hybrid-gan-* weights live (default gan/weights)
    hybrid_root: str | None = cli_option(None, help="lesion: root of the hybrid-gan-* weights")
    patience: int = cli_option(6)
    log_every: int = cli_option(50)
    resamples: int = cli_option(1000, help="bootstrap resamples per metric")
    threads: int | None = cli_option(None, type=int, help="torch intra-op threads")
    command: str | None = None

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        return triage.MODEL_NAME if self.task == "triage" else f"lesion-classifier{'-augmented' * self.augment}"

    @property
    def labels(self) -> tuple[str, ...]:
        return triage.TRIAGE_CLASSES if self.task == "triage" else ("lesion",)

    def model_config(self) -> dict[str, Any]:
        """Constructor kwargs of the ``se-classifier``."""
        return {"in_channels": 1, "num_classes": len(self.labels), "widths": list(self.widths), "dropout": self.dropout}


@dataclass
class ClassifierResult(RunResult):
    """What a classifier run produced (:class:`~gan.train.scaffold.RunResult`) and its held-out test report."""

    config: ClassifierConfig
    report: dict[str, dict[str, MetricCI]]


def _card(config: ClassifierConfig, description: dict[str, Any], scores: dict[str, float]) -> dict[str, Any]:
    if config.task == "triage":
        input_spec = triage.card_input()
    else:
        input_spec = {
            "channels": 1,
            "scale": 1,
            "context_size": 0,
            "side": config.patch,
            "classes": ["lesion"],
            "normalisation": f"gan.lesions.lesion_patches: {NORMALISATION} (CT: the lung window)",
            "head": "one sigmoid: p(lesion at the patch centre)",
        }
    return {
        "version": "0.1.0",
        "training": {
            "data": description,
            "command": config.command or f"gan.train_classifier({config!r})",
            "seed": config.seed,
        },
        "metrics": scores,
        "input": input_spec,
        "synthetic_output": False,
        "notes": (
            "Metrics prefixed test_ are on the held-out test subjects with 95 % two-stage cluster-bootstrap CIs "
            f"({config.resamples} resamples: subjects, then samples within subjects); others on the val split. "
            + (
                "Trained on simulated degradations of real slices (gan.train.classifier_data); not validated on "
                "real low-quality acquisitions."
                if config.task == "triage"
                else "Only 5 pyradiomics subjects exist: 2 train (MR), 1 val (CT), 2 test; the CIs are wide."
            )
        ),
    }


# ---------------------------------------------------------------------------------------------------- training


def train_classifier(
    config: ClassifierConfig, volumes: Sequence[gdata.Volume] | None = None, data: TaskData | None = None
) -> ClassifierResult:
    """Train ``config.task``; save the best checkpoint with test metrics under ``<out>/<name>/``.

    ``data`` (from :func:`~gan.train.classifier_data.triage_data` / :func:`~gan.train.classifier_data.lesion_data`)
    may be passed to reuse prepared samples. Files: ``<out>/<name>/`` (weights, card), ``<out>/<name>.loss.png``,
    ``<out>/<name>.history.json``.
    """
    if config.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {config.task!r}")
    with torch_threads(config.threads):
        return _train(config, volumes, data)


def _train(config: ClassifierConfig, volumes: Sequence[gdata.Volume] | None, data: TaskData | None):
    from gan.models import build
    from gan.registry import save_model

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if data is None:
        data = triage_data(config, volumes) if config.task == "triage" else lesion_data(config, volumes)
    model = build("se-classifier", **config.model_config())
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=max(1, config.steps))
    criterion = nn.BCEWithLogitsLoss()
    val_x, val_y = torch.from_numpy(data.val[0]), torch.from_numpy(data.val[1])

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    name = config.model_name
    val_history: list[dict[str, float]] = []
    best_loss, best_step, bad = math.inf, 0, 0
    best_state: dict[str, Tensor] | None = None

    def validate(step: int) -> bool:
        """Val loss (+ accuracy at 0.5), checkpoint on improvement; True when patience is exhausted."""
        nonlocal best_loss, best_step, bad, best_state
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(val_x[i : i + 128]) for i in range(0, len(val_x), 128)])
            loss = float(criterion(logits, val_y))
        model.train()
        accuracy = float(((logits >= 0).float() == val_y).float().mean())
        val_history.append({"step": float(step), "val_loss": loss, "val_label_accuracy": accuracy})
        if loss < best_loss - 1e-6:
            best_loss, best_step, bad = loss, step, 0
            best_state = snapshot(model)
            scores = {"val_loss": loss, "val_label_accuracy": accuracy, "best_step": float(step)}
            save_model(
                model, out, name, "se-classifier", config.model_config(), _card(config, data.description, scores)
            )
        else:
            bad += 1
        print(f"val @ {step}: loss {loss:.4f} label accuracy {accuracy:.3f}", file=sys.stderr)
        return bad >= config.patience

    def train_step(_step: int) -> tuple[float, dict[str, float]]:
        x, y = data.sample(rng, config.batch_size)
        loss = criterion(model(torch.from_numpy(np.ascontiguousarray(x))), torch.from_numpy(y))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        schedule.step()
        return float(loss.detach()), {}

    model.train()
    loop = run_steps(config.steps, train_step, validate, val_every=config.val_every, log_every=config.log_every)
    assert best_state is not None
    model.load_state_dict(best_state)

    probabilities = predict(model, data.test[0])
    evaluate = evaluate_triage if config.task == "triage" else evaluate_lesion
    report = evaluate(probabilities, data.test[1], data.test_groups, config.resamples, config.seed)
    best = next(v for v in val_history if v["step"] == best_step)
    metrics = {
        "val_loss": best["val_loss"],
        "val_label_accuracy": best["val_label_accuracy"],
        "best_step": float(best_step),
        "n_test": float(len(data.test_groups)),
    } | flat_metrics(report)
    save_model(model, out, name, "se-classifier", config.model_config(), _card(config, data.description, metrics))
    model.eval()
    return ClassifierResult.write(out, config, model, loop, val_history, best_step, metrics, started, report=report)


# ------------------------------------------------------------------------------------------------- calibration


def calibrate_triage(
    root: str | Path | None = None,
    name: str = triage.MODEL_NAME,
    config: ClassifierConfig | None = None,
    data: TaskData | None = None,
    min_recall: float = DEFAULT_MIN_RECALL,
    command: str | None = None,
) -> dict[str, Any]:
    """Choose the triage thresholds on the val split, re-evaluate on the test split, rewrite the card only.

    ``data`` (default :func:`~gan.train.classifier_data.triage_data` of ``config``, the training defaults) must
    describe the same val and test subjects as the card; the thresholds see ONLY ``data.val``. The card (via
    :func:`gan.registry.update_card`, weights and sha256 unchanged) gets ``input.thresholds``, the test metrics
    at those thresholds, ``val_enhance_recall`` / ``val_enhance_specificity`` and the enhance specificity at 0.5
    for comparison. Returns the thresholds, the before (0.5) and after test reports, and the new metrics.
    """
    from gan.registry import load_model, update_card

    config = config or ClassifierConfig()
    model, card = load_model(root, name)
    if data is None:
        data = triage_data(config)
    val_subjects = set(data.description["val_subjects"])
    leaked = val_subjects & gdata.HELD_OUT_TEST_SUBJECTS
    if leaked:
        raise ValueError(f"val split contains held-out test subjects: {sorted(leaked)}")
    trained = card.training.data if isinstance(card.training.data, dict) else {}
    for split in ("val_subjects", "test_subjects"):
        if split in trained and sorted(trained[split]) != sorted(data.description[split]):
            raise ValueError(f"{split} differ from the card's: {data.description[split]} vs {trained[split]}")
    val_p = predict(model, data.val[0])
    thresholds = choose_thresholds(val_p, data.val[1], min_recall)
    recall, specificity = enhance_recall_specificity(val_p, data.val[1], thresholds)

    test_p = predict(model, data.test[0])
    before = evaluate_triage(test_p, data.test[1], data.test_groups, config.resamples, config.seed)
    after = evaluate_triage(test_p, data.test[1], data.test_groups, config.resamples, config.seed, thresholds)
    kept = {k: v for k, v in card.metrics.items() if not k.startswith("test_")}
    default = {"enhance_at_0.5": {m: before["enhance"][m] for m in ("recall", "specificity")}}
    metrics = (
        kept
        | {"val_enhance_recall": recall, "val_enhance_specificity": specificity, "n_test": float(len(data.test_groups))}
        | flat_metrics(after)
        | flat_metrics(default)
    )
    rule = (
        f"gan.train.evaluation.choose_thresholds on the val split only ({len(data.val[1])} windows of "
        f"{', '.join(sorted(val_subjects))}): Youden's J per degradation class; diagnostic: the largest J of the "
        f"enhance decision with val enhance recall >= {min_recall}"
    )
    input_spec = card.input.model_dump() | {"thresholds": thresholds, "threshold_rule": rule}
    note = (
        " Decision thresholds (input.thresholds) chosen on the val split only by "
        f"`{command or 'gan.calibrate_triage'}`; test_ metrics are at those thresholds, "
        "test_enhance_at_0.5_* at 0.5 for comparison."
    )
    notes = card.notes.split(" Decision thresholds (input.thresholds)")[0] + note
    update_card(root, name, {"input": input_spec, "metrics": metrics, "notes": notes})
    return {"thresholds": thresholds, "before": before, "after": after, "metrics": metrics}


# --------------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.train_classifier", description="Train the SE-CNN classifiers on real images."
    )
    add_options(parser, ClassifierConfig)
    return parser


def _calibrate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.train_classifier calibrate",
        description="Choose the triage decision thresholds on the val split; rewrite the card (weights unchanged).",
    )
    d = ClassifierConfig()
    parser.add_argument("--name", default=triage.MODEL_NAME, help="model name under --weights")
    parser.add_argument("--weights", default=None, help="registry root (default gan/weights)")
    parser.add_argument("--min-recall", type=float, default=DEFAULT_MIN_RECALL, help="val enhance recall floor")
    parser.add_argument("--resamples", type=int, default=d.resamples, help="bootstrap resamples per metric")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser


def _calibrate_main(argv: list[str]) -> int:
    parser = _calibrate_parser()
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        result = calibrate_triage(
            args.weights,
            args.name,
            ClassifierConfig(resamples=args.resamples),
            min_recall=args.min_recall,
            command=command_line(parser, argv),
        )
    figures = {
        f"{when}_{m}": [round(v, 4) for v in (ci.value, ci.low, ci.high)]
        for when in ("before", "after")
        for m, ci in result[when]["enhance"].items()
    }
    print(json.dumps({"thresholds": result["thresholds"], "test_enhance": figures}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gan.train_classifier triage|lesion ...``: train, print the summary as JSON, return 0.

    ``python -m gan.train_classifier calibrate [--name N --weights ROOT]``: :func:`calibrate_triage`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["calibrate"]:
        return _calibrate_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.augment and args.task != "lesion":
        raise SystemExit("--augment applies to the lesion task only")
    result = train_classifier(config_from_args(ClassifierConfig, args, command=command_line(parser, argv)))
    print(json.dumps(result.summary(), indent=2))
    return 0
