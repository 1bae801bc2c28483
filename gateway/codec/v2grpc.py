"""v2 gRPC codec: ``ModelInferRequest`` / ``ModelInferResponse`` <-> :mod:`gateway.types`.

Inputs arrive as ``raw_input_contents`` (what tritonclient sends) or as typed
``contents``; outputs always go back as ``raw_output_contents``, the only form
tritonclient decodes.
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2

from gateway.codec import DEFAULT_LIMITS, DecodeLimits, count_elements
from gateway.errors import InvalidInput
from gateway.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from workers.dtypes import V2_TO_NUMPY
from workers.v2grpc import array_from_contents, array_from_raw, array_to_raw

RESERVED_PARAMETERS = ("priority", "timeout", "binary_data_output")


def parameter_value(param: Any) -> Any:
    """The Python value of an ``InferParameter`` (whichever field is set)."""
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def decode_request(request: Any, limits: DecodeLimits = DEFAULT_LIMITS) -> InferRequest:
    """Decode a ModelInferRequest; raises :class:`InvalidInput` (or 413 past ``limits``) naming what is wrong."""
    raw = request.raw_input_contents
    tensors = request.inputs  # each access builds a new wrapper (upb): read once
    if raw and len(raw) != len(tensors):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(tensors)} inputs")
    if not tensors:
        raise InvalidInput("request has no inputs")
    inputs = []
    elements = 0
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if tensor.datatype not in V2_TO_NUMPY:
            raise InvalidInput(f"input '{name}': unsupported datatype {tensor.datatype!r}")
        shape = tuple(tensor.shape)  # int64 fields: Python ints already
        if any(dim < 0 for dim in shape):
            raise InvalidInput(f"input '{name}': shape must not have negative dimensions")
        elements = count_elements(elements, shape, name, limits.max_elements)
        try:
            if raw:
                if tensor.HasField("contents"):  # which of the two to compute on would be a guess
                    raise InvalidInput(f"input '{name}': has both contents and raw_input_contents; send one")
                data = array_from_raw(tensor.datatype, shape, raw[index])
            else:
                data = array_from_contents(tensor.datatype, shape, tensor.contents)
        except ValueError as exc:
            raise InvalidInput(f"input '{name}': {exc}") from None
        inputs.append(InputTensor(name, tensor.datatype, shape, data))
    params = {key: parameter_value(value) for key, value in request.parameters.items()} if request.parameters else {}
    priority = params.get("priority", 0)
    timeout = params.get("timeout")
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise InvalidInput("parameter 'priority' must be a non-negative integer")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise InvalidInput("parameter 'timeout' must be a non-negative integer (microseconds)")
    wanted = request.outputs
    outputs = [RequestedOutput(out.name) for out in wanted] if wanted else None
    return InferRequest(
        model=request.model_name,
        version=request.model_version,
        inputs=inputs,
        outputs=outputs,
        id=request.id or None,
        priority=priority,
        timeout_us=timeout,
        parameters={k: v for k, v in params.items() if k not in RESERVED_PARAMETERS},
    )


def encode_response(response: InferResponse) -> Any:
    """A ModelInferResponse with raw output contents and string response parameters."""
    message = service_pb2.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id or ""
    )
    for key, value in response.parameters.items():
        message.parameters[key].string_param = str(value)
    for out in response.outputs:
        message.outputs.add(name=out.name, datatype=out.datatype, shape=out.data.shape)
        message.raw_output_contents.append(array_to_raw(out.data))
    return message
