# batchgate image: the same install steps as `make run` (pip install '.[cpu]' into a venv).
# CPU (default): docker build -t batchgate .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY workers workers
RUN python -m venv /opt/batchgate \
    && /opt/batchgate/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/batchgate/bin/pip install --no-cache-dir '.[cpu]'

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 batchgate
COPY --from=build /opt/batchgate /opt/batchgate
ENV PATH=/opt/batchgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/batchgate
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["batchgate"]
CMD ["serve", "--host", "0.0.0.0", "--model-repository", "/models"]
