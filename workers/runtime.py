"""ONNX Runtime sessions: which runtime is installed, which providers to use, load and warm up."""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.dtypes import BF16, ORT_TO_V2, V2_TO_NUMPY

log = logging.getLogger("batchgate.worker")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


class RuntimeConflict(RuntimeError):
    """Both onnxruntime and onnxruntime-gpu are installed: their files overwrite each other."""


def installed_runtimes() -> list[str]:
    """Names of the ONNX Runtime distributions present in this environment."""
    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def check_single_runtime(found: Sequence[str] | None = None) -> None:
    """Refuse to run with both ONNX Runtime wheels installed (the CPU one silently wins)."""
    found = installed_runtimes() if found is None else list(found)
    if len(found) > 1:
        raise RuntimeConflict(
            "both onnxruntime and onnxruntime-gpu are installed; their files overwrite each "
            "other. Install exactly one: pip uninstall -y onnxruntime onnxruntime-gpu && "
            "pip install 'batchgate[cpu]' (or 'batchgate[gpu]')"
        )
    if not found:
        raise RuntimeConflict("no ONNX Runtime installed: pip install 'batchgate[cpu]' or 'batchgate[gpu]'")


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Expand ``auto`` and drop providers this build lacks; CPU is always the last resort.

    ``auto`` means CUDA when present, then CPU. TensorRT is opt-in because building its
    engines takes minutes on first load.
    """
    wanted: list[str] = []
    for name in requested:
        if name == "auto":
            wanted.extend([CUDA, CPU])
        elif name in ("cuda", "tensorrt", "cpu"):
            wanted.append({"cuda": CUDA, "tensorrt": TENSORRT, "cpu": CPU}[name])
        else:
            wanted.append(name)
    chosen: list[str] = []
    for name in wanted:
        if name in available and name not in chosen:
            chosen.append(name)
        elif name not in available:
            log.debug("execution provider %s is not available in this build; skipped", name)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


@dataclass(frozen=True)
class TensorSpec:
    """Name, v2 datatype and shape (-1 for a dynamic dimension) of one model input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def _spec(node: Any) -> TensorSpec:
    datatype = ORT_TO_V2.get(node.type)
    if datatype is None:
        raise ValueError(f"tensor {node.name!r} has type {node.type}, which batchgate cannot serve")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return TensorSpec(node.name, datatype, shape)


ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16


def _host_array(value: Any) -> npt.NDArray[Any]:
    """numpy array of an OrtValue in host memory; ``OrtValue.numpy()`` has no bfloat16."""
    if value.data_type() != "tensor(bfloat16)":
        array: npt.NDArray[Any] = value.numpy()
        return array
    shape = value.shape()
    raw = ctypes.string_at(value.data_ptr(), BF16.itemsize * math.prod(shape))
    return np.frombuffer(raw, dtype=BF16).reshape(shape)


class LoadedModel:
    """One ONNX Runtime session for one model version, with its signature."""

    def __init__(self, name: str, version: str, path: Path, session: Any, concurrency: int = 1) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.session = session
        self.inputs = [_spec(node) for node in session.get_inputs()]
        self.outputs = [_spec(node) for node in session.get_outputs()]
        self.providers: list[str] = list(session.get_providers())
        # session.get_device() says GPU for the GPU wheel even without a GPU; the providers
        # the session really got are the truth.
        self.on_gpu = bool({CUDA, TENSORRT} & set(self.providers))
        # On a GPU, IO binding lets ONNX Runtime place outputs on the device and copy them back
        # once, instead of the allocations and synchronisations of a plain run per call. It
        # works on CPU too (tests exercise it there); BYTES tensors always take the plain path.
        self.io_binding = self.on_gpu
        # numpy arrays cannot carry bfloat16 into or out of ONNX Runtime's plain run, and the
        # way round it (IO binding) cannot bind strings.
        self._bfloat16 = any(spec.datatype == "BF16" for spec in self.inputs + self.outputs)
        if self._bfloat16 and any(spec.datatype == "BYTES" for spec in self.inputs):
            raise ValueError(
                f"{name}:{version} has both BF16 tensors and string inputs, which ONNX Runtime's Python API "
                "cannot run together; cast the BF16 tensors to FP32 or FP16 in the model"
            )
        self._device = "cuda" if self.on_gpu else "cpu"
        self._input_names = {spec.name for spec in self.inputs}
        self._output_names = [spec.name for spec in self.outputs]
        # ONNX Runtime's Run is thread-safe: concurrent runs share this session's one copy of
        # the weights (and so the CPU cache), where a second process would bring its own.
        self.concurrency = max(concurrency, 1)
        # A lone slot is a plain lock: a semaphore's acquire and release are Python code
        # (a Condition each), about a dozen calls around every run on the hot path.
        self._runs: threading.Lock | threading.BoundedSemaphore = (
            threading.Lock() if self.concurrency == 1 else threading.BoundedSemaphore(self.concurrency)
        )

    def run(
        self, feeds: dict[str, npt.NDArray[Any]], output_names: Sequence[str] | None = None
    ) -> list[npt.NDArray[Any]]:
        """Run the session; at most ``concurrency`` runs at a time, so threads do not oversubscribe cores."""
        names = list(output_names) if output_names else self._output_names
        with self._runs:
            if self._bfloat16:
                return self._run_bfloat16(feeds, names)
            if self.io_binding and not any(array.dtype == object for array in feeds.values()):
                return self._run_bound(feeds, names)
            result: list[npt.NDArray[Any]] = self.session.run(names, feeds)
        return result

    def _run_bound(self, feeds: dict[str, npt.NDArray[Any]], names: list[str]) -> list[npt.NDArray[Any]]:
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, self._device)
        self.session.run_with_iobinding(binding)
        outputs: list[npt.NDArray[Any]] = binding.copy_outputs_to_cpu()
        return outputs

    def _run_bfloat16(self, feeds: dict[str, npt.NDArray[Any]], names: list[str]) -> list[npt.NDArray[Any]]:
        """Bind BF16 inputs as ONNX Runtime values over their 16-bit patterns, and read every
        output back from host memory (bound to the CPU, so this holds on a GPU too)."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in feeds.items():
            if array.dtype == BF16:
                bits = np.ascontiguousarray(array).view(np.uint16)
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, ONNX_BFLOAT16))
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return [_host_array(value) for value in binding.get_outputs()]

    def warm_up(self, rows: Sequence[int] = (1, 8)) -> None:
        """Run zeros through the model so the first real request does not pay for allocation."""
        for count in rows:
            feeds = {}
            for spec in self.inputs:
                shape = [max(dim, 1) for dim in spec.shape]
                if shape and spec.shape[0] == -1:
                    shape[0] = count
                if spec.datatype == "BYTES":
                    feeds[spec.name] = np.full(shape, "", dtype=object)
                else:
                    feeds[spec.name] = np.zeros(shape, dtype=V2_TO_NUMPY[spec.datatype])
            try:
                self.run(feeds)
            except Exception as exc:  # a model may reject zeros; it still serves real inputs
                log.warning("warm-up of %s:%s with %d rows failed: %s", self.name, self.version, count, exc)
                return


def load_model(
    name: str,
    version: str,
    path: Path,
    threads: int,
    providers: Sequence[str],
    spin: bool = False,
    concurrency: int = 1,
) -> LoadedModel:
    """Create and warm up the session for one model file; ``concurrency`` runs may share it at once."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads keep a core hot between runs; the gateway on the same machine needs it more.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    chosen = resolve_providers(providers, ort.get_available_providers())
    session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    model = LoadedModel(name, version, path, session, concurrency)
    model.warm_up()
    log.info(
        "loaded %s:%s from %s on %s (%d runs at once, %d threads each)",
        name,
        version,
        path,
        model.providers[0],
        model.concurrency,
        threads,
    )
    return model
