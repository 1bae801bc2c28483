"""PyTriton peer: Triton's dynamic batcher in front of ONNX Runtime in a Python callable.

Run by ``benchmarks.peers`` under the peers' interpreter; serves ``mlp`` on the v2 HTTP
and gRPC ports given, with the same batch limit and queue delay as batchgate's config.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])

    @batch
    def infer(input: np.ndarray) -> dict[str, np.ndarray]:
        return {"output": session.run(None, {"input": input})[0]}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="mlp",
            infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(512,))],
            outputs=[Tensor(name="output", dtype=np.float32, shape=(512,))],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=2000)),
        )
        triton.serve()


if __name__ == "__main__":
    main()
