"""A stateful fake of exactly the Kubernetes API paths batchgate calls.

No real API server (kube-apiserver, k3s, kind, kwok, envtest) installs from the package
registries where batchgate is developed, so the controller and the gateway's discovery are
tested against this instead, with the real ``kubernetes`` client pointed at it through
``Configuration(host=...)``. It follows the API reference pages for
``autoscaling/v1 Scale`` (read/patch/replace ``deployments/{name}/scale``),
``discovery.k8s.io/v1 EndpointSlice`` (list and watch with ``labelSelector``,
``resourceVersion``, ``timeoutSeconds``) and ``meta/v1 Status`` (error bodies): every write
bumps a cluster-wide ``resourceVersion``; a patch or replace carrying a stale
``metadata.resourceVersion`` gets 409 Conflict; a forbidden object gets 403; an unknown one
404; a negative replica count 422 — all as ``kind: Status`` bodies.

Tests drive its state through ``/_fake/...``; ``python -m tests.fakes.kube_apiserver
--port 8443`` runs it for local end-to-end trials.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def status(code: int, reason: str, message: str) -> JSONResponse:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return JSONResponse(body, status_code=code)


class FakeCluster:
    """Deployments' scale, EndpointSlices, and the knobs tests turn."""

    def __init__(self) -> None:
        self.version = 1000
        self.scales: dict[tuple[str, str], dict[str, Any]] = {}
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}
        self.forbidden: set[str] = set()
        self.conflicts_to_inject = 0
        self.calls: list[tuple[str, str, int]] = []  # (method, path, status)
        self._changed = asyncio.Condition()
        self.events: list[tuple[int, str, dict[str, Any]]] = []

    def bump(self) -> str:
        self.version += 1
        return str(self.version)

    # -- scale ---------------------------------------------------------------------------
    def scale_doc(self, namespace: str, name: str) -> dict[str, Any]:
        item = self.scales[(namespace, name)]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": item["resourceVersion"],
                "uid": f"uid-{namespace}-{name}",
            },
            "spec": {"replicas": item["spec"]},
            "status": {"replicas": item["status"], "selector": f"app={name}"},
        }

    def set_scale(self, namespace: str, name: str, replicas: int) -> None:
        self.scales[(namespace, name)] = {"spec": replicas, "status": replicas, "resourceVersion": self.bump()}

    # -- endpoint slices ------------------------------------------------------------------
    async def set_slice(self, namespace: str, name: str, service: str, ready: list[str], not_ready: list[str]) -> None:
        kind = "MODIFIED" if (namespace, name) in self.slices else "ADDED"
        endpoints = [{"addresses": [ip], "conditions": {"ready": True}} for ip in ready]
        endpoints += [{"addresses": [ip], "conditions": {"ready": False}} for ip in not_ready]
        doc = {
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "addressType": "IPv4",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": self.bump(),
                "labels": {"kubernetes.io/service-name": service},
            },
            "endpoints": endpoints,
            "ports": [{"name": "grpc", "port": 9000, "protocol": "TCP"}],
        }
        self.slices[(namespace, name)] = doc
        async with self._changed:
            self.events.append((self.version, kind, doc))
            self._changed.notify_all()

    def matching(self, namespace: str, selector: str | None) -> list[dict[str, Any]]:
        wanted = dict(part.split("=", 1) for part in selector.split(",")) if selector else {}
        return [
            doc
            for (ns, _), doc in sorted(self.slices.items())
            if ns == namespace and all(doc["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]

    async def wait_change(self, within_s: float) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait(), within_s)
            except TimeoutError:
                pass


def build_app(cluster: FakeCluster) -> Starlette:
    async def scale(request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        response = await _scale(request, namespace, name)
        cluster.calls.append((request.method, request.url.path, response.status_code))
        return response

    async def _scale(request: Request, namespace: str, name: str) -> Response:
        if name in cluster.forbidden:
            return status(
                403,
                "Forbidden",
                f'deployments.apps "{name}" is forbidden: User '
                f'"system:serviceaccount:{namespace}:batchgate-controller" cannot '
                f'{request.method.lower()} resource "deployments/scale" in API group "apps"',
            )
        if (namespace, name) not in cluster.scales:
            return status(404, "NotFound", f'deployments.apps "{name}" not found')
        if request.method == "GET":
            return JSONResponse(cluster.scale_doc(namespace, name))
        body = json.loads(await request.body() or b"{}")
        item = cluster.scales[(namespace, name)]
        if cluster.conflicts_to_inject:
            cluster.conflicts_to_inject -= 1
            item["resourceVersion"] = cluster.bump()  # someone else wrote it just now
        sent_version = body.get("metadata", {}).get("resourceVersion")
        if sent_version and sent_version != item["resourceVersion"]:
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on deployments.apps "{name}": the object '
                "has been modified; please apply your changes to the latest version and try again",
            )
        replicas = body.get("spec", {}).get("replicas", item["spec"])
        if not isinstance(replicas, int) or replicas < 0:
            return status(
                422,
                "Invalid",
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                f"{replicas}: must be greater than or equal to 0",
            )
        item.update(spec=replicas, status=replicas, resourceVersion=cluster.bump())
        return JSONResponse(cluster.scale_doc(namespace, name))

    async def slices(request: Request) -> Response:
        namespace = request.path_params["namespace"]
        selector = request.query_params.get("labelSelector")
        if request.query_params.get("watch") in ("true", "1"):
            since = int(request.query_params.get("resourceVersion") or 0)
            timeout = float(request.query_params.get("timeoutSeconds") or 30)
            cluster.calls.append(("WATCH", request.url.path, 200))
            return StreamingResponse(_watch(namespace, selector, since, timeout), media_type="application/json")
        cluster.calls.append(("LIST", request.url.path, 200))
        return JSONResponse(
            {
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(cluster.version)},
                "items": cluster.matching(namespace, selector),
            }
        )

    async def _watch(namespace: str, selector: str | None, since: int, lasting_s: float) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        end = loop.time() + lasting_s
        sent = since
        while loop.time() < end:
            for version, kind, doc in list(cluster.events):
                if version > sent and doc in cluster.matching(namespace, selector):
                    yield json.dumps({"type": kind, "object": doc}).encode() + b"\n"
                    sent = version
            await cluster.wait_change(max(0.0, min(1.0, end - loop.time())))

    async def fake_slice(request: Request) -> Response:
        doc = await request.json()
        await cluster.set_slice(
            doc["namespace"], doc["name"], doc["service"], doc.get("ready", []), doc.get("not_ready", [])
        )
        return JSONResponse({"ok": True})

    async def fake_scale(request: Request) -> Response:
        doc = await request.json()
        cluster.set_scale(doc["namespace"], doc["name"], doc["replicas"])
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route(
                "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale", scale, methods=["GET", "PATCH", "PUT"]
            ),
            Route("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", slices, methods=["GET"]),
            Route("/_fake/endpointslice", fake_slice, methods=["POST"]),
            Route("/_fake/scale", fake_scale, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8443)
    args = parser.parse_args()
    cluster = FakeCluster()
    cluster.set_scale("batchgate", "batchgate-workers", 2)
    uvicorn.run(build_app(cluster), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
