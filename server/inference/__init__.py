"""Inference: registry models on ONNX Runtime / torch / TensorRT behind one engine with micro-batching."""

from server.inference.batcher import MicroBatcher, QueueFull
from server.inference.engine import ENHANCER, TRIAGE, EnhanceOutput, InferenceEngine, ModelMissing

__all__ = ["ENHANCER", "TRIAGE", "EnhanceOutput", "InferenceEngine", "MicroBatcher", "ModelMissing", "QueueFull"]
