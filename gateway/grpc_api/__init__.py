"""The v2 gRPC front (inference.GRPCInferenceService, as tritonclient.grpc calls it)."""
