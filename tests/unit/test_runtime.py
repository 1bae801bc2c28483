from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize("concurrency", [2, 1])
def test_concurrent_runs_share_one_session_up_to_the_limit(tmp_path: Path, concurrency: int) -> None:
    """Two runs are inside one session at once when allowed; with the default the second waits its turn."""
    from gateway.demo import mlp_model
    from tests.helpers import GatedSession
    from workers.runtime import load_model

    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp_model((8, 16, 4), seed=3))
    feeds = {"input": np.ones((3, 8), dtype=np.float32)}
    model = load_model("m", "1", path, threads=1, providers=["cpu"], concurrency=concurrency)
    gated = model.session = GatedSession(model.session)
    entered, release = gated.entered, gated.release
    results: list[list[np.ndarray]] = []
    runners = [threading.Thread(target=lambda: results.append(model.run(feeds))) for _ in range(2)]
    for runner in runners:
        runner.start()
    for _ in range(concurrency):
        assert entered.acquire(timeout=10), f"{concurrency} runs should be inside the session at once"
    if concurrency == 1:
        assert not entered.acquire(timeout=0.3), "a second run entered while the only slot was held"
    release.set()
    for runner in runners:
        runner.join(10)
    assert len(results) == 2
    assert all(result[0].shape == (3, 4) for result in results)


def test_bf16_tensors_run_through_ort_values_and_come_back_as_bfloat16(tmp_path: Path) -> None:
    import ml_dtypes

    from tests.helpers import identity_model
    from workers.runtime import load_model

    path = tmp_path / "bf16.onnx"
    path.write_bytes(identity_model(["BF16", "FP32"]))
    model = load_model("bf16", "1", path, threads=1, providers=["cpu"])
    assert [spec.datatype for spec in model.outputs] == ["BF16", "FP32"]
    values = np.array([[1.0, 1 / 3, -2.5e30]], dtype=ml_dtypes.bfloat16)
    bf16, fp32 = model.run({"in_BF16": values, "in_FP32": np.ones((1, 3), np.float32)})
    assert bf16.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(bf16, values)
    np.testing.assert_array_equal(fp32, np.ones((1, 3), np.float32))


def test_a_model_with_bf16_and_string_inputs_is_refused_at_load_with_the_reason(tmp_path: Path) -> None:
    from tests.helpers import identity_model
    from workers.runtime import load_model

    path = tmp_path / "mixed.onnx"
    path.write_bytes(identity_model(["BF16", "BYTES"]))
    with pytest.raises(ValueError, match="both BF16 tensors and string inputs"):
        load_model("mixed", "1", path, threads=1, providers=["cpu"])
