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


def test_io_binding_path_gives_the_plain_run_results(tmp_path: object) -> None:
    """The GPU path (IO binding) exercised on the CPU device: same outputs as session.run."""
    from pathlib import Path

    import numpy as np

    from gateway.demo import mlp_model
    from workers.runtime import load_model

    path = Path(str(tmp_path)) / "mlp.onnx"
    path.write_bytes(mlp_model((8, 16, 4), seed=3))
    model = load_model("m", "1", path, threads=1, providers=["cpu"])
    feeds = {"input": np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)}
    plain = model.run(feeds)
    model.io_binding = True
    bound = model.run(feeds)
    np.testing.assert_allclose(bound[0], plain[0], rtol=1e-6)
    assert bound[0].shape == (5, 4)
    strided = {"input": np.asfortranarray(feeds["input"])}  # non-contiguous input is copied, not misread
    np.testing.assert_allclose(model.run(strided)[0], plain[0], rtol=1e-6)
