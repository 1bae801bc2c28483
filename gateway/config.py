"""Configuration: frozen pydantic models, read once at the edge and passed down.

Two files configure batchgate. ``batchgate.yaml`` (here) names the model repository,
the listeners and the worker pools; every field has a default, so no file is needed at
all. Each model folder may hold a ``config.yaml`` (:mod:`gateway.model_config`) with what
cannot be read from the ONNX file (batching, deadline, pool, SLO). Environment variables ``BATCHGATE_<PATH>``
(``__`` between nesting levels, e.g. ``BATCHGATE_HTTP__PORT=9000``) override the
server file. A wrong value fails at start-up with its field path, never at the first
request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.affinity import parse_cpus

ENV_PREFIX = "BATCHGATE_"


class ConfigError(Exception):
    """A configuration file or value is wrong; the message names the field and the reason."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _cpu_list(value: str | None) -> str | None:
    if value is not None:
        parse_cpus(value)  # ValueError names the problem; pydantic adds the field
    return value


CpuList = Annotated[str | None, AfterValidator(_cpu_list)]


class FaultConfig(Frozen):
    """Fault injection for tests and chaos runs; off by default. Never enable in production."""

    delay_ms: float = Field(0.0, ge=0, description="Extra latency added to every batch a worker computes.")
    error_ratio: float = Field(0.0, ge=0, le=1, description="Fraction of batches a worker fails with an error.")
    seed: int = Field(0, description="Seed of the workers' fault random generator.")
    models: tuple[str, ...] = Field((), description="Only these models misbehave; empty = every model.")


class KubernetesDiscovery(Frozen):
    """Find the pool's workers from the EndpointSlices of a headless Service."""

    service: str = Field(description="Headless Service in front of the worker pods.")
    namespace: str | None = Field(None, description="Its namespace; default: the gateway's own.")
    port: int = Field(9000, ge=1, le=65535, description="Worker gRPC port.")
    api_url: str | None = Field(None, description="API server URL; empty = in-cluster, then kubeconfig.")


class WorkerTLS(Frozen):
    """TLS from the gateway to a pool's gRPC workers; a client certificate makes it mutual."""

    ca_file: Path = Field(description="CA bundle that signed the workers' certificates.")
    cert_file: Path | None = Field(None, description="Gateway's client certificate (mTLS).")
    key_file: Path | None = Field(None, description="Its private key.")
    server_name: str | None = Field(None, description="Name to check in the workers' certificates; default: host.")

    @model_validator(mode="after")
    def _pair(self) -> WorkerTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class PoolConfig(Frozen):
    """A pool of worker replicas: local processes, or given endpoints of v2 gRPC servers."""

    replicas: int = Field(2, ge=0, description="Local worker processes to start.")
    threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads per run; 0 = usable CPUs / (replicas x concurrent_runs), "
        "where usable CPUs honour the CPU set (taskset, cpuset) and the cgroup CPU quota (a container or "
        "Kubernetes CPU limit), not the host's core count. The CPU count instead lets a lone request use "
        "every CPU (mlp on 2 CPUs, 1 user: p50 2.4 instead of 3.6 ms) but makes busy workers fight over "
        "them (70% load: p99 194 instead of 89 ms); README, Performance.",
    )
    concurrent_runs: int = Field(
        1,
        ge=1,
        description="Batches one worker computes at once on one shared session, so one copy of the weights "
        "(and of the CPU cache) serves them all; the gateway sends each replica at least this many at a time "
        "(remote workers: start them with --concurrent-runs).",
    )
    providers: tuple[str, ...] = Field(
        ("auto",),
        description="Execution providers in order; 'auto' = CUDA when present, then CPU.",
    )
    spin: bool = Field(False, description="Let ONNX Runtime threads spin-wait between runs (burns idle CPU).")
    batch_scheduling: bool = Field(
        True,
        description="Run local workers under Linux SCHED_BATCH: their wake-ups never preempt the gateway "
        "on shared cores (mlp at 70% load on 2 cores: p99 28 instead of 43 ms).",
    )
    inflight_per_replica: int = Field(
        1, ge=1, description="Batches sent to one replica at a time; more overlaps transfer with compute."
    )
    cpus: CpuList = Field(
        None,
        description="Linux CPU list ('1-3') local workers run on; unset = any CPU, or the gateway's CPUs "
        "from before it confined itself (see cpus at the top level).",
    )
    endpoints: tuple[str, ...] = Field(
        (), description="Existing v2 gRPC servers (host:port or unix:path); no local processes then."
    )
    transport: Literal["unix", "tcp"] = Field("unix", description="How local workers listen.")
    discovery: KubernetesDiscovery | None = Field(
        None, description="Watch a headless Service's EndpointSlices for workers (no local processes then)."
    )
    fault: FaultConfig = Field(default_factory=FaultConfig, description="Fault injection (tests, chaos).")
    local_fast_path: bool = Field(
        True, description="Send batches to local unix-socket workers over framed protobuf instead of gRPC."
    )
    tls: WorkerTLS | None = Field(
        None, description="TLS (mTLS with a client certificate) to the workers of endpoints/discovery pools."
    )
    isolation: Literal["process", "thread"] = Field(
        "process",
        description="How local replicas run: 'process' = a worker process each, which a crash in ONNX Runtime "
        "takes down alone (the supervisor restarts it); 'thread' = inside the gateway's process, one ONNX "
        "Runtime session per replica run on the gateway's own threads, with no socket or protobuf between "
        "(mlp, 1 user on 2 vCPUs: 0.1-0.5 ms less per request), but a native crash in ONNX Runtime takes the "
        "gateway down with it; README, Performance.",
    )

    @model_validator(mode="after")
    def _tls_needs_remote(self) -> PoolConfig:
        if self.tls is not None and not self.endpoints and self.discovery is None:
            raise ValueError("tls applies to endpoints/discovery pools; local workers use a private unix socket")
        if self.isolation == "thread" and (self.endpoints or self.discovery is not None):
            raise ValueError("isolation 'thread' applies to local replicas, not to endpoints/discovery pools")
        return self


class HTTPConfig(Frozen):
    """The HTTP (REST) listener."""

    host: str = Field("127.0.0.1", description="Listen address; 0.0.0.0 to accept remote clients.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 = any free port).")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    json_offload_bytes: int = Field(
        512 * 1024,
        ge=0,
        description="Inference requests with this much JSON or more, and responses with as much JSON output (about "
        "10 bytes a value), are read or written in a JSON process, so the event loop keeps serving other requests "
        "meanwhile (on the loop: 7-10 ms per MB to read, 3 to write); a gzip or deflate body counts 4x its size. "
        "0 keeps all of it on the loop.",
    )
    json_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="JSON processes (json_offload_bytes), each started when a large body finds none free; about 60 "
        "MB each, plus a buffer as large as the largest body it has read, given back after 30 s without one.",
    )


class GRPCConfig(Frozen):
    """The gRPC listener (inference.GRPCInferenceService, what tritonclient.grpc calls)."""

    enabled: bool = Field(True, description="Serve gRPC next to HTTP.")
    host: str | None = Field(None, description="Listen address; empty = the same as http.host.")
    port: int = Field(8001, ge=0, le=65535, description="gRPC port (0 = any free port).")
    max_message_bytes: int = Field(
        512 * 1024 * 1024, ge=4 * 1024 * 1024, description="Largest gRPC message in either direction."
    )
    server: Literal["batchgate", "grpcio"] = Field(
        "batchgate",
        description="batchgate: the gateway's own HTTP/2 front for unary calls (less CPU per call); grpcio: grpc.aio.",
    )
    idle_timeout_s: float = Field(
        300.0, ge=0, description="batchgate server: GOAWAY to a connection without calls this long; 0 = never."
    )


class MetricsConfig(Frozen):
    """The operations port: /metrics and the health probes on a socket of their own."""

    enabled: bool = Field(True, description="Serve the operations port next to HTTP and gRPC.")
    host: str | None = Field(None, description="Listen address; empty = the same as http.host.")
    port: int = Field(
        8002,
        ge=0,
        le=65535,
        description="Port for GET /metrics, /v2/health/live and /v2/health/ready, plain HTTP (0 = any free port). "
        "Probes and scrapes sent here are answered when a connection storm fills the HTTP port's accept queue.",
    )
    loop_lag_interval_ms: int = Field(
        50,
        ge=0,
        description="How often the gateway times its own event loop for batchgate_event_loop_lag_seconds "
        "(how late a due timer ran); 0 = not measured.",
    )


class TLSConfig(Frozen):
    """TLS on the HTTP and gRPC listeners (off unless a certificate is given)."""

    cert_file: Path | None = Field(None, description="Server certificate chain (PEM); none = plain text.")
    key_file: Path | None = Field(None, description="Its private key (PEM).")
    client_ca_file: Path | None = Field(None, description="Require client certificates signed by this CA (mTLS).")

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file")
        return self


class ClientLimits(Frozen):
    """What one client may ask of the gateway (inference calls, both fronts)."""

    key: Literal["auto", "client_id"] = Field(
        "auto",
        description="Who a client is: auto = token name when auth is on, else peer address; "
        "client_id = the x-client-id header (only behind a proxy you trust).",
    )
    rate_per_s: float = Field(0.0, ge=0, description="Token-bucket refill, requests per second; 0 = no rate limit.")
    burst: int = Field(0, ge=0, description="Bucket size; 0 = one second of rate.")
    max_concurrency: int = Field(256, ge=0, description="In-flight requests per client; more get 429; 0 = no limit.")


class LimitsConfig(Frozen):
    """Abuse limits; the defaults protect a small server (DESIGN: bad input gets a 4xx, never a 500)."""

    max_tensor_elements: int = Field(
        1 << 26, ge=1, description="Elements one request may declare over all inputs; more get 413."
    )
    max_json_depth: int = Field(32, ge=2, description="Nesting of JSON tensor data; deeper gets 400.")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="Request line and headers; more get 431.")
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open connections on each front; more get 503 (HTTP) or GOAWAY (gRPC) and are closed. Past it, "
        "8 more HTTP connections may still GET /v2/health/live, /v2/health/ready or /metrics (probes and scrapes "
        "keep working under overload). batchgate_open_connections{front} shows how close each front is.",
    )
    max_grpc_rpcs: int = Field(1024, ge=1, description="Concurrent gRPC calls; more get RESOURCE_EXHAUSTED.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time to send a request's headers (gRPC: the HTTP/2 preface); then 408 and close."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Time to send a request's body; then 408 and close (gRPC: DEADLINE_EXCEEDED)."
    )
    per_client: ClientLimits = Field(default_factory=ClientLimits, description="Per-client rate and concurrency.")


class AuthConfig(Frozen):
    """Bearer-token authentication (off unless a tokens file is given)."""

    tokens_file: Path | None = Field(None, description="YAML with hashed tokens (batchgate token new); none = off.")
    public_paths: tuple[str, ...] = Field(
        ("/v2/health/live", "/v2/health/ready", "/metrics"),
        description="HTTP paths (and the matching gRPC health RPCs) served without a token.",
    )


class ScalingPolicy(Frozen):
    """How the controller sizes one pool (DESIGN §7)."""

    min_replicas: int = Field(1, ge=0, description="Never fewer replicas.")
    max_replicas: int = Field(8, ge=1, description="Never more replicas.")
    target_concurrency: float = Field(8.0, gt=0, description="In-flight requests one replica should carry.")
    slo_p99_ms: float | None = Field(None, gt=0, description="p99 target; default: the pool's strictest model SLO.")
    stable_window_s: float = Field(60.0, gt=0, description="Averaging window for normal decisions and scale-down.")
    panic_window_s: float = Field(6.0, gt=0, description="Short window that reacts to bursts.")
    panic_threshold: float = Field(2.0, gt=1, description="Panic when the short window wants this many times more.")
    max_step_up: int = Field(4, ge=1, description="Most replicas added per decision.")
    max_step_down: int = Field(1, ge=1, description="Most replicas removed per decision.")
    scale_down_delay_s: float = Field(60.0, ge=0, description="Wanted fewer for this long before removing any.")

    @model_validator(mode="after")
    def _check_bounds(self) -> ScalingPolicy:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class KubernetesTarget(Frozen):
    """The worker Deployment whose scale subresource sizes a pool."""

    deployment: str = Field(description="Deployment name.")
    namespace: str | None = Field(None, description="Its namespace; default: the controller's own.")
    api_url: str | None = Field(None, description="API server URL; empty = in-cluster, then kubeconfig.")


class AutoscalerConfig(Frozen):
    """The controller: where it reads signals and how it acts."""

    enabled: bool = Field(True, description="Run the controller inside batchgate serve.")
    backend: Literal["local", "kubernetes", "dry-run"] = Field("local", description="What a decision changes.")
    source: Literal["gateway", "prometheus"] = Field("gateway", description="Where the signals come from.")
    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus HTTP API for source: prometheus.")
    interval_s: float = Field(2.0, gt=0, description="Seconds between decisions.")
    policies: dict[str, ScalingPolicy] = Field(default_factory=dict, description="Policy per pool name.")
    kubernetes: dict[str, KubernetesTarget] = Field(default_factory=dict, description="Deployment per pool name.")


class ServerConfig(Frozen):
    """Top-level ``batchgate.yaml``."""

    model_repository: Path = Field(Path("models"), description="Folder with one sub-folder per model.")
    repository_poll_s: float = Field(
        0.0, ge=0, description="Rescan the repository this often and load what changed; 0 = on load calls only."
    )
    http: HTTPConfig = Field(default_factory=HTTPConfig, description="The HTTP listener.")
    grpc: GRPCConfig = Field(default_factory=GRPCConfig, description="The gRPC listener.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="The operations port.")
    pools: dict[str, PoolConfig] = Field(
        default_factory=lambda: {"default": PoolConfig()}, description="Worker pools by name; models pick one."
    )
    autoscaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig, description="Replica controller.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication.")
    tls: TLSConfig = Field(default_factory=TLSConfig, description="TLS on both listeners.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Abuse limits.")
    drain_timeout_s: float = Field(30.0, gt=0, description="How long in-flight requests get on shutdown.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Least severe level logged.")
    cpus: CpuList = Field(
        None,
        description="Linux CPU list ('0') the gateway process runs on; with pools.<pool>.cpus naming the "
        "others, its event loop never waits for a core behind a worker. Unset = any CPU.",
    )


def format_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem: ``source: field.path: reason``."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{source}: {path}: {item['msg']}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, not {type(data).__name__}")
    return data


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict from ``BATCHGATE_A__B=value`` variables."""
    result: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX:
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with another BATCHGATE_ variable")
        node[parts[-1]] = value
    return result


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_server_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """File, then ``BATCHGATE_`` variables, then explicit overrides (CLI flags) win."""
    data = read_yaml(path) if path is not None else {}
    data = _merge(data, env_overrides(os.environ if environ is None else environ))
    data = _merge(data, overrides or {})
    source = str(path) if path is not None else "config"
    try:
        config = ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    if path is not None and not config.model_repository.is_absolute():
        # A relative repository path in a file means relative to that file.
        in_file = "model_repository" in read_yaml(path)
        if in_file and "model_repository" not in (overrides or {}):
            config = config.model_copy(update={"model_repository": path.parent / config.model_repository})
    return config


if __name__ == "__main__":
    from gateway.config_reference import reference

    print(reference(), end="")
