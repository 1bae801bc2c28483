"""Kubernetes API use: the scale subresource of worker Deployments, and EndpointSlices.

The Roles in ``k8s/base/rbac.yaml`` grant exactly :data:`CONTROLLER_RULES` and
:data:`GATEWAY_RULES`; a test keeps them equal, so every call here must be listed there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("batchgate.kubernetes")

# (API group, resource, verbs) — what each component calls, no more.
CONTROLLER_RULES = [("apps", "deployments/scale", ("get", "patch"))]
GATEWAY_RULES = [("discovery.k8s.io", "endpointslices", ("list", "watch"))]

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubernetesError(RuntimeError):
    """A Kubernetes API call failed in a way the operator must fix (RBAC, missing object)."""


def own_namespace(default: str = "default") -> str:
    try:
        return NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        return default


async def api_client(host: str | None = None) -> Any:
    """An ApiClient: ``host`` when given (tests, local runs), else in-cluster, else kubeconfig."""
    from kubernetes.aio import client, config

    if host is not None:
        configuration = client.Configuration(host=host)
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        await config.load_kube_config()
    return client.ApiClient()


def _explain(exc: Any, what: str) -> KubernetesError:
    status = getattr(exc, "status", None)
    if status == 403:
        return KubernetesError(f"forbidden to {what}: grant the Role in k8s/base/rbac.yaml to this ServiceAccount")
    if status == 404:
        return KubernetesError(f"cannot {what}: not found")
    return KubernetesError(f"cannot {what}: {status} {getattr(exc, 'reason', exc)}")


class DeploymentScale:
    """Read and set ``spec.replicas`` of one Deployment through its scale subresource."""

    def __init__(self, api: Any, name: str, namespace: str) -> None:
        from kubernetes.aio import client

        self.apps = client.AppsV1Api(api)
        self.name = name
        self.namespace = namespace

    async def read(self) -> tuple[int, int, str]:
        """(spec replicas, status replicas, resourceVersion)."""
        from kubernetes.aio.client.exceptions import ApiException

        try:
            scale = await self.apps.read_namespaced_deployment_scale(self.name, self.namespace)
        except ApiException as exc:
            raise _explain(exc, f"get deployments/{self.name}/scale") from None
        spec = scale.spec.replicas if scale.spec and scale.spec.replicas is not None else 0
        status = scale.status.replicas if scale.status and scale.status.replicas is not None else 0
        return spec, status, scale.metadata.resource_version or ""

    async def set(self, replicas: int, attempts: int = 3) -> int:
        """Patch ``spec.replicas`` guarded by resourceVersion; re-read and retry on 409."""
        from kubernetes.aio.client.exceptions import ApiException

        for _ in range(attempts):
            current, _status, version = await self.read()
            if current == replicas:
                return current
            body = {"metadata": {"resourceVersion": version}, "spec": {"replicas": replicas}}
            try:
                await self.apps.patch_namespaced_deployment_scale(self.name, self.namespace, body)
                return replicas
            except ApiException as exc:
                if exc.status == 409:
                    log.info("deployments/%s/scale changed underneath us; re-reading", self.name)
                    continue
                raise _explain(exc, f"patch deployments/{self.name}/scale") from None
        raise KubernetesError(f"deployments/{self.name}/scale kept changing: gave up after {attempts} conflicts")


def ready_addresses(slices: list[Any], port: int) -> set[str]:
    """``ip:port`` of every ready endpoint in the slices."""
    found = set()
    for item in slices:
        for endpoint in item.endpoints or []:
            conditions = endpoint.conditions
            if conditions is not None and conditions.ready is False:
                continue
            for address in endpoint.addresses or []:
                found.add(f"{address}:{port}")
    return found


class EndpointSliceWatcher:
    """Keeps ``on_change`` told of the ready worker addresses behind a headless Service."""

    def __init__(
        self,
        api: Any,
        service: str,
        namespace: str,
        port: int,
        on_change: Callable[[set[str]], None],
        resync_s: float = 30.0,
    ) -> None:
        from kubernetes.aio import client

        self.discovery = client.DiscoveryV1Api(api)
        self.service = service
        self.namespace = namespace
        self.port = port
        self.on_change = on_change
        self.resync_s = resync_s
        self.selector = f"kubernetes.io/service-name={service}"
        self._slices: dict[str, Any] = {}

    async def list_once(self) -> str:
        from kubernetes.aio.client.exceptions import ApiException

        try:
            listing = await self.discovery.list_namespaced_endpoint_slice(self.namespace, label_selector=self.selector)
        except ApiException as exc:
            raise _explain(exc, f"list endpointslices of service {self.service}") from None
        self._slices = {s.metadata.name: s for s in listing.items}
        self.on_change(ready_addresses(list(self._slices.values()), self.port))
        return str(listing.metadata.resource_version or "")

    async def run(self) -> None:
        """List, then watch from that version; re-list on errors or expiry."""
        from kubernetes.aio import watch

        while True:
            try:
                version = await self.list_once()
                stream = watch.Watch()
                async for event in stream.stream(
                    self.discovery.list_namespaced_endpoint_slice,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=version,
                    timeout_seconds=int(self.resync_s),
                ):
                    kind, item = event["type"], event["object"]
                    if kind == "DELETED":
                        self._slices.pop(item.metadata.name, None)
                    elif kind in ("ADDED", "MODIFIED"):
                        self._slices[item.metadata.name] = item
                    self.on_change(ready_addresses(list(self._slices.values()), self.port))
            except asyncio.CancelledError:
                raise
            except KubernetesError:
                log.exception("endpoint discovery failed")
                await asyncio.sleep(5)
            except Exception:  # network trouble, expired watch: list again after a pause
                log.warning("endpoint watch for %s interrupted; listing again", self.service, exc_info=True)
                await asyncio.sleep(1)
