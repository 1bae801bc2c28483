"""The v2 gRPC inference service of one worker process, over its loaded ONNX Runtime models."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from workers.runtime import LoadedModel
from workers.v2grpc import array_from_contents, array_from_raw, array_to_raw, datatype_of

log = logging.getLogger("batchgate.worker")

COMPUTE_NS = "batchgate_compute_ns"
Loader = Callable[[str, str, Path], LoadedModel]


class Faults:
    """Injected latency and failures, for tests and chaos runs (off unless asked for)."""

    def __init__(
        self, delay_s: float = 0.0, error_ratio: float = 0.0, seed: int = 0, models: frozenset[str] = frozenset()
    ) -> None:
        self.delay_s = delay_s
        self.error_ratio = error_ratio
        self.models = models
        self._random = random.Random(seed)
        self.active = bool(delay_s or error_ratio)

    def apply(self, model: str) -> None:
        if self.models and model not in self.models:
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error_ratio and self._random.random() < self.error_ratio:
            raise InferFailure(grpc.StatusCode.INTERNAL, "injected fault: batch failed")


class InferFailure(Exception):
    """A request the worker cannot answer, with the gRPC status code that says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def text_feed(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """ONNX string tensors hold text: decode BYTES elements as UTF-8."""
    out = np.empty(array.shape, dtype=object)
    flat_in = array.reshape(-1)
    flat_out = out.reshape(-1)
    for index, item in enumerate(flat_in):
        flat_out[index] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    return out


class WorkerServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Serves ModelInfer and the health and metadata RPCs for the models of one worker."""

    def __init__(
        self,
        models: dict[tuple[str, str], LoadedModel],
        server_name: str = "batchgate-worker",
        faults: Faults | None = None,
        loader: Loader | None = None,
    ) -> None:
        self._models = dict(models)
        self.faults = faults or Faults()
        self._loader = loader
        self._lock = threading.Lock()
        self._latest: dict[str, LoadedModel] = {}
        self._index()
        self._server_name = server_name
        self.ready = True

    def _index(self) -> None:
        latest: dict[str, LoadedModel] = {}
        for (name, _version), model in sorted(self._models.items(), key=lambda item: int(item[0][1])):
            latest[name] = model
        self._latest = latest

    def find(self, name: str, version: str) -> LoadedModel:
        model = self._models.get((name, version)) if version else self._latest.get(name)
        if model is None:
            wanted = version or "(latest)"
            raise InferFailure(grpc.StatusCode.NOT_FOUND, f"model {name!r} version {wanted} is not loaded")
        return model

    def infer(self, request: Any) -> Any:
        """Run one ModelInferRequest; transport-free, raises :class:`InferFailure`."""
        model = self.find(request.model_name, request.model_version)
        raw = request.raw_input_contents
        feeds = {}
        try:
            for index, tensor in enumerate(request.inputs):
                if raw:
                    array = array_from_raw(tensor.datatype, tensor.shape, raw[index])
                else:
                    array = array_from_contents(tensor.datatype, tensor.shape, tensor.contents)
                feeds[tensor.name] = text_feed(array) if tensor.datatype == "BYTES" else array
        except (ValueError, IndexError) as exc:
            raise InferFailure(grpc.StatusCode.INVALID_ARGUMENT, f"input decoding failed: {exc}") from None
        names = [output.name for output in request.outputs]
        results, busy_ns = self.compute(model, feeds, names)
        response = service_pb2.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        # The gateway fits its batch-closing rule to the time the worker is really busy.
        response.parameters[COMPUTE_NS].int64_param = busy_ns
        for name, array in zip(names or [s.name for s in model.outputs], results, strict=True):
            response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            response.raw_output_contents.append(array_to_raw(array))
        return response

    def compute(
        self, model: LoadedModel, feeds: dict[str, np.ndarray[Any, Any]], names: list[str]
    ) -> tuple[list[np.ndarray[Any, Any]], int]:
        """Run decoded feeds with the injected faults; the outputs and the ns the run kept this busy.
        Raises :class:`InferFailure` (INTERNAL) when the model fails."""
        started = time.perf_counter_ns()
        if self.faults.active:
            self.faults.apply(model.name)
        try:
            results = model.run(feeds, names)
        except Exception as exc:  # ORT raises its own exception types for bad feeds and kernel errors
            log.warning("model %s:%s failed: %s", model.name, model.version, exc)
            raise InferFailure(grpc.StatusCode.INTERNAL, f"model {model.name} failed: {exc}") from None
        return results, time.perf_counter_ns() - started

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.ready)

    def load(self, name: str, version: str, path: Path) -> None:
        """Load (or reload) one model version; the old session serves until the new one is warm."""
        if self._loader is None:
            raise InferFailure(grpc.StatusCode.UNIMPLEMENTED, "this worker cannot load models at run time")
        try:
            model = self._loader(name, version, path)
        except Exception as exc:  # ORT raises several types; the caller gets the reason
            message = f"cannot load {name}:{version} from {path}: {exc}"
            raise InferFailure(grpc.StatusCode.INVALID_ARGUMENT, message) from None
        with self._lock:
            self._models[(name, version)] = model
            self._index()
        log.info("loaded %s:%s at run time", name, version)

    def unload(self, name: str, version: str) -> int:
        """Drop one version (or every version when ``version`` is empty); returns how many."""
        with self._lock:
            keys = [key for key in self._models if key[0] == name and (not version or key[1] == version)]
            for key in keys:
                del self._models[key]
            self._index()
        return len(keys)

    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        entry = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(
            models=[entry(name=n, version=v, state="READY") for (n, v) in sorted(self._models)]
        )

    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> Any:
        params = request.parameters
        version = params["version"].string_param if "version" in params else ""
        path = params["path"].string_param if "path" in params else ""
        try:
            if not version or not path:
                if self._latest.get(request.model_name) is None:
                    raise InferFailure(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "batchgate workers load by file: give parameters 'version' and 'path'",
                    )
            else:
                self.load(request.model_name, version, Path(path))
        except InferFailure as failure:
            context.abort(failure.code, failure.message)
        return service_pb2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request: Any, context: grpc.ServicerContext) -> Any:
        params = request.parameters
        version = params["version"].string_param if "version" in params else ""
        self.unload(request.model_name, version)
        return service_pb2.RepositoryModelUnloadResponse()

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        key_found = (request.name, request.version) in self._models if request.version else request.name in self._latest
        return service_pb2.ModelReadyResponse(ready=self.ready and key_found)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return service_pb2.ServerMetadataResponse(name=self._server_name, version="0.1.0", extensions=[])

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            model = self.find(request.name, request.version)
        except InferFailure as failure:
            context.abort(failure.code, failure.message)
        versions = sorted((v for (n, v) in self._models if n == model.name), key=int)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=model.name,
            versions=versions,
            platform="onnxruntime_onnx",
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.outputs],
        )

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.infer(request)
        except InferFailure as failure:
            context.abort(failure.code, failure.message)
