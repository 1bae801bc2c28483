#!/usr/bin/env bash
# Runs benchmarks/gpu_check.sh on a GPU machine that cannot reach a package index, from the
# parts benchmarks/gpu_kit.sh made (.gpu-kit/1 .. .gpu-kit/N, copied into this checkout).
#
#     bash benchmarks/gpu_device.sh [--preflight] [gpu_check.sh options]
#     bash benchmarks/gpu_device.sh --module benchmarks.hold [its options]
#
# Installs the kit's wheels into a clean environment of its own (a venv without the machine's
# site-packages, so a CPU onnxruntime there cannot shadow onnxruntime-gpu), finds CUDA 13 and
# cuDNN 9 libraries wherever the machine keeps them, says which ONNX Runtime's CUDA provider still
# lacks, and then runs the GPU check, or with --module that Python module in the same
# environment (any benchmark: the kit's onnxruntime-gpu runs CPU pools too). --preflight stops
# after the checks. Results go to $OUT when it is set (the device tool's output folder), else
# benchmarks/results, unless the options give their own --out.
set -euo pipefail
cd "$(dirname "$0")/.."
preflight=0
module=""
if [ "${1:-}" = "--preflight" ]; then
    preflight=1
    shift
elif [ "${1:-}" = "--module" ]; then
    module=${2:?--module needs a module name}
    shift 2
fi
work=${BATCHGATE_KIT_DIR:-/tmp/batchgate-kit}
python=${KIT_PYTHON:-python3}
parts=$(ls .gpu-kit/*/part-* 2>/dev/null | sort -t- -k3 || true)
if [ -z "$parts" ]; then
    echo "gpu_device: no .gpu-kit/*/part-* here; make them with benchmarks/gpu_kit.sh and copy them over" >&2
    exit 2
fi
rm -rf "$work"
mkdir -p "$work/site"
cat $parts > "$work/kit.tar"
(cd "$work" && sha256sum -c --quiet "$OLDPWD/.gpu-kit/1/kit.tar.sha256") || {
    echo "gpu_device: the parts do not add up to the kit (missing or damaged part?): $(echo $parts)" >&2
    exit 2
}
tar -xf "$work/kit.tar" -C "$work"
echo "gpu_device: installing $(ls "$work/wheels" | wc -l) wheels with $("$python" --version)"
"$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$work/site" "$work"/wheels/*.whl
"$python" -m venv --without-pip "$work/env"
py="$work/env/bin/python"
export PYTHONPATH="$work/site"

# CUDA 13 and cuDNN 9, from a toolkit, the system or any Python environment's nvidia-* packages;
# a CPU kit (KIT=cpu) has no CUDA provider to look for them for.
provider="$work/site/onnxruntime/capi/libonnxruntime_providers_cuda.so"
if [ -f "$provider" ]; then
    needed="libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcufft.so.12 libcurand.so.10 libcudnn.so.9"
    dirs=""
    for lib in $needed; do
        found=$(find /usr/local /usr/lib /usr/lib64 /opt "$HOME" -name "$lib" 2>/dev/null | head -1 || true)
        if [ -n "$found" ]; then
            dirs="$dirs:$(dirname "$found")"
        else
            echo "gpu_device: $lib not found on this machine"
        fi
    done
    export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu_device: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    missing=$(ldd "$provider" | grep "not found" || true)
    if [ -n "$missing" ]; then
        echo "gpu_device: ONNX Runtime's CUDA provider still lacks:" >&2
        echo "$missing" >&2
    fi
fi
"$py" - <<'PY'
import onnx  # noqa: F401  (the check builds its models with it)
import onnxruntime as ort

import benchmarks.gpu  # noqa: F401  (the harness and the gateway it starts import cleanly)
import gateway.app  # noqa: F401
from workers.runtime import check_single_runtime, installed_runtimes

check_single_runtime()  # what a worker checks first: exactly one ONNX Runtime in sight
print("gpu_device:", installed_runtimes(), ort.__version__, "providers", ort.get_available_providers())
PY
if [ "$preflight" = 1 ]; then
    echo "gpu_device: preflight done"
    exit 0
fi
# With an --out of their own, the options are passed on as given (and recorded so).
out=()
case " $* " in
    *" --out "* | *" --out="*) ;;
    *) out=(--out "${OUT:-benchmarks/results}") ;;
esac
if [ -n "$module" ]; then
    PYTHONUNBUFFERED=1 exec "$py" -m "$module" "${out[@]}" "$@"
fi
PYTHON="$py" PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh "${out[@]}" "$@"
