"""The transport-free data plane: what both fronts (REST and gRPC) serve, as plain data.

Each method returns dicts in the v2 / Triton JSON shapes or raises a
:class:`~gateway.errors.BatchgateError`; the REST front renders the dicts as JSON and
the gRPC front parses them into the protobuf messages of the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway import __version__
from gateway.errors import InvalidInput, Unavailable
from gateway.lifecycle import ModelManager
from gateway.model_table import ServedModel
from gateway.router import Router

EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository", "model_configuration", "schedule_policy"]


def _config_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


class DataPlane:
    """Health, metadata, configuration, statistics and repository operations."""

    def __init__(self, router: Router, manager: ModelManager) -> None:
        self.router = router
        self.manager = manager

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "batchgate", "version": __version__, "extensions": EXTENSIONS}

    def ready(self) -> bool:
        return self.router.ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        served = self.router.resolve(name, version)
        return served.ready and self.router.accepting

    def _signature_of(self, name: str, version: str) -> ServedModel:
        served = self.router.resolve(name, version)
        if served.signature is None:
            raise Unavailable(f"model '{served.name}' version {served.version} is not ready")
        return served

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        served = self._signature_of(name, version)
        assert served.signature is not None

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

        return {
            "name": served.name,
            "versions": sorted(self.router.models[served.name], key=int),
            "platform": served.signature.platform,
            "inputs": tensors(served.signature.inputs),
            "outputs": tensors(served.signature.outputs),
        }

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The model's configuration in Triton's ``ModelConfig`` shape."""
        served = self._signature_of(name, version)
        assert served.signature is not None
        batching = served.config.batching
        batched = batching.max_batch_size > 0

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [
                {
                    "name": s.name,
                    "data_type": _config_type(s.datatype),
                    "dims": list(s.shape[1:] if batched else s.shape),
                }
                for s in specs
            ]

        policy = served.config.version_policy
        version_policy: dict[str, Any] = (
            {"specific": {"versions": list(policy.specific)}}
            if policy.specific
            else {"latest": {"num_versions": policy.latest}}
        )
        config: dict[str, Any] = {
            "name": served.name,
            "platform": served.signature.platform,
            "backend": "onnxruntime",
            "version_policy": version_policy,
            "max_batch_size": batching.max_batch_size,
            "input": tensors(served.signature.inputs),
            "output": tensors(served.signature.outputs),
            "parameters": {"slo_p99_ms": {"string_value": f"{served.config.slo.p99_ms:g}"}},
        }
        if batched:
            config["dynamic_batching"] = {
                "preferred_batch_size": list(batching.preferred_batch_sizes),
                "max_queue_delay_microseconds": batching.max_queue_delay_us,
                "priority_levels": batching.priority_levels,
                "default_priority_level": batching.default_priority or batching.priority_levels,
            }
        return config

    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """``{"model_stats": [...]}`` for one version, every version of a model, or everything."""
        if name:
            if version:
                served = [self.router.resolve(name, version)]
            else:
                self.router.resolve(name)
                served = list(self.router.models[name].values())
        else:
            served = self.router.all_served()
        ordered = sorted(served, key=lambda s: (s.name, int(s.version)))
        entries = []
        for model in ordered:
            entry = model.batcher.stats.as_dict()
            if model.drift is not None:
                entry["drift"] = model.drift.summary(model.config.drift.top_features)
            if model.outputs is not None:
                entry["outputs"] = model.outputs.summary()
            if model.shadow is not None and model.config.shadow is not None:
                entry["shadow"] = {
                    "model": model.config.shadow.model,
                    "agreement_ratio": model.shadow.ratio(),
                    "compared": len(model.shadow.results),
                }
            entries.append(entry)
        return {"model_stats": entries}

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.manager.index(ready_only)

    async def load(self, name: str, parameters: Iterable[str] = ()) -> None:
        """(Re)load ``name`` from the repository; ``parameters`` are the load request's keys.

        A config override or model files sent with the request (tritonclient's
        ``load_model(config=..., files=...)``) are refused rather than ignored: the
        caller would otherwise believe them applied.
        """
        sent = [key for key in parameters if key == "config" or key.startswith("file:")]
        if sent:
            raise InvalidInput(
                f"load of {name}: batchgate loads models only from the repository, so {', '.join(sorted(sent))} "
                f"cannot be sent with the request; change the model's folder and load again"
            )
        await self.manager.load(name)

    def promote(self, name: str) -> str:
        return self.router.promote(name)

    async def unload(self, name: str) -> None:
        await self.manager.unload(name)
