"""The inference engine: registry models behind one backend, warmed up, fed through one micro-batcher.

``InferenceEngine.from_settings(settings.inference)`` loads the served models from the registry (``gan/weights``
or ``settings.weights_dir``): the enhancer each input path uses (``settings.live_model`` and ``settings.study_model``
choose the ``fast`` operating point, ``settings.enhancer``, or the ``quality`` one, ``settings.quality_enhancer``;
see :func:`role_paths`) and ``settings.triage``, each with the version it must have. It picks the backend
(``auto``: TensorRT with CUDA, else ONNX Runtime on CPU; ``torch`` / ``onnxruntime`` / ``tensorrt`` force one),
warms each model up and starts the :class:`~server.inference.batcher.MicroBatcher`. On ONNX Runtime a model whose
export cache entry is complete (ONNX + manifest, keyed by the weights' sha256, which is checked against the card)
is served without torch (:meth:`InferenceEngine.from_cache`): the serving image has none; only otherwise is the torch
module built and exported. A model that is not in the
registry is recorded in :attr:`InferenceEngine.missing` with the reason (``/readyz`` reports it) instead of
stopping the service.

"Strength": the enhancer's adaptive ``α = 2σ(MLP(context))`` per residual block (1 = the unconditioned
residual, < 1 softer, > 1 stronger); :class:`EnhanceOutput` reports their mean as ``strength`` and each block's
value in ``alphas`` (on ONNX Runtime from the exported α head, else from the torch module). Models without one α
per block report ``strength=None``: ``"film"``, ``"none"`` and
``"gated"`` conditioning (the shipped quality model: α is a per-pixel map that the image's features and the context set
together, so no single value per block describes it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core import ENHANCE_PATHS, InferenceSettings, ServedModel
from server.inference.backends import Backend, OnnxBackend, TensorRTBackend, TorchBackend, resolve
from server.inference.batcher import MicroBatcher, QueueFull
from server.inference.tiling import paste, receptive_radius, tiles

if TYPE_CHECKING:
    from torch import nn

    from gan import ModelCard, TriageResult

log = logging.getLogger("aegle.inference")

__all__ = [
    "ROLES", "EnhanceOutput", "ImageTooLarge", "InferenceEngine", "InferenceMetrics", "LoadedModel", "ModelMissing",
    "registry_report", "role_paths",
]  # fmt: skip

#: What the service serves, by role: each is a :class:`~core.settings.ServedModel` setting of the same name
#: (``enhancer``: the fast operating point; ``quality_enhancer``: the quality one, None until it is set).
ROLES = ("enhancer", "quality_enhancer", "triage")
#: Triage runs in the study path (advisory) and answers ``POST /api/v1/classify``, whatever the enhancers.
TRIAGE_PATHS = ("study", "classify")
# Registry architectures the engine can serve, and their ONNX input names.
INPUTS: dict[str, tuple[str, ...]] = {"enhancer": ("image", "context"), "se-classifier": ("image",)}
WARMUP_SIZE = 64


def role_paths(settings: InferenceSettings) -> dict[str, list[str]]:
    """The input paths each role's model serves: ``live`` (``POST /api/v1/enhance``) and ``study`` (every DICOM
    path) use the enhancer of their operating point (:meth:`~core.settings.InferenceSettings.enhancer_role`),
    triage serves ``study`` and ``classify``. A role with no path is not loaded; an unset role has none."""
    paths: dict[str, list[str]] = {role: [] for role in ROLES}
    for path in ENHANCE_PATHS:
        paths[settings.enhancer_role(path)].append(path)
    paths["triage"] = list(TRIAGE_PATHS)
    return paths


def registry_report(settings: InferenceSettings) -> list[dict[str, Any]]:
    """Each configured model as the settings name it (with the paths it serves) and as the registry holds it,
    without loading weights: ``status`` is ``ok``, ``other-version`` or ``missing`` (what ``aegle models``
    prints)."""
    from gan import CARD_FILE, DEFAULT_ROOT, RegistryError, load_card

    root = Path(settings.weights_dir or DEFAULT_ROOT)
    report = []
    for role, paths in role_paths(settings).items():
        wanted: ServedModel | None = getattr(settings, role)
        if wanted is None:
            continue
        entry: dict[str, Any] = {"role": role, "name": wanted.name, "version": wanted.version, "paths": paths,
                                 "registry": str(root)}  # fmt: skip
        try:
            card = load_card(root / wanted.name / CARD_FILE)
        except (RegistryError, OSError) as exc:
            report.append(entry | {"status": "missing", "reason": str(exc)})
            continue
        same = wanted.version is None or card.version == wanted.version
        report.append(entry | {"status": "ok" if same else "other-version", "registry_version": card.version,
                               "sha256": card.sha256, "architecture": card.architecture})  # fmt: skip
    return report


class ModelMissing(LookupError):
    """A model the request needs is not loaded; the message says why."""


class ImageTooLarge(ValueError):
    """An image larger than one tile for a model that cannot be tiled (it has a global operation)."""


@dataclass(frozen=True)
class EnhanceOutput:
    """What :meth:`InferenceEngine.enhance` produced and what it applied."""

    images: np.ndarray  # N×sH×sW float32 (not clamped: callers map back to stored values and clip there)
    model_name: str
    model_version: str
    strength: float | None  # mean α over blocks and images; None for models without α conditioning
    alphas: tuple[float, ...] | None  # mean α of each block
    backend: str
    context_used: bool  # False: no context was given and the model saw the all-missing (zero) vector
    scale: int


@dataclass
class LoadedModel:
    """One served model: its card, the torch module (torch and TensorRT backends; None on ONNX Runtime, which
    serves from the export cache without torch) and the backend that runs it.

    ``receptive_radius``: input pixels an output pixel depends on (enhancers; ``None``: not local, not tileable).
    ``size_multiple``: input sides must be multiples of it (None: the module's ``size_multiple``, else 1).
    """

    card: ModelCard
    module: nn.Module | None
    backend: Backend
    receptive_radius: int | None = None
    size_multiple: int | None = None

    def __post_init__(self) -> None:
        if self.size_multiple is None:
            self.size_multiple = int(getattr(self.module, "size_multiple", 1))

    @property
    def name(self) -> str:
        return self.card.name

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (no weights paths)."""
        c = self.card
        return {
            "name": c.name, "architecture": c.architecture, "version": c.version, "sha256": c.sha256,
            "parameters": c.parameters, "backend": self.backend.name, "synthetic_output": c.synthetic_output,
            "input": c.input.model_dump(), "metrics": c.metrics,
        }  # fmt: skip


class InferenceMetrics:
    """Prometheus metrics of the engine (own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("aegle_inference_queue_depth", "Items waiting for a batch", registry=self.registry)
        self.batch_size = Histogram(
            "aegle_inference_batch_size", "Items per executed batch", ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=self.registry,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "aegle_inference_seconds", "Backend time per batch", ["model", "backend"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )  # fmt: skip
        self.rejected = Counter(
            "aegle_inference_rejected", "Requests refused because the queue was full", ["model"],
            registry=self.registry,
        )  # fmt: skip

    def value(self, name: str, **labels: str) -> float:
        """Current value of a metric sample (0 if absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0


class InferenceEngine:
    """Served models + micro-batcher. Thread-safe; :meth:`close` stops the batcher."""

    def __init__(
        self,
        models: Sequence[LoadedModel],
        settings: InferenceSettings,
        missing: dict[str, str] | None = None,
        warm_up: bool = True,
    ) -> None:
        self.settings = settings
        self._models = {m.name: m for m in models}
        self.missing = dict(missing or {})
        self.metrics = InferenceMetrics()
        if warm_up:
            self.warm_up()
        self.batcher = MicroBatcher(
            self._run_batch, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
            queue_max=settings.queue_max, batch_limit=self._batch_limit, name="aegle-inference",
        )  # fmt: skip
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)

    @classmethod
    def from_settings(
        cls, settings: InferenceSettings, roles: Sequence[str] | None = None, warm_up: bool = True
    ) -> InferenceEngine:
        """Load the models of ``roles`` (None: every role some path uses, :func:`role_paths`) from the registry on
        the configured backend, each model once; a missing model, or one whose card has another version than the
        setting asks, is recorded with the reason, not fatal.

        ONNX Runtime: the card is read and the weights' sha256 checked against it, then a complete export cache
        entry (ONNX + manifest, keyed by that sha256) is served without importing torch; only without one is the
        torch module built from the weights and exported (:meth:`serve`)."""
        from gan import ParityError, RegistryError, verified_card

        if settings.threads:
            from threadpoolctl import threadpool_limits

            # numpy's BLAS too: the DICOM pixel mapping (bicubic as two GEMMs) runs in the same process.
            threadpool_limits(limits=settings.threads, user_api="blas")
        backend = resolve(settings.backend)
        models: list[LoadedModel] = []
        missing: dict[str, str] = {}
        if roles is None:
            roles = [role for role, paths in role_paths(settings).items() if paths]
        for role in roles:
            wanted: ServedModel | None = getattr(settings, role)
            if wanted is None or wanted.name in missing or any(m.name == wanted.name for m in models):
                continue  # unset, or named by a role before (with the same version: the settings check that)
            try:
                card = verified_card(settings.weights_dir, wanted.name)
                if wanted.version is not None and card.version != wanted.version:
                    raise ValueError(
                        f"the registry holds version {card.version}, the settings ask for {wanted.version} "
                        f"(AEGLE_INFERENCE__{role.upper()}__VERSION)"
                    )
                loaded = cls.from_cache(card, settings) if backend == "onnxruntime" else None
                if loaded is None:
                    loaded = cls.serve(*cls._load_module(settings, backend, wanted.name, card), backend, settings)
                models.append(loaded)
            except (RegistryError, ParityError, ValueError) as exc:
                missing[wanted.name] = str(exc)
                log.error("model %s not served: %s", wanted.name, exc)
        return cls(models, settings, missing, warm_up=warm_up)

    @staticmethod
    def _load_module(
        settings: InferenceSettings, backend: str, name: str, card: ModelCard
    ) -> tuple[nn.Module, ModelCard]:
        """The torch module of ``name`` (the torch path: torch/TensorRT backends, or an ONNX export to make);
        ``ValueError`` (the model is not served, with the reason) where torch is not installed."""
        try:
            import torch
        except ImportError:
            need = (f"no complete ONNX export of these weights in {settings.cache_dir} (exporting one needs torch)"
                    if backend == "onnxruntime" else f"the {backend} backend needs it")  # fmt: skip
            raise ValueError(f"torch is not installed: {need}") from None

        from gan import load_model

        if settings.threads:
            torch.set_num_threads(settings.threads)
        module, loaded = load_model(settings.weights_dir, name)
        if loaded.sha256 != card.sha256:
            raise ValueError(f"{name}: the weights changed while loading (sha256 {card.sha256} → {loaded.sha256})")
        return module, loaded

    @staticmethod
    def from_cache(card: ModelCard, settings: InferenceSettings) -> LoadedModel | None:
        """``card``'s model on ONNX Runtime from a complete export cache entry (no torch), None without one."""
        if card.architecture not in INPUTS:
            raise ValueError(f"{card.name}: architecture {card.architecture!r} is not servable ({sorted(INPUTS)})")
        runner = OnnxBackend.from_cache(card, settings.cache_dir, settings.threads)
        if runner is None:
            return None
        return LoadedModel(card, None, runner, runner.receptive_radius, runner.size_multiple)

    @staticmethod
    def serve(module: nn.Module, card: ModelCard, backend: str, settings: InferenceSettings) -> LoadedModel:
        """Wrap a loaded registry model in ``backend`` (exporting/compiling as that backend needs). ONNX Runtime:
        export into the cache (ONNX, α head, manifest), then serve from that entry as a later start will."""
        if card.architecture not in INPUTS:
            raise ValueError(f"{card.name}: architecture {card.architecture!r} is not servable ({sorted(INPUTS)})")
        if backend == "onnxruntime":
            OnnxBackend.export(module, card, INPUTS[card.architecture], settings.cache_dir)
            loaded = InferenceEngine.from_cache(card, settings)
            if loaded is None:
                raise ValueError(f"{card.name}: the export cache entry just written is unusable (see the log)")
            return loaded
        runner: Backend = (
            TensorRTBackend(module, card, settings.cache_dir) if backend == "tensorrt" else TorchBackend(module)
        )
        radius = None
        if card.architecture == "enhancer":
            radius = receptive_radius(module, card.input.channels, card.input.context_size, card.input.scale)
        return LoadedModel(card, module, runner, radius)

    # ------------------------------------------------------------------ introspection

    @property
    def ready(self) -> bool:
        """Every requested model is loaded."""
        return not self.missing and bool(self._models)

    def models(self) -> list[dict[str, Any]]:
        """Summaries of the served models."""
        return [m.describe() for m in self._models.values()]

    def model(self, name: str) -> LoadedModel:
        """The served model ``name``; :class:`ModelMissing` (with the reason) if it is not loaded."""
        try:
            return self._models[name]
        except KeyError:
            reason = self.missing.get(name, "not requested at start-up")
            raise ModelMissing(f"model {name!r} is not loaded: {reason}") from None

    def warm_up(self) -> None:
        """Run each model once (64×64, batch 1) so the first request does not pay for initialisation."""
        for m in self._models.values():
            started = time.perf_counter()
            m.backend.run(self._example(m, WARMUP_SIZE, WARMUP_SIZE))
            log.info("warmed up %s on %s in %.2f s", m.name, m.backend.name, time.perf_counter() - started)

    @staticmethod
    def _example(m: LoadedModel, h: int, w: int) -> list[np.ndarray]:
        inputs = [np.zeros((1, m.card.input.channels, h, w), np.float32)]
        if "context" in INPUTS[m.card.architecture]:
            inputs.append(np.zeros((1, m.card.input.context_size), np.float32))
        return inputs

    # ------------------------------------------------------------------ batching

    def submit(
        self, name: str, payloads: Sequence[tuple[np.ndarray, ...]], queue_timeout: float | None = 0.0
    ) -> list[Future[np.ndarray]]:
        """Queue per-item inputs (without the batch axis) for model ``name``; one future per item."""
        model = self.model(name)
        key = (name, tuple(tuple(a.shape) for a in payloads[0]))
        try:
            return self.batcher.submit(key, payloads, timeout=queue_timeout)
        except QueueFull:
            self.metrics.rejected.labels(model=model.name).inc()
            raise

    def _batch_limit(self, key: Hashable) -> int:
        """Images per batch that fit ``max_batch_pixels`` (key = (model, per-item input shapes); image first)."""
        height, width = key[1][0][-2:]  # type: ignore[index]
        return self.settings.max_batch_pixels // (height * width)

    def run_all(
        self, name: str, payloads: Sequence[tuple[np.ndarray, ...]], queue_timeout: float | None
    ) -> list[np.ndarray]:
        """Run every item through the batcher in parts of at most ``max_batch`` and wait for the results."""
        return list(self.iter_results(name, payloads, queue_timeout))

    def iter_results(
        self, name: str, payloads: Sequence[tuple[np.ndarray, ...]], queue_timeout: float | None
    ) -> Iterator[np.ndarray]:
        """:meth:`run_all`, yielding each result in order as soon as its part is done (nothing else is kept)."""
        step = min(self.settings.max_batch, self.settings.queue_max)
        for start in range(0, len(payloads), step):
            yield from (f.result() for f in self.submit(name, payloads[start : start + step], queue_timeout))

    def _run_batch(self, key: Hashable, payloads: Sequence[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        name = key[0]  # type: ignore[index]
        model = self._models[name]
        inputs = [np.stack([p[i] for p in payloads]) for i in range(len(payloads[0]))]
        started = time.perf_counter()
        out = model.backend.run(inputs)
        self.metrics.inference_seconds.labels(model=name, backend=model.backend.name).observe(
            time.perf_counter() - started
        )
        self.metrics.batch_size.labels(model=name).observe(len(payloads))
        return list(out)

    # ------------------------------------------------------------------ model calls

    def enhance(
        self,
        images: np.ndarray,
        context: np.ndarray | None = None,
        *,
        model: str | None = None,
        queue_timeout: float | None = None,
    ) -> EnhanceOutput:
        """Enhance N×H×W float32 images in [0, 1] with one context vector (or N of them, or None).

        Sizes the architecture cannot take (odd sides for ``trunk="unshuffle"``) are reflect-padded and the
        output cropped back to ``scale·H × scale·W``. Images with a side over ``settings.tile_size`` run in
        overlapping tiles of that size (:mod:`server.inference.tiling`: the same result, the memory of one tile);
        a model that cannot be tiled raises :class:`ImageTooLarge` for them.

        ``queue_timeout``: how long to wait for room in the queue (None: wait — the pipeline's default;
        0: raise :class:`QueueFull` at once — what the API does). ``model``: a served enhancer's name (None: the
        fast one, ``settings.enhancer``); each input path passes its own (``settings.enhancer_for(path)``).
        """
        model = model or self.settings.enhancer.name
        served = self.model(model)
        card = served.card
        if card.architecture != "enhancer" or card.input.channels != 1:
            raise ValueError(f"model {model!r} is not a one-channel enhancer")
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or 0 in images.shape:
            raise ValueError(f"images must be N×H×W, got shape {images.shape}")
        n = images.shape[0]
        size = card.input.context_size
        if context is None:
            contexts = np.zeros((n, size), np.float32)
        else:
            contexts = np.asarray(context, dtype=np.float32).reshape(-1, size)
            if contexts.shape[0] == 1:
                contexts = np.repeat(contexts, n, axis=0)
            if contexts.shape[0] != n:
                raise ValueError(f"{contexts.shape[0]} context vectors for {n} images")
        h, w = images.shape[1:]
        multiple = served.size_multiple or 1  # e.g. 2 for trunk="unshuffle"
        pad_h, pad_w = -h % multiple, -w % multiple
        if pad_h or pad_w:  # reflect-pad to the multiple, crop the output back
            images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
        padded_h, padded_w = images.shape[1:]
        tile = self.settings.tile_size // multiple * multiple
        if max(padded_h, padded_w) > tile and served.receptive_radius is None:
            raise ImageTooLarge(
                f"{model} has a global operation and cannot run in tiles: image sides must be at most {tile} "
                f"pixels, got {h}×{w}"
            )
        # Margin: the receptive radius, plus one for the sub-pixel phases and one to spare; a multiple of `multiple`.
        margin = -(-((served.receptive_radius or 0) + 2) // multiple) * multiple
        windows = tiles(padded_h, padded_w, tile, margin)
        payloads = [(window.crop(images[i])[None], contexts[i]) for i in range(n) for window in windows]
        scale = card.input.scale
        result = np.empty((n, scale * padded_h, scale * padded_w), np.float32)
        for k, part in enumerate(self.iter_results(model, payloads, queue_timeout)):
            paste(result[k // len(windows)], part[0], windows[k % len(windows)], scale)
        alphas = self._alphas(served, contexts)
        return EnhanceOutput(
            images=result[:, : scale * h, : scale * w],
            model_name=card.name,
            model_version=card.version,
            strength=None if alphas is None else round(float(np.mean(alphas)), 4),
            alphas=None if alphas is None else tuple(round(float(a), 4) for a in alphas.mean(axis=0)),
            backend=served.backend.name,
            context_used=context is not None,
            scale=scale,
        )

    @staticmethod
    def _alphas(served: LoadedModel, contexts: np.ndarray) -> np.ndarray | None:
        """N×blocks α of an α-conditioned enhancer (the context MLP only: cheap), else None: on ONNX Runtime its
        exported α head, otherwise the torch module."""
        if isinstance(served.backend, OnnxBackend):
            return served.backend.alphas(contexts) if served.backend.has_alphas else None
        module = served.module
        if getattr(module, "conditioning", None) != "alpha":
            return None
        import torch

        with torch.inference_mode():
            return module.alphas(torch.from_numpy(contexts)).numpy()  # type: ignore[union-attr,operator]

    def triage(
        self, image: np.ndarray, *, model: str | None = None, queue_timeout: float | None = None
    ) -> TriageResult:
        """Triage one 2-D image in [0, 1] (``gan.triage``: central window → SE-CNN → per-class decision)."""
        return self.triage_many([image], model=model, queue_timeout=queue_timeout)[0]

    def triage_many(
        self, images: Sequence[np.ndarray], *, model: str | None = None, queue_timeout: float | None = None
    ) -> list[TriageResult]:
        """Triage several 2-D images in one submission (one batching wait, not one per image).

        A bad image (see ``gan.triage.preprocess``) raises ``ValueError`` for the whole call.
        """
        from gan import card_thresholds, interpret, preprocess

        model = model or self.settings.triage.name
        served = self.model(model)
        if served.card.architecture != "se-classifier":
            raise ValueError(f"model {model!r} is not a classifier")
        logits = self.run_all(model, [(preprocess(image)[0],) for image in images], queue_timeout)
        thresholds = card_thresholds(served.card)  # calibrated on val, in the card
        return [interpret(row, thresholds) for row in logits]

    def close(self) -> None:
        """Finish queued work and stop the batcher."""
        self.batcher.close()
