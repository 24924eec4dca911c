"""What every trainer shares: its config dataclass as a command line, the thread setting, progress output, the
step loop with validation and early stopping, the result record and the files a run leaves next to its checkpoint.

A config field declared with :func:`cli_option` is also a command-line option (:func:`add_options`,
:func:`config_from_args`): ``--field-name`` unless it names its own ``flag``; a bool is a switch, a tuple a
comma-separated list, the default is the dataclass's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from gan.train.plots import write_loss_curve

R = TypeVar("R", bound="RunResult")

__all__ = [
    "Loop",
    "Progress",
    "RunResult",
    "add_options",
    "cli_option",
    "command_line",
    "config_from_args",
    "run_steps",
    "snapshot",
    "torch_threads",
    "write_history",
]


# ----------------------------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class _Option:
    help: str | None
    flag: str | None
    choices: Sequence[Any] | None
    type: type | None
    positional: bool


def cli_option(
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    help: str | None = None,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    type: type | None = None,  # needed when the default is None
    positional: bool = False,
) -> Any:
    """A config field (``default``, or ``factory`` for a mutable one) that is also a command-line option."""
    metadata = {"cli": _Option(help, flag, choices, type, positional)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _options(config_cls: type) -> Iterator[tuple[dataclasses.Field, _Option, Any]]:
    defaults = config_cls()
    for f in dataclasses.fields(config_cls):
        if "cli" in f.metadata:
            yield f, f.metadata["cli"], getattr(defaults, f.name)


def add_options(parser: Any, config_cls: type) -> None:
    """Add one argument per :func:`cli_option` field of ``config_cls`` to an argparse parser."""
    for f, option, default in _options(config_cls):
        kwargs: dict[str, Any] = {"help": option.help} if option.help else {}
        if option.choices is not None:
            kwargs["choices"] = option.choices
        if option.positional:
            parser.add_argument(f.name, **kwargs)
            continue
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
        elif isinstance(default, tuple):
            kwargs["default"] = ",".join(map(str, default))
        else:
            kwargs |= {"type": option.type or (str if default is None else type(default)), "default": default}
        flag = option.flag or "--" + f.name.replace("_", "-")
        if option.flag and not isinstance(default, bool):
            kwargs["metavar"] = option.flag.lstrip("-").replace("-", "_").upper()  # as argparse names it by its flag
        parser.add_argument(flag, dest=f.name, **kwargs)


def config_from_args(config_cls: type, args: Any, **values: Any) -> Any:
    """``config_cls`` from :func:`add_options` arguments (lists split at commas) plus ``values`` for other fields."""
    for f, _option, default in _options(config_cls):
        value = getattr(args, f.name)
        if isinstance(default, tuple):
            kind = type(default[0]) if default else str
            value = tuple(kind(item) for item in value.split(",") if item)
        values[f.name] = value
    return config_cls(**values)


def command_line(parser: Any, argv: Sequence[str]) -> str:
    """The command as typed (recorded in the model card): the parser's ``prog`` and ``argv``."""
    return f"{parser.prog} {shlex.join(argv)}"


# ---------------------------------------------------------------------------------------------------- running


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads (unchanged when None or 0), restored afterwards."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Progress:
    """Per-step progress on stderr: a tqdm bar when tqdm is installed, else a line every ``log_every`` steps."""

    def __init__(self, total: int, log_every: int) -> None:
        self.total, self.log_every = total, log_every
        self.bar = None
        if importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="train", file=sys.stderr)
        self._tick = time.perf_counter()

    def advance(self, step: int, **postfix: str) -> float | None:
        """Move the bar on (showing ``postfix``). Without a bar: the rate in steps/s when ``step`` is due for a
        line (every ``log_every`` steps and the last), else None."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**postfix)
            return None
        if step % self.log_every and step != self.total:
            return None
        rate = self.log_every / max(time.perf_counter() - self._tick, 1e-9)
        self._tick = time.perf_counter()
        return rate

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass(frozen=True)
class Loop:
    """What :func:`run_steps` did: the training loss of every step, how many steps ran, whether it stopped early."""

    train_loss: list[float]
    steps_run: int
    stopped_early: bool


def run_steps(
    steps: int,
    train_step: Callable[[int], tuple[float, Mapping[str, float]]],
    validate: Callable[[int], bool],
    *,
    val_every: int,
    log_every: int,
) -> Loop:
    """Steps ``1..steps`` of ``train_step(step) -> (loss, loss parts)``, ``validate(step)`` every ``val_every`` steps
    and at the last (True: patience exhausted, stop early).

    A non-finite loss raises FloatingPointError. Without a single validation (``steps`` 0) it validates once.
    """
    train_loss: list[float] = []
    progress = Progress(steps, log_every)
    step, validated, stopped_early = 0, False, False
    for step in range(1, steps + 1):
        loss, parts = train_step(step)
        train_loss.append(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at step {step}")
        rate = progress.advance(step, loss=f"{loss:.4f}")
        if rate is not None:
            detail = " (" + ", ".join(f"{k} {v:.4f}" for k, v in parts.items()) + ")" if parts else ""
            recent = float(np.mean(train_loss[-log_every:]))
            print(f"step {step}/{steps} loss {recent:.4f}{detail} {rate:.1f} it/s", file=sys.stderr)
        if step % val_every == 0 or step == steps:
            validated = True
            if validate(step):
                stopped_early = True
                break
    progress.close()
    if not validated:
        validate(step)
    return Loop(train_loss, step, stopped_early)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model``'s state dict (the best weights so far)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """What a training run produced; ``model`` holds the best (lowest val loss) weights, in eval mode."""

    model: nn.Module
    config: Any
    checkpoint: Path
    loss_curve: Path
    history_file: Path
    best_step: int
    steps_run: int
    stopped_early: bool
    train_loss: list[float]
    val_history: list[dict[str, float]]
    metrics: dict[str, float]
    seconds: float

    @classmethod
    def write(
        cls: type[R],
        out: Path,
        config: Any,
        model: nn.Module,
        loop: Loop,
        val_history: list[dict[str, float]],
        best_step: int,
        metrics: dict[str, float],
        started: float,
        **extra: Any,
    ) -> R:
        """Write ``<out>/<name>.loss.png`` (training and val loss) and ``<out>/<name>.history.json`` next to the
        checkpoint ``<out>/<name>`` (``name``: ``config.model_name``) and return the record (``extra``: the
        subclass's fields; ``started``: ``time.perf_counter()`` at the start)."""
        name = config.model_name
        curve = write_loss_curve(
            out / f"{name}.loss.png",
            loop.train_loss,
            [int(v["step"]) for v in val_history],
            [v["val_loss"] for v in val_history],
        )
        history = write_history(
            out / f"{name}.history.json", config, train_loss=loop.train_loss, val=val_history, best_step=best_step,
            metrics=metrics,
        )  # fmt: skip
        return cls(
            model=model, config=config, checkpoint=out / name, loss_curve=curve, history_file=history,
            best_step=best_step, steps_run=loop.steps_run, stopped_early=loop.stopped_early,
            train_loss=loop.train_loss, val_history=val_history, metrics=metrics,
            seconds=time.perf_counter() - started, **extra,
        )  # fmt: skip

    def summary(self, **extra: Any) -> dict[str, Any]:
        """What the command line prints as JSON: the files, steps, time, ``extra``, then the metrics."""
        return {
            "checkpoint": str(self.checkpoint),
            "loss_curve": str(self.loss_curve),
            "best_step": self.best_step,
            "steps_run": self.steps_run,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 1),
            **extra,
            "metrics": self.metrics,
        }


def write_history(path: Path, config: Any, **record: Any) -> Path:
    """``path`` as JSON: the run's config (a dataclass) and ``record`` (losses, validations, ...)."""
    path.write_text(json.dumps({"config": dataclasses.asdict(config), **record}, indent=1))
    return path
