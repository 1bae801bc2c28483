"""Ray Serve peer: ``@serve.batch`` in front of ONNX Runtime, answering v2 JSON infer requests.

Run by ``benchmarks.peers`` under the peers' interpreter; HTTP only (Ray Serve has no v2 gRPC).
"""

from __future__ import annotations

import argparse
import threading

import numpy as np
import onnxruntime as ort
import orjson
from ray import serve
from starlette.requests import Request
from starlette.responses import Response


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
class MLP:
    def __init__(self, model: str, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def run(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        out = self.session.run(None, {"input": np.concatenate(rows)})[0]
        return list(np.split(out, np.cumsum([len(r) for r in rows])[:-1]))

    async def __call__(self, request: Request) -> Response:
        tensor = orjson.loads(await request.body())["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        out = await self.run(rows)
        doc = {
            "model_name": "mlp",
            "outputs": [{"name": "output", "datatype": "FP32", "shape": list(out.shape), "data": out.reshape(-1)}],
        }
        return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(MLP.bind(args.model, args.threads), route_prefix="/v2/models/mlp/infer")
    threading.Event().wait()


if __name__ == "__main__":
    main()
