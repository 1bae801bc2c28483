"""v2 HTTP/REST codec: JSON bodies and the binary tensor data extension.

A binary request is ``Inference-Header-Content-Length`` bytes of JSON followed by the
raw tensors in ``inputs`` order; each such input carries ``parameters.binary_data_size``
and no ``data``. Inputs become numpy views over the received body, not copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from gateway.codec import DEFAULT_LIMITS, DecodeLimits, count_elements
from gateway.errors import InvalidInput
from gateway.types import Array, InferRequest, InferResponse, InputTensor, RequestedOutput
from workers.dtypes import BF16, V2_TO_NUMPY, is_float
from workers.v2grpc import array_from_raw, array_to_raw, element_count

RESERVED_PARAMETERS = ("binary_data_output", "priority", "timeout")
RAW_VIEW_BYTES = 64 * 1024
"""Binary outputs this large go into the response as views, not copies (see :func:`_raw_view`)."""


def json_object(body: bytes | memoryview) -> dict[str, Any]:
    """A request body that must hold one JSON object; anything else is a 400 saying why."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    return doc


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(dim) is int and dim >= 0 for dim in value):
        raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers")
    return tuple(value)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _nesting(data: Any, name: str, max_depth: int) -> None:
    """Refuse data nested deeper than ``max_depth`` (followed down the first elements: cheap)."""
    depth = 0
    while isinstance(data, list):
        depth += 1
        if depth > max_depth:
            raise InvalidInput(f"input '{name}': data is nested more than {max_depth} levels deep")
        if not data:
            return
        data = data[0]


def _whole_numbers(data: Any, target: Any) -> Array:
    """Integers from JSON data holding some floats: ``3.0`` is 3, but ``1.5`` is refused, not cut to 1.

    Read from the values themselves, not numpy's float64 view of them, which also appears
    when large UINT64 values sit beside small ones and would round them.
    """
    flat = _flatten(data)
    if any(isinstance(item, float) and not item.is_integer() for item in flat):
        raise TypeError("integer data must be whole numbers")
    return np.asarray([int(item) for item in flat], dtype=target)


def json_to_array(name: str, datatype: str, shape: tuple[int, ...], data: Any, max_depth: int = 32) -> Array:
    """Array from JSON ``data`` (flat or nested) declared as ``datatype`` of ``shape``."""
    _nesting(data, name, max_depth)
    count = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(item, str) for item in flat):
            raise InvalidInput(f"input '{name}': BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [item.encode("utf-8") for item in flat]
    else:
        target = V2_TO_NUMPY[datatype]
        try:
            with np.errstate(over="ignore"):  # overflow is refused below, with the input named
                if datatype == "BOOL":
                    array = np.asarray(data, dtype=target)
                else:
                    # Asked for the target type at once, numpy would read the string "1.5" as 1.5
                    # and null as NaN; read as numpy sees the JSON, either shows in the dtype.
                    seen = np.asarray(data)
                    if seen.dtype.kind not in "biuf":
                        raise TypeError("data must be JSON numbers, not strings or nulls")
                    if seen.dtype.kind == "b":
                        raise TypeError("data must be JSON numbers, not true or false")
                    # Floats convert from what was read (out of range turns infinite, refused
                    # below); integers from the data, where numpy refuses what does not fit.
                    if is_float(target):
                        array = seen.astype(target)
                    elif seen.dtype.kind == "f":
                        array = _whole_numbers(data, target)
                    else:
                        array = np.asarray(data, dtype=target)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"input '{name}': data is not a valid {datatype} tensor: {exc}") from None
        # numpy turns out-of-range floats into infinity without complaint; JSON cannot carry
        # infinity, so it means data outside the type's range.
        if is_float(array.dtype) and not np.isfinite(array).all():
            raise InvalidInput(f"input '{name}': {datatype} data must be numbers within the type's range")
        if datatype == "BOOL" and not all(isinstance(item, bool) for item in _flatten(data)):
            raise InvalidInput(f"input '{name}': BOOL data must be true or false")
    if array.size != count:
        raise InvalidInput(f"input '{name}': data has {array.size} elements but shape {list(shape)} needs {count}")
    return array.reshape(shape)


def decode_request(
    model: str,
    version: str,
    body: bytes | memoryview,
    header_length: int | None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> InferRequest:
    """Decode a v2 infer body; raises :class:`InvalidInput` (or 413 past ``limits``) naming what is wrong."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {header_length} is outside the {len(body)}-byte body")
        header = body[:header_length]
        binary = memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    doc = json_object(header)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request must have a non-empty 'inputs' list")

    inputs: list[InputTensor] = []
    offset = 0
    elements = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidInput("each input must be an object with a string 'name'")
        name = raw["name"]
        datatype = raw.get("datatype")
        if datatype not in V2_TO_NUMPY:
            raise InvalidInput(f"input '{name}': unsupported datatype {datatype!r}")
        shape = _shape(raw.get("shape"), name)
        elements = count_elements(elements, shape, name, limits.max_elements)
        params = _mapping(raw.get("parameters"), f"input '{name}' parameters")
        size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInput(f"input '{name}': binary_data_size {size} runs past the end of the binary data")
            try:
                data = array_from_raw(datatype, shape, binary[offset : offset + size])
            except ValueError as exc:
                raise InvalidInput(f"input '{name}': {exc}") from None
            offset += size
        elif "data" in raw:
            data = json_to_array(name, datatype, shape, raw["data"], limits.max_depth)
        else:
            raise InvalidInput(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
        inputs.append(InputTensor(name, datatype, shape, data))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the last input")

    params = _mapping(doc.get("parameters"), "request parameters")
    outputs = None
    if "outputs" in doc:
        if not isinstance(doc["outputs"], list):
            raise InvalidInput("'outputs' must be a list")
        outputs = []
        for raw in doc["outputs"]:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise InvalidInput("each requested output must be an object with a string 'name'")
            out_params = _mapping(raw.get("parameters"), f"output '{raw['name']}' parameters")
            if "classification" in out_params:
                raise InvalidInput("the classification extension is not supported")
            binary_flag = out_params.get("binary_data")
            outputs.append(RequestedOutput(raw["name"], None if binary_flag is None else bool(binary_flag)))
    priority = params.get("priority", 0)
    timeout = params.get("timeout")
    if type(priority) is not int or priority < 0:
        raise InvalidInput("parameter 'priority' must be a non-negative integer")
    if timeout is not None and (type(timeout) is not int or timeout < 0):
        raise InvalidInput("parameter 'timeout' must be a non-negative integer (microseconds)")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        outputs=outputs,
        id=request_id,
        binary_output=bool(params.get("binary_data_output", False)),
        priority=priority,
        timeout_us=timeout,
        parameters={k: v for k, v in params.items() if k not in RESERVED_PARAMETERS},
    )


def _json_data(array: Array) -> Any:
    flat = array.reshape(-1)
    if array.dtype == np.object_:
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in flat]
    if array.dtype == BF16:  # orjson knows numpy's own types only; float32 holds any bfloat16 exactly
        flat = flat.astype(np.float32)
    return np.ascontiguousarray(flat)


def _raw_view(array: Array) -> bytes | memoryview:
    """An output's raw bytes for the response, as a view when it is large: the response's one
    join copies them, where ``tobytes`` first made another copy (8 MB: 7% of the loop's time
    on such requests)."""
    if array.nbytes < RAW_VIEW_BYTES or array.dtype == np.object_ or array.dtype.kind in "SU":
        return array_to_raw(array)
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def _binary_outputs(response: InferResponse, request: InferRequest) -> list[bool]:
    """For each output of ``response``, whether it goes back binary (else as JSON data)."""
    if request.outputs is None:
        return [request.binary_output] * len(response.outputs)
    wanted = {out.name: out.binary for out in request.outputs}
    flags = [wanted.get(out.name) for out in response.outputs]
    return [request.binary_output if flag is None else flag for flag in flags]


def json_values(response: InferResponse, request: InferRequest) -> int:
    """How many output values :func:`encode_response` would write as JSON."""
    binary = _binary_outputs(response, request)
    return sum(out.data.size for out, flag in zip(response.outputs, binary, strict=True) if not flag)


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """Body bytes and, when any output is binary, the JSON header length."""
    outputs_json = []
    buffers: list[bytes | memoryview] = []
    for out, binary in zip(response.outputs, _binary_outputs(response, request), strict=True):
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.data.shape),
        }
        if binary:
            raw = _raw_view(out.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = _json_data(out.data)
        outputs_json.append(entry)
    doc: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs_json
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, None
    return b"".join([header, *buffers]), len(header)


def error_body(message: str) -> bytes:
    """The v2 error body."""
    return orjson.dumps({"error": message})
