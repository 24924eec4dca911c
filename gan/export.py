"""Deployment exports: ONNX (+ onnxruntime parity check) and an import-guarded TensorRT path.

ONNX exporter choice: torch 2.13's ``torch.onnx.export`` defaults to the torch.export-based "dynamo" exporter,
which needs the ``onnxscript`` package (not a dependency here, and ``dynamo=True`` fails without it). We pass
``dynamo=False`` and use the TorchScript-tracing exporter, which takes ``dynamic_axes`` directly and whose
output is verified by :func:`parity` on CPU. It emits a deprecation warning in torch ≥ 2.9, which
:func:`export_onnx` silences; if torch removes it, switch to ``dynamo=True`` + ``dynamic_shapes`` and add
``onnxscript``.

TensorRT (:func:`compile_tensorrt`) needs a CUDA GPU and ``torch_tensorrt``; neither exists on the development
machines, so that path is **not verified** here — only its guard and :func:`engine_cache_key` are tested.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import durable_file

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

__all__ = [
    "BACKENDS",
    "ONNX_OPSET",
    "ParityCase",
    "ParityError",
    "ParityReport",
    "TensorRTUnavailable",
    "architecture_fingerprint",
    "choose_backend",
    "compile_tensorrt",
    "default_dynamic_axes",
    "engine_cache_key",
    "export_onnx",
    "parity",
    "tensorrt_unavailable_reason",
]

ONNX_OPSET = 17
BACKENDS = ("onnxruntime", "tensorrt")


def architecture_fingerprint(architecture: str) -> str:
    """12 hex digits of sha256 over the source file of a registry architecture's class and :data:`ONNX_OPSET`.

    What shapes an exported graph besides the weights (e.g. the enhancer's bicubic base moved from ONNX ``Resize``
    to a fixed conv: same values, other graph), so an export cache keyed by weights sha256 and this fingerprint
    never serves an export made by older code. Read without importing the module (no torch): the serving image
    looks its cache entries up without torch; the exporting torch's version goes into the entry's manifest.
    """
    import importlib.util

    from gan.models import ARCHITECTURES

    try:
        module = ARCHITECTURES[architecture].split(":")[0]
    except KeyError:
        raise KeyError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"source of {module} not found")
    source = Path(spec.origin).read_bytes()
    return hashlib.sha256(source + f"opset={ONNX_OPSET}".encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- ONNX export


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    import torch

    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return tuple(outputs)
    raise TypeError(f"model must return a tensor or a tuple/list of tensors, got {type(outputs).__name__}")


def default_dynamic_axes(
    inputs: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> dict[str, dict[int, str]]:
    """Dim 0 of every tensor is the shared ``batch`` axis; dims 2 and 3 of 4-D (N×C×H×W) tensors are spatial.

    Each tensor's spatial axes get their own names (an output's size is a multiple of its input's, not equal).
    """
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in [*zip(input_names, inputs, strict=True), *zip(output_names, outputs, strict=True)]:
        dims: dict[int, str] = {0: "batch"} if tensor.dim() >= 1 else {}
        if tensor.dim() == 4:
            dims |= {2: f"{name}_height", 3: f"{name}_width"}
        axes[name] = dims
    return axes


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset_version: int = ONNX_OPSET,
) -> Path:
    """Export ``model`` (in eval mode) to ONNX at ``path`` and run ``onnx.checker`` on the result.

    ``dynamic_axes`` defaults to :func:`default_dynamic_axes` (dynamic batch and spatial axes). Uses the
    TorchScript exporter (``dynamo=False``, see the module docstring). The file is written atomically.
    """
    import onnx
    import torch

    if opset_version < 17:
        raise ValueError(f"opset_version must be >= 17, got {opset_version}")
    if len(input_names) != len(example_inputs):
        raise ValueError(f"{len(input_names)} input names for {len(example_inputs)} example inputs")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = _as_tuple(model(*example_inputs))
        if len(output_names) != len(outputs):
            raise ValueError(f"{len(output_names)} output names for {len(outputs)} model outputs")
        axes = (
            dynamic_axes
            if dynamic_axes is not None
            else default_dynamic_axes(example_inputs, outputs, input_names, output_names)
        )
        with durable_file(path) as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
            torch.onnx.export(
                model,
                tuple(example_inputs),
                str(tmp),
                dynamo=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in axes.items()},
                opset_version=opset_version,
                do_constant_folding=True,
            )
            onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    finally:
        model.train(was_training)
    return path


# --------------------------------------------------------------------------- parity


class ParityError(AssertionError):
    """onnxruntime and torch eager disagree beyond tolerance (the report is attached as ``.report``)."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ParityCase:
    """One input set: its shapes and the worst errors over all outputs."""

    input_shapes: tuple[tuple[int, ...], ...]
    max_abs_error: float
    max_rel_error: float
    passed: bool


@dataclass(frozen=True)
class ParityReport:
    """Result of :func:`parity`; ``passed`` means every element satisfied ``|ort − torch| <= atol + rtol·|torch|``."""

    rtol: float
    atol: float
    cases: list[ParityCase] = field(default_factory=list)

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.cases), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.cases), default=0.0)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)


def _check_coverage(inputs: Sequence[tuple[torch.Tensor, ...]]) -> None:
    """Demand ≥ 2 batch sizes and, if any input is 4-D, ≥ 2 spatial sizes, so the dynamic axes are exercised."""
    if len(inputs) < 2:
        raise ValueError("parity needs at least two input sets (different batch and spatial sizes)")
    batches = {tuple(t.shape[0] for t in case) for case in inputs}
    if len(batches) < 2:
        raise ValueError(f"parity input sets must cover at least two batch sizes, got {sorted(batches)}")
    spatial = {tuple(tuple(t.shape[2:]) for t in case if t.dim() == 4) for case in inputs}
    if any(spatial) and len(spatial) < 2:
        raise ValueError(f"parity input sets must cover at least two spatial sizes, got {sorted(spatial)}")


def _errors(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[float, float, bool]:
    import numpy as np

    if got.shape != want.shape:
        return float("inf"), float("inf"), False
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    ref = np.abs(want.astype(np.float64))
    rel = diff / np.maximum(ref, np.finfo(np.float32).tiny)
    ok = bool(np.all(diff <= atol + rtol * ref)) and bool(np.all(np.isfinite(got)))
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), ok


def parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: Sequence[tuple[torch.Tensor, ...]],
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> ParityReport:
    """Compare onnxruntime (CPUExecutionProvider) with torch eager on each input set; raise :class:`ParityError`.

    ``inputs`` is a list of positional-input tuples and must span at least two batch sizes and two spatial
    sizes, which proves the exported dynamic axes work.
    """
    import onnxruntime as ort
    import torch

    _check_coverage(inputs)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    was_training = model.training
    model.eval()
    cases: list[ParityCase] = []
    try:
        for case in inputs:
            if len(case) != len(names):
                raise ValueError(f"ONNX model takes {len(names)} inputs {names}, got {len(case)} tensors")
            with torch.no_grad():
                expected = [t.detach().cpu().numpy() for t in _as_tuple(model(*case))]
            got = session.run(None, {n: t.detach().cpu().numpy() for n, t in zip(names, case, strict=True)})
            if len(got) != len(expected):
                raise ValueError(f"ONNX model has {len(got)} outputs, torch model {len(expected)}")
            errs = [_errors(g, e, rtol, atol) for g, e in zip(got, expected, strict=True)]
            cases.append(
                ParityCase(
                    input_shapes=tuple(tuple(t.shape) for t in case),
                    max_abs_error=max(e[0] for e in errs),
                    max_rel_error=max(e[1] for e in errs),
                    passed=all(e[2] for e in errs),
                )
            )
    finally:
        model.train(was_training)
    report = ParityReport(rtol=rtol, atol=atol, cases=cases)
    if not report.passed:
        failed = "; ".join(
            f"inputs {c.input_shapes}: max abs {c.max_abs_error:.3e}, max rel {c.max_rel_error:.3e}"
            for c in cases
            if not c.passed
        )
        raise ParityError(f"{onnx_path}: onnxruntime vs torch beyond rtol={rtol}, atol={atol}: {failed}", report)
    return report


# --------------------------------------------------------------------------- TensorRT (not verified here)


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot be used on this machine; the message says why (no CUDA GPU and/or no torch_tensorrt)."""


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT is unusable here, or ``None`` if a CUDA GPU and ``torch_tensorrt`` are both present."""
    try:
        torch_found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # blocked by an import hook, or a broken install
        torch_found = False
    if not torch_found:  # the serving image: ONNX Runtime only
        return "torch is not installed (ONNX Runtime only)"
    import torch

    reasons = []
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
        reasons.append(f"no CUDA GPU: torch.cuda.is_available() is False ({build})")
    if importlib.util.find_spec("torch_tensorrt") is None:
        reasons.append("torch_tensorrt is not installed (install the 'gpu' extra on a CUDA machine)")
    else:
        try:
            importlib.import_module("torch_tensorrt")
        except Exception as exc:  # a broken install (e.g. CUDA/TensorRT library mismatch) raises anything
            reasons.append(f"torch_tensorrt cannot be imported: {type(exc).__name__}: {exc}")
    return "; ".join(reasons) or None


def engine_cache_key(
    gpu_name: str,
    compute_capability: tuple[int, int],
    tensorrt_version: str,
    torch_tensorrt_version: str,
    model_sha256: str,
    inputs_signature: str = "",
) -> str:
    """Deterministic cache key (hex sha256) for a TensorRT engine; any changed component gives a new key.

    ``inputs_signature`` describes the compiled input shapes/dtypes/precisions (an engine is shape-specific).
    """
    components = {
        "gpu_name": gpu_name,
        "compute_capability": [int(compute_capability[0]), int(compute_capability[1])],
        "tensorrt": tensorrt_version,
        "torch_tensorrt": torch_tensorrt_version,
        "model_sha256": model_sha256,
        "inputs": inputs_signature,
    }
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()


def _inputs_signature(inputs: Sequence[torch.Tensor], precisions: Sequence[torch.dtype]) -> str:
    shapes = ",".join(f"{tuple(t.shape)}:{t.dtype}" for t in inputs)
    return f"{shapes}|{','.join(sorted(str(p) for p in precisions))}"


def _trt_device() -> torch.device:
    """The device TensorRT engines run on (a seam so the caching logic can be tested without a GPU)."""
    import torch

    return torch.device("cuda")


def compile_tensorrt(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    cache_dir: str | os.PathLike[str],
    model_sha256: str | None = None,
    enabled_precisions: Sequence[torch.dtype] | None = None,
) -> nn.Module:
    """Compile ``model`` with torch-tensorrt (dynamo IR), caching the engine on disk. NOT VERIFIED on this machine.

    Raises :class:`TensorRTUnavailable` unless a CUDA GPU and ``torch_tensorrt`` are present. The cache file is
    ``<cache_dir>/<engine_cache_key>.ep`` (key = GPU name, compute capability, TensorRT and torch-tensorrt
    versions, model sha256, input shapes/precisions); a changed component misses the cache and rebuilds, as
    does an unreadable cached engine. ``model_sha256`` defaults to the sha256 of the model's state dict (the
    registry's card sha256 when the model came from :func:`gan.registry.save_model`). Compiled for the exact
    shapes of ``example_inputs``.
    """
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise TensorRTUnavailable(f"TensorRT backend unavailable: {reason}")

    import tensorrt
    import torch
    import torch_tensorrt

    from gan.registry import state_dict_sha256

    precisions = list(enabled_precisions or [torch.float32])
    device = _trt_device()
    key = engine_cache_key(
        gpu_name=torch.cuda.get_device_name(device),
        compute_capability=torch.cuda.get_device_capability(device),
        tensorrt_version=tensorrt.__version__,
        torch_tensorrt_version=torch_tensorrt.__version__,
        model_sha256=model_sha256 or state_dict_sha256(model),
        inputs_signature=_inputs_signature(example_inputs, precisions),
    )
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    engine_path = cache / f"{key}.ep"
    inputs = [t.to(device) for t in example_inputs]

    if engine_path.is_file():
        try:
            return torch_tensorrt.load(str(engine_path)).module()
        except Exception as exc:  # stale/corrupt engine: rebuild below
            warnings.warn(f"{engine_path}: cached TensorRT engine unusable ({exc}); rebuilding", stacklevel=2)
            engine_path.unlink(missing_ok=True)

    model = model.eval().to(device)
    compiled = torch_tensorrt.compile(model, ir="dynamo", arg_inputs=inputs, enabled_precisions=set(precisions))
    with durable_file(engine_path, suffix=".ep") as tmp:
        torch_tensorrt.save(compiled, str(tmp), arg_inputs=inputs)
    return compiled


# --------------------------------------------------------------------------- backend choice


def choose_backend(preferred: str | None = None) -> str:
    """``"tensorrt"`` when a CUDA GPU and torch_tensorrt are present, else ``"onnxruntime"`` (CPU).

    ``preferred`` overrides the choice; an unknown name raises ``ValueError`` and ``"tensorrt"`` on a machine
    without it raises :class:`TensorRTUnavailable`.
    """
    if preferred is None:
        return "tensorrt" if tensorrt_unavailable_reason() is None else "onnxruntime"
    if preferred not in BACKENDS:
        raise ValueError(f"unknown backend {preferred!r}; known: {', '.join(BACKENDS)}")
    if preferred == "tensorrt":
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise TensorRTUnavailable(f"TensorRT backend requested but unavailable: {reason}")
    return preferred
