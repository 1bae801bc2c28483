#!/usr/bin/env bash
# GPU check: raw ONNX Runtime (CUDA EP, IO binding) vs batchgate with a CUDA worker, on mlp and mlp_xl.
# Run on a machine with an NVIDIA GPU, from the repository root:
#     bash benchmarks/gpu_check.sh [--tensorrt] [--users 1,64,256]
# It uses $PYTHON if set (an environment with batchgate[gpu,demo] and tritonclient), else creates
# .venv-gpu with `pip install -e '.[gpu,demo,loadtest]'` (needs the package index once).
# Writes benchmarks/results/gpu.md naming the device. Never run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed); nothing to measure" >&2
    exit 2
fi
if [ -z "${PYTHON:-}" ]; then
    if [ ! -x .venv-gpu/bin/python ]; then
        python3 -m venv .venv-gpu
        .venv-gpu/bin/pip install --quiet --upgrade pip
        .venv-gpu/bin/pip install --quiet -e '.[gpu,demo,loadtest]'
    fi
    PYTHON=.venv-gpu/bin/python
fi
"$PYTHON" - <<'PY'
import onnxruntime as ort
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    raise SystemExit("gpu_check: this onnxruntime has no CUDAExecutionProvider (install the gpu extra)")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PYTHON" -m benchmarks.gpu "$@"
