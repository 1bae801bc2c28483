"""Bearer tokens over real HTTP and gRPC fronts; the token never reaches the logs."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from gateway.auth import hash_token
from tests.helpers import GatewayProcess, ResponseReader, write_model

USER = "user-token-4f1c9a"
ADMIN = "admin-token-b72e0d"
NARROW = "narrow-token-93aa51"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("auth")
    root = folder / "models"
    for name in ("digits_mlp", "digits_logreg"):
        write_model(root, name, (demo_repository / name / "1" / "model.onnx").read_bytes(), {})
    tokens = folder / "tokens.yaml"
    tokens.write_text(
        yaml.safe_dump(
            {
                "tokens": [
                    {"name": "user", "sha256": hash_token(USER)},
                    {"name": "ops", "sha256": hash_token(ADMIN), "admin": True},
                    {"name": "narrow", "sha256": hash_token(NARROW), "models": ["digits_logreg"]},
                ]
            }
        )
    )
    process = GatewayProcess(
        root, folder / "gateway.log", config={"auth": {"tokens_file": str(tokens)}, "log_level": "debug"}
    )
    try:
        process.wait_ready()  # health stays public
        yield process
    finally:
        process.stop()


def _http_infer(gateway: GatewayProcess, model: str, token: str | None) -> None:
    client = httpclient.InferenceServerClient(gateway.url)
    tensor = httpclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    client.infer(model, [tensor], headers=headers)


@pytest.mark.parametrize(("token", "status"), [(None, "401"), ("wrong", "401"), (NARROW, "403")])
def test_http_refusals(secured: GatewayProcess, token: str | None, status: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        _http_infer(secured, "digits_mlp", token)
    assert info.value.status() == status


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong", 401), (NARROW, 403), (USER, 200)])
def test_both_http_paths_judge_tokens_alike(secured: GatewayProcess, token: str | None, status: int) -> None:
    """A Content-Length body takes the protocol's direct path, a chunked one the ASGI path
    (gateway.rest.protocol): same status, same challenge header, same body."""
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]})
    head = "POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: t\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    direct = f"{head}Content-Length: {len(body)}\r\n\r\n{body}"
    general = f"{head}Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n{body}\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", secured.port), timeout=10) as sock:
        sock.sendall(direct.encode() + general.encode())
        reader = ResponseReader(sock)
        answers = [reader.response(), reader.response()]
    for code, headers, payload in answers:
        assert code == status
        if status == 401:
            assert headers["www-authenticate"] == 'Bearer realm="batchgate"'
        if status != 200:
            assert "error" in json.loads(payload)
    assert answers[0][2] == answers[1][2]


def test_http_valid_tokens_and_admin_endpoints(secured: GatewayProcess) -> None:
    _http_infer(secured, "digits_mlp", USER)
    _http_infer(secured, "digits_logreg", NARROW)
    client = httpclient.InferenceServerClient(secured.url)
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("digits_logreg", headers={"Authorization": f"Bearer {USER}"})
    assert info.value.status() == "403" and "not an admin" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_repository_index(headers={"Authorization": f"Bearer {USER}"})
    assert info.value.status() == "403"
    assert client.get_model_repository_index(headers={"Authorization": f"Bearer {ADMIN}"})
    assert secured.get("/metrics")[0] == 200 and secured.get("/v2/health/ready")[0] == 200
    assert secured.get("/v2")[0] == 401  # metadata is not public


def _grpc_infer(gateway: GatewayProcess, model: str, token: str | None) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
    headers = {"authorization": f"Bearer {token}"} if token is not None else None
    client.infer(model, [tensor], headers=headers)


@pytest.mark.parametrize(
    ("token", "code"), [(None, "UNAUTHENTICATED"), ("wrong", "UNAUTHENTICATED"), (NARROW, "PERMISSION_DENIED")]
)
def test_grpc_refusals(secured: GatewayProcess, token: str | None, code: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        _grpc_infer(secured, "digits_mlp", token)
    assert info.value.status() == f"StatusCode.{code}"


def test_grpc_valid_tokens_and_admin_rpcs(secured: GatewayProcess) -> None:
    _grpc_infer(secured, "digits_mlp", USER)
    client = grpcclient.InferenceServerClient(secured.grpc_url)
    assert client.is_server_ready()  # public health
    with pytest.raises(InferenceServerException) as info:
        client.load_model("digits_logreg", headers={"authorization": f"Bearer {USER}"})
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    client.load_model("digits_logreg", headers={"authorization": f"Bearer {ADMIN}"})


def test_tokens_never_reach_the_logs(secured: GatewayProcess) -> None:
    """A full cycle (refused, accepted, admin) at debug level, then grep the whole log."""
    for token in (USER, ADMIN, NARROW):
        for model in ("digits_mlp", "digits_logreg"):
            try:
                _http_infer(secured, model, token)
                _grpc_infer(secured, model, token)
            except InferenceServerException:
                pass
    log = secured.log()  # flushed, the last 8 kB; the whole file below
    log = secured.log_path.read_text(errors="replace")
    assert "gateway ready" in log and '"level":"debug"' in log  # the grep has something to read
    for token in (USER, ADMIN, NARROW):
        assert token not in log
    assert "3.0, 3.0" not in log and "1.0, 1.0, 1.0" not in log  # nor tensor payloads
