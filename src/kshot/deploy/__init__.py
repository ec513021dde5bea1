"""Deployable exports of a fitted classifier: one graph uint8 images -> logits (ONNX or TorchScript), and the
onnxruntime predictor that runs it (`kshot export --format onnx|torchscript`, `kshot predict --onnx`)."""

from kshot.deploy.graph import ImageClassifier, build_graph

__all__ = ["ImageClassifier", "build_graph"]
