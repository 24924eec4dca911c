"""Inference: registry models on ONNX Runtime / torch / TensorRT behind one engine with micro-batching."""

from server.inference.batcher import MicroBatcher, QueueFull
from server.inference.engine import EnhanceOutput, ImageTooLarge, InferenceEngine, ModelMissing, role_paths

__all__ = [
    "EnhanceOutput", "ImageTooLarge", "InferenceEngine", "MicroBatcher", "ModelMissing", "QueueFull", "role_paths",
]  # fmt: skip
