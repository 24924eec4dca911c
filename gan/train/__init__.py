"""Training of Aegle's models. Serving never imports this package (nor :mod:`gan.losses`, :mod:`gan.degrade`,
:mod:`gan.lesions`); it loads what training produced through :mod:`gan.registry`.

* :mod:`gan.train.data` — slices, degraded pairs and subject splits (the enhancer's; shared by the classifier
  trainer and the benchmarks);
* :mod:`gan.train.classifier_data` — the simulated triage degradations, triage windows, lesion patches;
* :mod:`gan.train.enhancer`, :mod:`gan.train.classifier`, :mod:`gan.train.hybrid` — one family each: config, loop,
  model card, command line (``python -m gan.train enhancer``, ``python -m gan.train_classifier``,
  ``python -m gan.train_hybrid``);
* :mod:`gan.train.evaluation` — classifier test reports and decision thresholds;
* :mod:`gan.train.scaffold` — what every trainer shares: config dataclass → command line, step loop, result record,
  history file;
* :mod:`gan.train.plots` — loss curves and marked sample grids as PNG.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

__all__ = ["TRAINERS", "run_trainer"]

#: ``aegle train FAMILY`` → the module whose ``main(argv)`` trains it.
TRAINERS = {"enhancer": "gan.train.enhancer", "classifier": "gan.train.classifier", "hybrid-gan": "gan.train.hybrid"}


def run_trainer(family: str, argv: Sequence[str]) -> int:
    """Train ``family`` from command-line options, as ``python -m gan.train enhancer ARGV``, ``python -m
    gan.train_classifier ARGV`` or ``python -m gan.train_hybrid ARGV`` do; returns the exit status."""
    trainer = importlib.import_module(TRAINERS[family])
    # The enhancer's command names its family (it is a sub-command of python -m gan.train); the others do not.
    return trainer.main([family, *argv] if family == "enhancer" else list(argv))
