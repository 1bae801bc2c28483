"""TLS on both fronts and mutual TLS from the gateway to a worker, with a test CA (trustme).

Everything is real: the gateway and the worker are processes on loopback, the clients are
tritonclient.http (``ssl=True``) and tritonclient.grpc (``ssl=True``), and plain-text
clients are pointed at the TLS ports to see them refused cleanly.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import trustme
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import GatewayProcess, free_port, write_model

ROWS = np.random.default_rng(3).random((4, 64), dtype=np.float32) * 16


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("batchgate-gateway")
    paths = Certs(*(folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))
    ca.cert_pem.write_to_path(str(paths.ca))
    paths.server_cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(paths.server_key))
    paths.client_cert.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Path:
    root = tmp_path_factory.mktemp("tls") / "models"
    write_model(root, "digits_mlp", (demo_repository / "digits_mlp" / "1" / "model.onnx").read_bytes(), {})
    return root


@pytest.fixture(scope="module")
def tls_gateway(repository: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {"tls": {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}}
    process = GatewayProcess(
        repository, tmp_path_factory.mktemp("tls-gw") / "gateway.log", config, replicas=1, ca_file=certs.ca
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _expected(repository: Path) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(repository / "digits_mlp" / "1" / "model.onnx"))
    return np.asarray(session.run(["label"], {"input": ROWS})[0])


def _http_labels(client: httpclient.InferenceServerClient) -> np.ndarray:
    tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    return np.asarray(client.infer("digits_mlp", [tensor]).as_numpy("label"))


def _grpc_labels(client: grpcclient.InferenceServerClient) -> np.ndarray:
    tensor = grpcclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    return np.asarray(client.infer("digits_mlp", [tensor], client_timeout=10).as_numpy("label"))


def test_tritonclient_http_over_tls(tls_gateway: GatewayProcess, certs: Certs, repository: Path) -> None:
    client = httpclient.InferenceServerClient(tls_gateway.url, ssl=True, ssl_options={"ca_certs": str(certs.ca)})
    assert client.is_server_ready()
    np.testing.assert_array_equal(_http_labels(client), _expected(repository))


def test_tritonclient_grpc_over_tls(tls_gateway: GatewayProcess, certs: Certs, repository: Path) -> None:
    client = grpcclient.InferenceServerClient(tls_gateway.grpc_url, ssl=True, root_certificates=str(certs.ca))
    assert client.is_server_ready()
    np.testing.assert_array_equal(_grpc_labels(client), _expected(repository))


def test_plain_http_to_the_tls_port_fails_cleanly(tls_gateway: GatewayProcess) -> None:
    """A plain-text request gets no answer and a closed connection, at once, and the server is unharmed."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", tls_gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = sock.recv(4096)
        while reply.startswith(b"\x15"):  # a TLS alert record at most, never an HTTP answer
            more = sock.recv(4096)
            if not more:
                break
            reply += more
    assert not reply.startswith(b"HTTP/"), reply[:40]
    assert time.monotonic() - started < 5
    assert tls_gateway.get("/v2/health/ready")[0] == 200


def test_plain_grpc_to_the_tls_port_fails_cleanly(tls_gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(tls_gateway.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.is_server_live(client_timeout=5)
    assert info.value.status() == "StatusCode.UNAVAILABLE"


def test_gateway_reaches_a_worker_over_mutual_tls(
    repository: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The worker demands a client certificate signed by the CA: the gateway presents one and
    serves; a client without one is refused by the worker."""
    port = free_port()
    folder = tmp_path_factory.mktemp("mtls")
    worker_log = open(folder / "worker.log", "wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers",
            "--listen",
            f"127.0.0.1:{port}",
            "--model",
            f"digits_mlp=1:{repository / 'digits_mlp' / '1' / 'model.onnx'}",
            "--tls-cert",
            str(certs.server_cert),
            "--tls-key",
            str(certs.server_key),
            "--tls-client-ca",
            str(certs.ca),
        ],
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    tls = {"ca_file": str(certs.ca), "cert_file": str(certs.client_cert), "key_file": str(certs.client_key)}
    config = {"pools": {"default": {"endpoints": [f"127.0.0.1:{port}"], "tls": tls}}}
    gateway = GatewayProcess(repository, folder / "gateway.log", config)
    try:
        gateway.wait_ready()
        client = httpclient.InferenceServerClient(gateway.url)
        np.testing.assert_array_equal(_http_labels(client), _expected(repository))

        root = certs.ca.read_bytes()
        without_cert = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root))
        stub = service_pb2_grpc.GRPCInferenceServiceStub(without_cert)
        with pytest.raises(grpc.RpcError) as info:
            stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        without_cert.close()
    finally:
        gateway.stop()
        worker.terminate()
        worker.wait(30)
        worker_log.close()
