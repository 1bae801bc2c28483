"""Pure functions between the v2 wire formats and :mod:`gateway.types`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.errors import PayloadTooLarge

DEFAULT_MAX_ELEMENTS = 1 << 26
DEFAULT_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one request may declare, checked before any tensor is built."""

    max_elements: int = DEFAULT_MAX_ELEMENTS
    max_depth: int = DEFAULT_MAX_DEPTH


DEFAULT_LIMITS = DecodeLimits()


def count_elements(declared: int, shape: tuple[int, ...], name: str, limit: int) -> int:
    """``declared`` plus the elements of ``shape``; 413 once the request passes ``limit``."""
    total = declared + math.prod(shape)
    if total > limit:
        raise PayloadTooLarge(f"input '{name}' of shape {list(shape)} takes the request past {limit} elements")
    return total
