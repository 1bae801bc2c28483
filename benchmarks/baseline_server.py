"""The no-batching baseline: Starlette + uvicorn, one ONNX Runtime call per request.

This is what a team writes on day one; the benchmark measures batchgate against it
and against raw ONNX Runtime in the same run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.targets import PEER_THREADS
from workers.allocator import keep_freed_memory
from workers.dtypes import ORT_TO_V2, V2_TO_NUMPY


def build(repository: Path, threads: int) -> Starlette:
    sessions: dict[str, Any] = {}
    for folder in repository.iterdir():
        model_file = folder / "1" / "model.onnx"
        if model_file.is_file():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            sessions[folder.name] = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    async def infer(request: Request) -> Response:
        name = request.path_params["model"]
        session = sessions[name]
        doc = orjson.loads(await request.body())
        feeds = {
            t["name"]: np.asarray(t["data"], dtype=V2_TO_NUMPY[t["datatype"]]).reshape(t["shape"])
            for t in doc["inputs"]
        }
        outputs = session.run(None, feeds)
        body = {
            "model_name": name,
            "outputs": [
                {"name": o.name, "datatype": ORT_TO_V2[o.type], "shape": list(v.shape), "data": v.reshape(-1)}
                for o, v in zip(session.get_outputs(), outputs, strict=True)
            ],
        }
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=PEER_THREADS)
    args = parser.parse_args()
    keep_freed_memory()  # as batchgate's own processes do (workers/allocator.py)
    uvicorn.run(
        build(args.model_repository, args.threads),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
