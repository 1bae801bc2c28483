"""batchgate workers: ONNX Runtime sessions behind the v2 gRPC inference service."""
