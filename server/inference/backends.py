"""Inference backends behind one interface: ONNX Runtime (CPU default), torch eager, TensorRT (CUDA only).

Every backend runs a batch of numpy inputs (N×… each) and returns the first output as a float32 numpy array.
The ONNX file is exported once per weights sha256 and graph code (:func:`graph_fingerprint`) into the cache
directory and written only after the onnxruntime-vs-torch parity check passed; later starts reuse it.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core import durable_file

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gan import ModelCard

log = logging.getLogger("aegle.inference")

__all__ = [
    "Backend",
    "OnnxBackend",
    "TensorRTBackend",
    "TorchBackend",
    "graph_fingerprint",
    "onnx_path",
    "parity_inputs",
    "resolve",
]


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


def graph_fingerprint(model: nn.Module) -> str:
    """12 hex digits of sha256 over the model class's source file and the torch version: what shapes the graph.

    The weights' sha256 alone would keep serving an export made by older code after an upgrade (e.g. the
    enhancer's bicubic base moved from ONNX ``Resize`` to a fixed conv: same values, other graph).
    """
    import inspect

    import torch

    source = Path(inspect.getfile(type(model))).read_bytes()
    return hashlib.sha256(source + torch.__version__.encode()).hexdigest()[:12]


def onnx_path(cache_dir: Path, card: ModelCard, model: nn.Module) -> Path:
    """Where the ONNX export of these weights lives: one file per model name, weights sha256 and graph code."""
    return cache_dir / f"{card.name}-{card.sha256}-{graph_fingerprint(model)}.onnx"


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
    """ONNX Runtime on CPU with a fixed number of intra-op threads."""

    name = "onnxruntime"

    def __init__(
        self, model: nn.Module, card: ModelCard, input_names: Sequence[str], cache_dir: Path, threads: int | None
    ) -> None:
        import onnxruntime as ort

        self.path = self.export(model, card, input_names, cache_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    @staticmethod
    def export(model: nn.Module, card: ModelCard, input_names: Sequence[str], cache_dir: Path) -> Path:
        """Export + parity-check once per weights sha256 and graph code; reuse the cached file afterwards."""
        from gan import export_onnx, parity

        path = onnx_path(cache_dir, card, model)
        if path.is_file():
            return path
        cases = parity_inputs(input_names, card.input.context_size, card.input.channels)
        path.parent.mkdir(parents=True, exist_ok=True)
        with durable_file(path) as staging:  # published only once the parity check passed
            with warnings.catch_warnings():  # the architectures' eager-only shape checks are constants when traced
                warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
                export_onnx(model, cases[0], staging, input_names, ["output"])
            report = parity(model, staging, cases)
        log.info("exported %s to %s (parity max abs error %.2e)", card.name, path, report.max_abs_error)
        return path

    def run(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        feeds = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.input_names, inputs, strict=True)}
        return self.session.run(None, feeds)[0]


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
