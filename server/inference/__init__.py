"""Inference: registry models on ONNX Runtime / torch / TensorRT behind one engine with micro-batching."""

from server.inference.batcher import MicroBatcher, QueueFull
from server.inference.engine import ENHANCER, TRIAGE, EnhanceOutput, ImageTooLarge, InferenceEngine, ModelMissing

__all__ = [
    "ENHANCER", "TRIAGE", "EnhanceOutput", "ImageTooLarge", "InferenceEngine", "MicroBatcher", "ModelMissing",
    "QueueFull",
]  # fmt: skip
