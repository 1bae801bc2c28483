"""Check a decoded request against the model's signature before it may join a batch."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import InvalidInput
from gateway.types import Array, InferRequest, Signature

ShapeKey = tuple[tuple[int, ...], ...]


@dataclass(slots=True)
class CheckedRequest:
    """Inputs in model order, ready to be concatenated with others of the same ``shape_key``."""

    feeds: dict[str, Array]
    rows: int
    shape_key: ShapeKey
    output_names: tuple[str, ...]


def _names(specs: object) -> list[str]:
    return [spec.name for spec in specs]  # type: ignore[attr-defined]


def check_request(request: InferRequest, signature: Signature, max_batch_size: int) -> CheckedRequest:
    """Raise :class:`InvalidInput` naming the first input that does not fit the model."""
    given = {}
    for tensor in request.inputs:
        if tensor.name in given:
            raise InvalidInput(f"input '{tensor.name}' appears more than once")
        given[tensor.name] = tensor
    for name in given:
        if signature.input(name) is None:
            raise InvalidInput(f"unknown input '{name}'; model {request.model} expects {_names(signature.inputs)}")
    feeds: dict[str, Array] = {}
    rows = -1
    shape_key = []
    for spec in signature.inputs:
        found = given.get(spec.name)
        if found is None:
            expected = _names(signature.inputs)
            raise InvalidInput(f"missing input '{spec.name}'; model {request.model} expects {expected}")
        tensor = found
        if tensor.datatype != spec.datatype:
            raise InvalidInput(f"input '{spec.name}': datatype {tensor.datatype} but the model expects {spec.datatype}")
        shape = tensor.shape
        if len(shape) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            raise InvalidInput(
                f"input '{spec.name}': shape {list(shape)} does not match the model's {list(spec.shape)}"
            )
        if max_batch_size > 0:
            if not shape:
                raise InvalidInput(f"input '{spec.name}' has no batch dimension")
            if shape[0] < 1:
                raise InvalidInput(f"input '{spec.name}': batch dimension must be at least 1")
            if rows == -1:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidInput(f"input '{spec.name}': {shape[0]} rows but other inputs have {rows}")
            shape_key.append(shape[1:])
        else:
            shape_key.append(shape)
        feeds[spec.name] = tensor.data
    if max_batch_size > 0 and rows > max_batch_size:
        raise InvalidInput(f"request has {rows} rows; model {request.model} takes at most {max_batch_size}")
    if request.outputs is not None:
        for out in request.outputs:
            if signature.output(out.name) is None:
                raise InvalidInput(
                    f"unknown output '{out.name}'; model {request.model} has {_names(signature.outputs)}"
                )
        output_names = tuple(out.name for out in request.outputs)
    else:
        output_names = tuple(spec.name for spec in signature.outputs)
    return CheckedRequest(feeds, max(rows, 1), tuple(shape_key), output_names)
