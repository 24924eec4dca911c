"""Inference: registry models on ONNX Runtime / torch / TensorRT behind one engine with micro-batching."""

from server.inference.batcher import MicroBatcher, QueueFull
from server.inference.engine import ROLES, EnhanceOutput, ImageTooLarge, InferenceEngine, ModelMissing

__all__ = ["ROLES", "EnhanceOutput", "ImageTooLarge", "InferenceEngine", "MicroBatcher", "ModelMissing", "QueueFull"]
