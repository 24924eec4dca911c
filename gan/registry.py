"""Weights registry: one directory per model holding ``model.safetensors`` and a validated ``card.json``.

Layout (``root`` defaults to the package directory ``gan/weights/``)::

    <root>/<name>/model.safetensors   state dict (safetensors)
    <root>/<name>/card.json           ModelCard: architecture + constructor config, provenance, sha256, ...

:func:`load_model` rebuilds the architecture named in the card through :func:`gan.models.build`, checks the
sha256 of the weights file *before* deserialising it, and loads the state dict strictly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core import durable_file, replace_durably

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CARD_FILE",
    "DEFAULT_ROOT",
    "WEIGHTS_FILE",
    "InputSpec",
    "ModelCard",
    "ModelCardError",
    "RegistryError",
    "TrainingInfo",
    "WeightsIntegrityError",
    "WeightsMismatchError",
    "list_models",
    "load_card",
    "load_model",
    "parameter_count",
    "save_model",
    "sha256_bytes",
    "sha256_file",
    "state_dict_sha256",
    "update_card",
    "verified_card",
]

DEFAULT_ROOT = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Fields of the card that save_model computes itself; card_extra may not set them.
_COMPUTED = frozenset({"name", "architecture", "config", "created", "sha256", "parameters"})


class RegistryError(Exception):
    """Base class of the registry's errors."""


class ModelCardError(RegistryError, ValueError):
    """card.json is missing, not JSON, or does not validate against :class:`ModelCard`."""


class WeightsIntegrityError(RegistryError):
    """The sha256 of ``model.safetensors`` differs from the one recorded in the card."""


class WeightsMismatchError(RegistryError):
    """The stored state dict does not fit the architecture/config named in the card (strict load failed)."""


# --------------------------------------------------------------------------- card schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingInfo(_Strict):
    """How the weights were produced (enough to reproduce them)."""

    data: str | list[str] | dict[str, Any]
    command: str | list[str]
    seed: int | None


class InputSpec(BaseModel):
    """What the model expects. The four named keys are required; architecture-specific extra keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    channels: int = Field(ge=1)
    scale: int = Field(ge=1)
    context_size: int = Field(ge=0)
    normalisation: str


class ModelCard(_Strict):
    """Contents of ``card.json``. Unknown fields are rejected; all but ``metrics`` and ``notes`` are required."""

    name: str
    architecture: str
    config: dict[str, Any]
    version: str
    created: datetime
    training: TrainingInfo
    metrics: dict[str, float] = Field(default_factory=dict)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parameters: int = Field(ge=0)
    input: InputSpec
    synthetic_output: bool
    notes: str = ""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"model name {value!r} must match {_NAME_RE.pattern} (it is a directory name)")
        return value

    @field_validator("config")
    @classmethod
    def _json_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config must be JSON-serialisable: {exc}") from None
        return value


# --------------------------------------------------------------------------- helpers


def _root(root: str | os.PathLike[str] | None) -> Path:
    return DEFAULT_ROOT if root is None else Path(root)


def _model_dir(root: str | os.PathLike[str] | None, name: str) -> Path:
    if not _NAME_RE.match(name):
        raise ValueError(f"model name {name!r} must match {_NAME_RE.pattern}")
    return _root(root) / name


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (each shared parameter counted once)."""
    return sum(p.numel() for p in model.parameters())


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone(): safetensors refuses tensors sharing storage (tied weights); a copy per key loads back fine.
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 of the model's state dict serialised as safetensors (same bytes :func:`save_model` writes)."""
    from safetensors.torch import save

    return sha256_bytes(save(_cpu_state(model)))


#: Weights and cards are package data, readable like any installed file (temporary files start as 0600).
PUBLISHED_MODE = 0o644


# --------------------------------------------------------------------------- public API


def save_model(
    model: nn.Module,
    root: str | os.PathLike[str] | None,
    name: str,
    architecture: str,
    config: Mapping[str, Any],
    card_extra: Mapping[str, Any],
) -> Path:
    """Save ``model`` as ``<root>/<name>/`` (weights + card) and return that directory.

    ``architecture``/``config`` must rebuild ``model`` via ``gan.models.build``; ``card_extra`` supplies the
    remaining card fields (``version``, ``training``, ``input``, ``synthetic_output``, optionally ``metrics``
    and ``notes``). The weights are written first and the card last, each atomically, so a directory with a
    card always has complete weights. An existing model of the same name is replaced.
    """
    from safetensors.torch import save_file

    from gan.models import architecture as arch_class

    cls = arch_class(architecture)
    if not isinstance(model, cls):
        raise TypeError(
            f"model is a {type(model).__qualname__}, not architecture {architecture!r} ({cls.__qualname__})"
        )
    clash = _COMPUTED & set(card_extra)
    if clash:
        raise ValueError(f"card_extra may not set computed card fields: {', '.join(sorted(clash))}")

    directory = _model_dir(root, name)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE

    with durable_file(weights, PUBLISHED_MODE) as tmp:  # replaces the weights only once the card is valid
        save_file(_cpu_state(model), tmp)
        digest = sha256_file(tmp)
        card_data = {
            **card_extra,
            "name": name,
            "architecture": architecture,
            "config": dict(config),
            "created": datetime.now(UTC),
            "sha256": digest,
            "parameters": parameter_count(model),
        }
        try:
            card = ModelCard.model_validate(card_data)
        except ValidationError as exc:
            raise ModelCardError(f"invalid model card for {name!r}:\n{exc}") from None
    replace_durably(directory / CARD_FILE, (card.model_dump_json(indent=2) + "\n").encode(), PUBLISHED_MODE)
    return directory


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate one ``card.json``; any problem raises :class:`ModelCardError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelCardError(f"{path}: model card not found") from None
    try:
        return ModelCard.model_validate_json(text)
    except ValidationError as exc:
        raise ModelCardError(f"{path}: invalid model card:\n{exc}") from None


def _named_card(root: str | os.PathLike[str] | None, name: str) -> tuple[Path, ModelCard]:
    """The directory of ``<root>/<name>`` and its card, which must name the same model."""
    directory = _model_dir(root, name)
    card = load_card(directory / CARD_FILE)
    if card.name != name:
        raise ModelCardError(f"{directory / CARD_FILE}: card name {card.name!r} does not match directory {name!r}")
    return directory, card


def verified_card(root: str | os.PathLike[str] | None, name: str) -> ModelCard:
    """The card of ``<root>/<name>`` once the weights file's sha256 matches it, without loading the weights (no
    torch): what a server that runs an export of these weights (an ONNX file keyed by that sha256) checks."""
    directory, card = _named_card(root, name)
    weights = directory / WEIGHTS_FILE
    try:
        actual = sha256_file(weights)
    except FileNotFoundError:
        raise WeightsIntegrityError(f"{weights}: weights file not found") from None
    if actual != card.sha256:
        raise WeightsIntegrityError(
            f"{weights}: sha256 mismatch (card says {card.sha256}, file is {actual}); refusing to load"
        )
    return card


def load_model(
    root: str | os.PathLike[str] | None,
    name: str,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Rebuild, integrity-check and load ``<root>/<name>``; the model is returned in ``eval()`` mode."""
    from safetensors.torch import load

    from gan.models import build

    directory, card = _named_card(root, name)
    weights = directory / WEIGHTS_FILE
    try:
        data = weights.read_bytes()  # hash and deserialise the same bytes: no window for a swap in between
    except FileNotFoundError:
        raise WeightsIntegrityError(f"{weights}: weights file not found") from None
    actual = sha256_bytes(data)
    if actual != card.sha256:
        raise WeightsIntegrityError(
            f"{weights}: sha256 mismatch (card says {card.sha256}, file is {actual}); refusing to load"
        )

    model = build(card.architecture, **card.config)
    state = load(data)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsMismatchError(
            f"{weights}: weights do not fit architecture {card.architecture!r} with config {card.config}: {exc}"
        ) from None
    model.to(map_location)
    model.eval()
    return model, card


def update_card(root: str | os.PathLike[str] | None, name: str, changes: Mapping[str, Any]) -> ModelCard:
    """Rewrite ``<root>/<name>/card.json`` with ``changes`` (top-level fields) for the unchanged weights.

    The weights file is not touched: its sha256 must still match the card (else :class:`WeightsIntegrityError`),
    computed fields (name, architecture, config, created, sha256, parameters) may not be changed, and the new
    card is validated before it atomically replaces the old one.
    """
    clash = _COMPUTED & set(changes)
    if clash:
        raise ValueError(f"update_card may not change computed card fields: {', '.join(sorted(clash))}")
    directory = _model_dir(root, name)
    card = load_card(directory / CARD_FILE)
    weights = directory / WEIGHTS_FILE
    try:
        actual = sha256_file(weights)
    except FileNotFoundError:
        raise WeightsIntegrityError(f"{weights}: weights file not found") from None
    if actual != card.sha256:
        raise WeightsIntegrityError(f"{weights}: sha256 mismatch (card says {card.sha256}, file is {actual})")
    try:
        updated = ModelCard.model_validate(card.model_dump() | dict(changes))
    except ValidationError as exc:
        raise ModelCardError(f"invalid model card for {name!r}:\n{exc}") from None
    replace_durably(directory / CARD_FILE, (updated.model_dump_json(indent=2) + "\n").encode(), PUBLISHED_MODE)
    return updated


def list_models(root: str | os.PathLike[str] | None = None) -> list[ModelCard]:
    """Cards of every model under ``root`` (sorted by name); an invalid card raises :class:`ModelCardError`."""
    base = _root(root)
    if not base.is_dir():
        return []
    return [load_card(d / CARD_FILE) for d in sorted(base.iterdir()) if (d / CARD_FILE).is_file()]
