#!/usr/bin/env bash
# Packs what benchmarks/gpu_check.sh needs onto a GPU machine that cannot reach a package index.
#
# Run here (where pip can download), from the repository root:
#     bash benchmarks/gpu_kit.sh [PART_MIB]
# It downloads, for CPython 3.12 on manylinux x86-64, onnxruntime-gpu at the version the `gpu`
# extra pins, onnx (the check builds its models with it) and every dependency of batchgate, then
# splits them into .gpu-kit/1, .gpu-kit/2, ... of at most PART_MIB MiB each (default 50), for
# transfers capped at 64 MiB with the checkout (about 12 MiB) included. Copy those folders to the
# GPU machine's checkout one by one, then run there: bash benchmarks/gpu_device.sh
#
#     KIT=cpu bash benchmarks/gpu_kit.sh [PART_MIB]
# packs the CPU wheel, the whole `demo` extra and matplotlib instead, for `python -m benchmarks`
# (it builds the demo models and draws plots) on that machine's CPUs:
#     taskset -c 2,3 bash benchmarks/gpu_device.sh --module benchmarks [its options]
# Either kit leaves out what only tritonclient's HTTP client needs (gevent, aiohttp and
# theirs): nothing the servers or the benchmarks import.
# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9; the GPU machine must have those libraries
# (gpu_device.sh looks for them and says which are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
part_mib=${1:-50}
kit=.gpu-kit
python=${PYTHON:-python3}
rm -rf "$kit"
mkdir -p "$kit/wheels"
KIT=${KIT:-gpu} "$python" - > "$kit/requirements.txt" <<'PY'
import os
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
if os.environ["KIT"] == "cpu":
    wanted = extras["cpu"] + extras["demo"] + [r for r in extras["bench"] if r.startswith("matplotlib")]
else:
    wanted = extras["gpu"] + [r for r in extras["demo"] if r.startswith("onnx")]
for requirement in project["dependencies"] + wanted:
    print(requirement)
PY
echo "gpu_kit: downloading $(wc -l < "$kit/requirements.txt") requirements and their dependencies for CPython 3.12 ..."
"$python" -m pip download --quiet --only-binary=:all: --implementation cp --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$kit/wheels" -r "$kit/requirements.txt"
rm -f "$kit"/wheels/{gevent,geventhttpclient,zope,greenlet,aiohttp,aiohappyeyeballs,aiosignal,frozenlist,multidict,yarl,propcache,brotli}[-_.]*.whl
echo "gpu_kit: $(ls "$kit/wheels" | wc -l) wheels, $(du -sm "$kit/wheels" | cut -f1) MiB"
tar -cf "$kit/kit.tar" -C "$kit" wheels
(cd "$kit" && sha256sum kit.tar > kit.tar.sha256 && split -b "${part_mib}m" -d -a 2 kit.tar part-)
rm -rf "$kit/kit.tar" "$kit/wheels"
index=0
for part in "$kit"/part-*; do
    index=$((index + 1))
    mkdir -p "$kit/$index"
    mv "$part" "$kit/$index/"
done
mv "$kit/kit.tar.sha256" "$kit/1/"
echo "gpu_kit: $index parts in $kit/1 .. $kit/$index; on the GPU machine, with all of them in place:"
echo "    bash benchmarks/gpu_device.sh"
