"""Inference backends behind one interface: ONNX Runtime (CPU default), torch eager, TensorRT (CUDA only).

Every backend runs a batch of numpy inputs (N×… each) and returns the first output as a float32 numpy array.
The ONNX file is exported once per weights sha256 and graph code (``gan.architecture_fingerprint``: the
architecture's source, read without importing torch) into the cache directory and written only after the
onnxruntime-vs-torch parity check passed; later starts reuse it. Beside it go, for an α-conditioned enhancer, the
α head (``context → α per block``, its own small parity-checked ONNX file) and last a manifest (JSON: what serving
otherwise took from the torch module — receptive radius, size multiple, input/output names and shapes, the α head —
plus the files' sha256 and the exporting torch/onnx versions). A complete entry (:func:`read_manifest`) is served
without torch (:meth:`OnnxBackend.from_cache`): the serving image carries no torch.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core import durable_file

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gan import ModelCard

log = logging.getLogger("aegle.inference")

__all__ = [
    "MANIFEST_FORMAT",
    "Backend",
    "OnnxBackend",
    "TensorRTBackend",
    "TorchBackend",
    "alpha_path",
    "cache_stem",
    "manifest_path",
    "onnx_path",
    "parity_inputs",
    "read_manifest",
    "resolve",
]

#: Version of the cache manifest's layout; an entry with another one is exported again (with torch).
MANIFEST_FORMAT = 1
#: Input names of each servable architecture's exported graph (the engine's ``INPUTS``), and its output name.
OUTPUT_NAME = "output"
ALPHA_INPUT, ALPHA_OUTPUT = "context", "alphas"


class Backend(Protocol):
    """Runs one batch; ``name`` is what the metrics and the API report."""

    name: str

    def run(self, inputs: Sequence[np.ndarray]) -> np.ndarray: ...


def resolve(preferred: str) -> str:
    """The backend for a setting: ``auto`` picks TensorRT with CUDA, else ONNX Runtime; others are checked."""
    from gan import choose_backend

    if preferred == "torch":
        return "torch"
    return choose_backend(None if preferred == "auto" else preferred)


def parity_inputs(input_names: Sequence[str], context_size: int, channels: int) -> list[tuple[torch.Tensor, ...]]:
    """Two batch sizes × two spatial sizes, which exercises the exported dynamic axes."""
    import torch

    generator = torch.Generator().manual_seed(0)
    cases = []
    for batch, (h, w) in ((1, (32, 32)), (2, (48, 40))):
        case = [torch.rand(batch, channels, h, w, generator=generator)]
        if "context" in input_names:
            case.append(torch.rand(batch, context_size, generator=generator))
        cases.append(tuple(case))
    return cases


def cache_stem(card: ModelCard) -> str:
    """The cache entry's file stem: model name, weights sha256 and graph code (no torch version: see the module)."""
    from gan import architecture_fingerprint

    return f"{card.name}-{card.sha256}-{architecture_fingerprint(card.architecture)}"


def onnx_path(cache_dir: Path, card: ModelCard) -> Path:
    """Where the ONNX export of these weights lives: one file per model name, weights sha256 and graph code."""
    return cache_dir / f"{cache_stem(card)}.onnx"


def alpha_path(cache_dir: Path, card: ModelCard) -> Path:
    """The α head's ONNX file (``context`` N×K → ``alphas`` N×blocks) of an α-conditioned enhancer."""
    return cache_dir / f"{cache_stem(card)}.alpha.onnx"


def manifest_path(cache_dir: Path, card: ModelCard) -> Path:
    """The cache entry's manifest, written last: its presence (and validity) makes the entry complete."""
    return cache_dir / f"{cache_stem(card)}.json"


def _sha256_file(path: Path) -> str:
    from gan import sha256_file

    return sha256_file(path)


def read_manifest(cache_dir: Path, card: ModelCard) -> dict[str, Any] | None:
    """The manifest of a complete, intact cache entry for ``card``; None when there is none or it is unusable
    (another format, other weights or model, a file missing or changed — logged: the caller exports again)."""
    path = manifest_path(cache_dir, card)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        problems = [
            f"{key} is {manifest.get(key)!r}, expected {want!r}"
            for key, want in (("format", MANIFEST_FORMAT), ("name", card.name), ("sha256", card.sha256),
                              ("architecture", card.architecture), ("scale", card.input.scale))
            if manifest.get(key) != want
        ]  # fmt: skip
        for role, entry in manifest["files"].items():
            file = cache_dir / entry["file"]
            if Path(entry["file"]).name != entry["file"] or not file.is_file():
                problems.append(f"{role} file {entry['file']} missing")
            elif _sha256_file(file) != entry["sha256"]:
                problems.append(f"{role} file {entry['file']} changed (sha256)")
        if "model" not in manifest["files"] or (manifest["alpha"] is not None and "alpha" not in manifest["files"]):
            problems.append("incomplete file list")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        problems = [f"unreadable: {type(exc).__name__}: {exc}"]
    if problems:
        log.warning("cache entry %s not used: %s", path, "; ".join(problems))
        return None
    return manifest


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _io(session: Any) -> dict[str, list[dict[str, Any]]]:
    """Names and shapes (a dynamic axis by its name) of a session's inputs and outputs, as the manifest lists them."""
    return {
        kind: [{"name": a.name, "shape": list(a.shape)} for a in getattr(session, f"get_{kind}")()]
        for kind in ("inputs", "outputs")
    }


class TorchBackend:
    """torch eager, no autograd."""

    name = "torch"

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def run(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs))
        return out.numpy().astype(np.float32, copy=False)


class OnnxBackend:
    """ONNX Runtime on CPU with a fixed number of intra-op threads, from a complete cache entry (no torch).

    ``manifest``: the entry's manifest (:func:`read_manifest`); :meth:`alphas` runs the α head when it has one.
    """

    name = "onnxruntime"

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], threads: int | None) -> None:
        self.manifest = manifest
        self.path = cache_dir / manifest["files"]["model"]["file"]
        self.session = _session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        expected = [i["name"] for i in manifest["inputs"]]
        if self.input_names != expected:
            raise ValueError(f"{self.path}: inputs {self.input_names}, the manifest says {expected}")
        alpha = manifest["files"].get("alpha")
        self.alpha_session = None if alpha is None else _session(cache_dir / alpha["file"], threads)

    @classmethod
    def from_cache(cls, card: ModelCard, cache_dir: Path, threads: int | None) -> OnnxBackend | None:
        """The backend of ``card``'s complete cache entry, or None when there is none (export with torch first)."""
        manifest = read_manifest(cache_dir, card)
        return None if manifest is None else cls(cache_dir, manifest, threads)

    @property
    def receptive_radius(self) -> int | None:
        """Input pixels an output pixel depends on (measured at export; None: not local, cannot be tiled)."""
        return self.manifest["receptive_radius"]

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (pad, then crop the output)."""
        return int(self.manifest["size_multiple"])

    @property
    def has_alphas(self) -> bool:
        """The model is α-conditioned (one α per block, computed by the α head)."""
        return self.alpha_session is not None

    def alphas(self, contexts: np.ndarray) -> np.ndarray:
        """N×blocks α for N context vectors (the exported ``module.alphas``)."""
        if self.alpha_session is None:
            raise ValueError(f"{self.manifest['name']} is not α-conditioned")
        feeds = {ALPHA_INPUT: np.ascontiguousarray(contexts, dtype=np.float32)}
        return self.alpha_session.run(None, feeds)[0]

    @staticmethod
    def export(model: nn.Module, card: ModelCard, input_names: Sequence[str], cache_dir: Path) -> Path:
        """Export + parity-check once per weights sha256 and graph code, then write the manifest; reuse a complete
        entry afterwards. Returns the model's ONNX file. Needs torch (the model is the loaded torch module)."""
        from gan import export_onnx, parity

        path = onnx_path(cache_dir, card)
        if read_manifest(cache_dir, card) is not None:
            return path
        cases = parity_inputs(input_names, card.input.context_size, card.input.channels)
        path.parent.mkdir(parents=True, exist_ok=True)
        with durable_file(path) as staging:  # published only once the parity check passed
            with warnings.catch_warnings():  # the architectures' eager-only shape checks are constants when traced
                warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
                export_onnx(model, cases[0], staging, input_names, [OUTPUT_NAME])
            report = parity(model, staging, cases)
        errors = {"model": report.max_abs_error}
        files = {"model": {"file": path.name, "sha256": _sha256_file(path)}}
        alpha = None
        if getattr(model, "conditioning", None) == "alpha":
            head = alpha_path(cache_dir, card)
            errors["alpha"] = _export_alpha_head(model, card.input.context_size, head)
            files["alpha"] = {"file": head.name, "sha256": _sha256_file(head)}
            # strength = the mean of the α (2σ(MLP(context)) per block), rounded to 4 decimals, as with torch
            alpha = {"input": ALPHA_INPUT, "output": ALPHA_OUTPUT, "blocks": len(model.blocks)}
        radius = None
        if card.architecture == "enhancer":
            from server.inference.tiling import receptive_radius

            radius = receptive_radius(model, card.input.channels, card.input.context_size, card.input.scale)
        _write_manifest(path, model, card, files, alpha, radius, errors)
        log.info("exported %s to %s (parity max abs error %.2e)", card.name, path, max(errors.values()))
        return path

    def run(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        feeds = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.input_names, inputs, strict=True)}
        return self.session.run(None, feeds)[0]


def _export_alpha_head(model: nn.Module, context_size: int, path: Path) -> float:
    """Export ``model.alphas`` (context N×K → α N×blocks) to ``path``, parity-checked; the max abs error."""
    import torch

    from gan import export_onnx, parity

    class AlphaHead(torch.nn.Module):
        def __init__(self, enhancer: nn.Module) -> None:
            super().__init__()
            self.enhancer = enhancer

        def forward(self, context: torch.Tensor) -> torch.Tensor:
            return self.enhancer.alphas(context)  # type: ignore[operator]

    head = AlphaHead(model).eval()
    generator = torch.Generator().manual_seed(0)
    cases = [(torch.rand(batch, context_size, generator=generator),) for batch in (1, 3)]
    with durable_file(path) as staging:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
            export_onnx(head, cases[0], staging, [ALPHA_INPUT], [ALPHA_OUTPUT])
        report = parity(head, staging, cases, rtol=1e-5, atol=1e-6)
    return report.max_abs_error


def _write_manifest(
    path: Path, model: nn.Module, card: ModelCard, files: dict[str, dict[str, str]], alpha: dict[str, Any] | None,
    radius: int | None, errors: dict[str, float],
) -> None:  # fmt: skip
    """The entry's manifest, written last (atomically): what serving needs without the torch module."""
    from datetime import UTC, datetime

    import onnx
    import onnxruntime as ort
    import torch

    io = _io(_session(path, 1))
    graph = onnx.load(str(path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": int(o.version) for o in graph.opset_import}
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": card.name,
        "version": card.version,
        "architecture": card.architecture,
        "sha256": card.sha256,  # of the weights (model.safetensors) the files were exported from
        "scale": card.input.scale,
        "channels": card.input.channels,
        "context_size": card.input.context_size,
        "size_multiple": int(getattr(model, "size_multiple", 1)),
        "receptive_radius": radius,
        **io,
        "alpha": alpha,
        "files": files,
        "parity_max_abs_error": errors,
        "exporter": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "opsets": opsets,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    target = path.with_name(path.name.removesuffix(".onnx") + ".json")
    with durable_file(target) as staging:
        staging.write_text(json.dumps(manifest, indent=2) + "\n")


class TensorRTBackend:
    """torch-tensorrt on CUDA, one engine per input shape, cached on disk by :func:`gan.export.compile_tensorrt`.

    Not verified on the development machines (no GPU): only selected when ``tensorrt_unavailable_reason()`` is
    None.
    """

    name = "tensorrt"

    def __init__(self, model: nn.Module, card: ModelCard, cache_dir: Path) -> None:
        self.model = model
        self.sha256 = card.sha256
        self.cache_dir = cache_dir / "tensorrt"
        self._engines: dict[tuple[tuple[int, ...], ...], nn.Module] = {}

    def run(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        from gan import compile_tensorrt

        signature = tuple(a.shape for a in inputs)
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs)
        engine = self._engines.get(signature)
        if engine is None:
            engine = compile_tensorrt(self.model, tensors, self.cache_dir, model_sha256=self.sha256)
            self._engines[signature] = engine
        with torch.inference_mode():
            out = engine(*(t.cuda() for t in tensors))
        return out.float().cpu().numpy()
