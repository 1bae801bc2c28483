# batchgate image. The install step is the one `make run` uses (pip install '.[cpu,demo]'),
# with `gpu` instead of `cpu` for the GPU variant, in a fresh virtual environment so
# onnxruntime and onnxruntime-gpu can never both be present.
#   docker build -t batchgate:cpu .
#   docker build --build-arg VARIANT=gpu -t batchgate:gpu .
# The demo extra lets an init container build the demo repository (`batchgate models demo`).
ARG VARIANT=cpu

FROM python:3.11-slim-bookworm AS runtime-cpu

# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS runtime-gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# The base is one of the two tagged stages above, picked by VARIANT.
# checkov:skip=CKV_DOCKER_7: runtime-${VARIANT} is a stage of this file, whose bases are tagged
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS build
ARG VARIANT
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY workers workers
RUN python3 -m venv /opt/batchgate \
    && /opt/batchgate/bin/pip install --no-cache-dir ".[${VARIANT},demo]"

# hadolint ignore=DL3006
FROM runtime-${VARIANT}
RUN groupadd --gid 10001 batchgate \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin batchgate
COPY --from=build /opt/batchgate /opt/batchgate
ENV PATH=/opt/batchgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001 8002 9000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8002/v2/health/live', timeout=2).status != 200)"]
ENTRYPOINT ["batchgate"]
CMD ["serve", "--host", "0.0.0.0", "--model-repository", "/models"]
