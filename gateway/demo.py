"""``batchgate models demo DIR``: the demo model repository, built deterministically offline.

- ``digits_mlp`` (primary) and ``digits_logreg`` (its fallback): scikit-learn classifiers
  trained on the ``load_digits`` data scikit-learn ships, exported with skl2onnx as plain
  tensors (``label`` int64 [N], ``probabilities`` float32 [N,10]) from ``input`` float32 [N,64].
- ``mlp``: a compute-heavy float32 MLP [N,512] -> 2048 -> 2048 -> 512 from fixed seeds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger("batchgate.demo")

DIGITS_FEATURES = 64
SEED = 20261126


def _require_demo_extra() -> None:
    try:
        import onnx  # noqa: F401
        import skl2onnx  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"building the demo models needs the 'demo' extra ({exc.name} is missing): pip install 'batchgate[demo]'"
        ) from None


def digits_split() -> tuple[Any, Any, Any, Any]:
    """The fixed train/held-out split of scikit-learn's digits (float32 features 0..16)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    features = digits.data.astype(np.float32)
    split: tuple[Any, Any, Any, Any] = tuple(
        train_test_split(features, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    )
    return split


def _export_classifier(pipeline: Any) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    classifier = pipeline.steps[-1][1]
    onx = convert_sklearn(
        pipeline,
        initial_types=[("input", FloatTensorType([None, DIGITS_FEATURES]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=17,
    )
    data: bytes = onx.SerializeToString()
    return data


def _digits_model(kind: str) -> tuple[bytes, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, y_test = digits_split()
    if kind == "mlp":
        estimator: Any = MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=0)
    else:
        estimator = LogisticRegression(max_iter=2000)
    pipeline = make_pipeline(StandardScaler(), estimator)
    pipeline.fit(x_train, y_train)
    accuracy = float(pipeline.score(x_test, y_test))
    return _export_classifier(pipeline), accuracy


def mlp_model(widths: tuple[int, ...] = (512, 2048, 2048, 512), seed: int = SEED) -> bytes:
    """Dense ReLU MLP with He-scaled weights from a fixed seed; input ``input``, output ``output``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = []
    initializers = []
    current = "input"
    for layer, (fan_in, fan_out) in enumerate(pairwise(widths)):
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = np.zeros(fan_out, dtype=np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{layer}"), numpy_helper.from_array(bias, f"b{layer}")]
        last = layer == len(widths) - 2
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"mm{layer}"]))
        add_out = "output" if last else f"add{layer}"
        nodes.append(helper.make_node("Add", [f"mm{layer}", f"b{layer}"], [add_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [add_out], [f"relu{layer}"]))
            current = f"relu{layer}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", widths[-1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="batchgate")
    model.ir_version = 9
    data: bytes = model.SerializeToString()
    return data


def _write(root: Path, name: str, data: bytes, config: dict[str, Any]) -> None:
    folder = root / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    (root / name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def build_demo(root: Path, progress: Callable[[str], None] = print) -> None:
    """Write the three demo models under ``root`` (existing files are replaced)."""
    _require_demo_extra()
    root.mkdir(parents=True, exist_ok=True)
    from gateway.health import PROFILE_FILE, build_profile

    x_train = digits_split()[0]
    for name, kind in (("digits_mlp", "mlp"), ("digits_logreg", "logreg")):
        progress(f"training {name} on scikit-learn's digits ...")
        data, accuracy = _digits_model(kind)
        config: dict[str, Any] = {
            "batching": {"max_batch_size": 64, "max_queue_delay_us": 2000},
            "timeout_ms": 1000,
            "slo": {"p99_ms": 50},
            "metadata": {"task": "digits classification", "heldout_accuracy": round(accuracy, 4)},
        }
        if name == "digits_mlp":
            config["fallback"] = {"model": "digits_logreg", "on": ["error", "timeout", "overload", "circuit_open"]}
        _write(root, name, data, config)
        # The reference profile for drift monitoring: the training inputs' per-pixel distribution.
        (root / name / PROFILE_FILE).write_text(json.dumps(build_profile(x_train, "input")))
        progress(f"  {name} held-out accuracy {accuracy:.4f}")
    progress("building mlp (512 -> 2048 -> 2048 -> 512, fixed seed) ...")
    _write(
        root,
        "mlp",
        mlp_model(),
        {
            "batching": {"max_batch_size": 64, "max_queue_delay_us": 2000},
            "timeout_ms": 2000,
            "slo": {"p99_ms": 100},
            "metadata": {"task": "benchmark: compute-heavy dense network", "seed": SEED},
        },
    )
    progress(f"demo repository ready in {root}")
