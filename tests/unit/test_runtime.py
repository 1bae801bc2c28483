from __future__ import annotations

import pytest

from workers.runtime import CPU, CUDA, TENSORRT, RuntimeConflict, check_single_runtime, resolve_providers


def test_both_onnxruntime_wheels_are_refused() -> None:
    with pytest.raises(RuntimeConflict, match="both onnxruntime and onnxruntime-gpu"):
        check_single_runtime(["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(RuntimeConflict, match="no ONNX Runtime"):
        check_single_runtime([])
    check_single_runtime(["onnxruntime-gpu"])


def test_this_environment_has_exactly_one_runtime() -> None:
    check_single_runtime()


def test_provider_resolution() -> None:
    assert resolve_providers(["auto"], [CPU]) == [CPU]
    assert resolve_providers(["auto"], [TENSORRT, CUDA, CPU]) == [CUDA, CPU]
    assert resolve_providers(["tensorrt", "cuda"], [TENSORRT, CUDA, CPU]) == [TENSORRT, CUDA, CPU]
    assert resolve_providers(["cuda"], [CPU]) == [CPU]
