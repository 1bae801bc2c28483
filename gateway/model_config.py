"""A model's own settings: ``models/<name>/config.yaml``, every field optional.

What cannot be read from the ONNX file: batching, deadline, fallback, pool, SLO, drift and
shadow monitoring, canary routing and which versions are served. Read once when the
repository is scanned; a wrong value fails then, with its file and field path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from gateway.config import ConfigError, Frozen, format_validation_error, read_yaml


class BatchingConfig(Frozen):
    """How requests for one model version are grouped into batches."""

    max_batch_size: int = Field(32, ge=0, description="Most rows in one batch; 0 = no batch dimension.")
    max_queue_delay_us: int = Field(
        2000, ge=0, description="Longest a request may wait for more rows to join its batch."
    )
    preferred_batch_sizes: tuple[int, ...] = Field(
        (), description="Row counts worth closing a batch at before max_batch_size."
    )
    max_queue_size: int = Field(1024, ge=1, description="Queued requests beyond which new ones get 429.")
    priority_levels: int = Field(2, ge=1, le=16, description="Number of priority levels (1 = highest).")
    default_priority: int = Field(0, ge=0, description="Level for requests sending priority 0; 0 = lowest.")
    shed_over_slo: bool = Field(
        True,
        description="Answer 429 at once when the work queued ahead of a request, timed as the workers report "
        "it, would answer it later than the SLO p99.",
    )
    aging_ms: float = Field(100.0, gt=0, description="Each full period a request waits lifts it one priority level.")
    adaptive: bool = Field(
        True,
        description="Close batches early by the deadline and arrival-rate rules (a lone client never waits); "
        "false = wait the full max_queue_delay_us unless full (Triton-style: larger batches, less CPU and a "
        "tighter tail for CPU-bound models under sustained load).",
    )
    hold_for_inflight: bool = Field(
        True,
        description="Adaptive only: while a batch of this model computes, hold the next one (at most "
        "max_queue_delay_us) until it returns rather than send it to another free slot: fewer, larger batches "
        "and less CPU; false = a free slot takes it at once (see benchmarks/results/hold.md).",
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> BatchingConfig:
        for size in self.preferred_batch_sizes:
            if size < 1 or (self.max_batch_size and size > self.max_batch_size):
                raise ValueError(f"preferred batch size {size} must be in 1..max_batch_size")
        if self.default_priority > self.priority_levels:
            raise ValueError("default_priority must be at most priority_levels")
        return self


FallbackTrigger = Literal["error", "timeout", "overload", "circuit_open"]


class FallbackConfig(Frozen):
    """Which model answers when the primary cannot, and on what."""

    model: str = Field(description="Name of the fallback model in the same repository.")
    on: tuple[FallbackTrigger, ...] = Field(
        ("error", "timeout", "overload", "circuit_open"), description="Triggers that route to it."
    )
    primary_budget_ms: float | None = Field(
        None, gt=0, description="Start the fallback when the primary has not answered by then."
    )


class DriftConfig(Frozen):
    """Input drift against ``profile.json`` next to the model (on when the profile exists)."""

    enabled: bool = Field(True, description="Watch input drift when the model has a profile.")
    sample_ratio: float = Field(0.1, ge=0, le=1, description="Fraction of requests whose inputs are binned.")
    window_s: float = Field(300.0, gt=0, description="Sliding window of the PSI.")
    top_features: int = Field(5, ge=1, le=50, description="Features exported as metrics (bounded cardinality).")


class ShadowConfig(Frozen):
    """Send a sample of traffic to another model too and track how often they agree."""

    model: str = Field(description="The shadow model (often the fallback).")
    ratio: float = Field(0.01, ge=0, le=1, description="Fraction of answered requests mirrored.")


class CanaryConfig(Frozen):
    """Send a share of the requests that name no version to a newer version."""

    version: int = Field(ge=1, description="The canary version (its folder must be served: see version_policy).")
    percent: float = Field(ge=0, le=100, description="Share of unversioned requests it gets.")


class SLOConfig(Frozen):
    """Service-level objective the autoscaler and the load-test gate hold the model to."""

    p99_ms: float = Field(100.0, gt=0, description="Target 99th percentile request latency.")


class VersionPolicy(Frozen):
    """Which version folders are served: the newest ``latest`` ones, or exactly ``specific``."""

    latest: int = Field(1, ge=1, description="Serve the N highest version numbers.")
    specific: tuple[int, ...] = Field((), description="Serve exactly these versions (overrides latest).")


class ModelConfig(Frozen):
    """Per-model settings from ``models/<name>/config.yaml``; all optional."""

    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Dynamic batching.")
    timeout_ms: float = Field(1000.0, gt=0, description="Deadline when the client sends none.")
    fallback: FallbackConfig | None = Field(None, description="Model that answers when this one cannot.")
    pool: str = Field("default", description="Worker pool that serves this model.")
    slo: SLOConfig = Field(default_factory=SLOConfig, description="Latency objective.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Input drift monitoring.")
    shadow: ShadowConfig | None = Field(None, description="Shadow traffic and agreement rate.")
    canary: CanaryConfig | None = Field(None, description="Canary routing, promotable by API.")
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy, description="Which versions are served.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free-form facts about the model (accuracy, data)."
    )


def load_model_config(path: Path) -> ModelConfig:
    """Read ``config.yaml`` of one model; a missing file means all defaults."""
    data = read_yaml(path) if path.exists() else {}
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None
