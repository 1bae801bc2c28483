"""Transport-free request and response shapes shared by the fronts, router and batcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from workers.runtime import TensorSpec

Array = npt.NDArray[Any]


@dataclass(slots=True)
class InputTensor:
    """One decoded input: its declared name, datatype and shape, and the data."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Array


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` None means the request-wide default."""

    name: str
    binary: bool | None = None


@dataclass(slots=True)
class InferRequest:
    """A v2 inference request after decoding, before validation against the model."""

    model: str
    version: str
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    binary_output: bool = False
    priority: int = 0
    timeout_us: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    client: str | None = None  # x-client-id, or the peer address: counts distinct active clients


@dataclass(slots=True)
class OutputTensor:
    """One computed output for one request (a view into the batch result)."""

    name: str
    datatype: str
    data: Array


@dataclass(slots=True)
class InferResponse:
    """What a model answered to one request."""

    model: str
    version: str
    outputs: list[OutputTensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs and outputs of a model version, as its workers report them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str = "onnxruntime_onnx"

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output(self, name: str) -> TensorSpec | None:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        return None
