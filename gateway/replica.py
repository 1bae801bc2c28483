"""One worker replica as the gateway sees it, and the v2 messages exchanged with it.

A replica is reached over v2 gRPC (plain, TLS or mutual TLS) and, when it runs on this
machine, over framed unix-socket connections as well (:mod:`gateway.local_transport`).
Both carry the same ModelInferRequest; an in-process replica (:mod:`gateway.inprocess`)
takes its batches as arrays and keeps gRPC for health and loading; a worker's gRPC status maps to the gateway's error
tree here, in one place.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.circuit import CircuitBreaker
from gateway.config import WorkerTLS
from gateway.errors import BatchgateError, DeadlineExceeded, InvalidInput, NotFound, Unavailable, WorkerError
from gateway.inprocess import InProcessWorker
from gateway.local_transport import LocalConnection
from gateway.types import Array
from workers.servicer import COMPUTE_NS
from workers.v2grpc import array_from_raw, array_to_raw, datatype_of

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}  # a framed error's number -> its status
LOAD_TIMEOUT_S = 300.0


def load_request(name: str, version: str, path: str) -> Any:
    """The RepositoryModelLoad that has a worker load one version from its model file."""
    param = service_pb2.ModelRepositoryParameter
    return service_pb2.RepositoryModelLoadRequest(
        model_name=name, parameters={"version": param(string_param=version), "path": param(string_param=path)}
    )


Outputs = dict[str, Array]


def error_for(code: grpc.StatusCode, detail: str, address: str) -> BatchgateError:
    """The batchgate error for a worker's gRPC status."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        return Unavailable(f"worker {address} unavailable: {detail}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"worker {address}: {detail}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(detail)
    return WorkerError(detail)


def open_channel(address: str, tls: WorkerTLS | None) -> grpc.aio.Channel:
    """A channel to a worker: plain, TLS, or mutual TLS when a client certificate is configured."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes(),
        private_key=tls.key_file.read_bytes() if tls.key_file is not None else None,
        certificate_chain=tls.cert_file.read_bytes() if tls.cert_file is not None else None,
    )
    options: list[tuple[str, Any]] = list(_CHANNEL_OPTIONS)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(address, credentials, options=options)


class Replica:
    """One worker endpoint and its gateway-side bookkeeping.

    ``local_path`` names the worker's framed unix socket when it runs on this machine;
    ``inline`` is set instead when the replica runs in the gateway's own process.
    """

    def __init__(
        self,
        address: str,
        local_path: str | None,
        breaker: CircuitBreaker,
        tls: WorkerTLS | None = None,
        inline: InProcessWorker | None = None,
    ) -> None:
        self.address = address
        self.local_path = local_path
        self.inline = inline
        self.breaker = breaker
        self.channel = open_channel(address, tls)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.outstanding = 0
        self.ready = False
        self.draining = False
        self.preparing: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.connections: list[LocalConnection] = []

    def __repr__(self) -> str:
        return f"Replica({self.address}, outstanding={self.outstanding}, ready={self.ready})"

    def _connection_idle(self, connection: LocalConnection) -> None:
        self.connections.append(connection)

    async def connect_local(self) -> LocalConnection:
        assert self.local_path is not None
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_unix_connection(
                lambda: LocalConnection(self.address, self._connection_idle), self.local_path
            )
        except OSError as exc:
            raise Unavailable(f"worker {self.address} unavailable: {exc}") from None
        return protocol

    def close_local(self) -> None:
        for connection in self.connections:
            connection.close()
        self.connections.clear()


def infer_request(model: str, version: str, feeds: dict[str, Array]) -> Any:
    """One batch as a ModelInferRequest with raw contents, for either transport."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, array in feeds.items():
        request.inputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        request.raw_input_contents.append(array_to_raw(array))
    return request


def infer_outputs(response: Any) -> tuple[Outputs, float | None]:
    """The batch's outputs, and the worker's own compute seconds where it reports them."""
    outputs: Outputs = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        outputs[tensor.name] = array_from_raw(tensor.datatype, tensor.shape, raw)
    compute = response.parameters.get(COMPUTE_NS)
    return outputs, (compute.int64_param / 1e9 if compute is not None else None)
