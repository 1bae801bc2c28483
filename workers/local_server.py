"""Worker side of the framed local transport (see :mod:`workers.framing`)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2

from workers.framing import HEADER, MAX_FRAME_BYTES, REQUEST, RESPONSE, error_frame, frame
from workers.servicer import InferFailure, WorkerServicer

log = logging.getLogger("batchgate.worker")


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = conn.recv_into(view[got:], size - got)
        if not count:
            return None
        got += count
    return bytes(buffer)


class LocalServer:
    """Accepts gateway connections on a unix socket; one thread per connection."""

    def __init__(self, path: Path, servicer: WorkerServicer) -> None:
        self.path = path
        self.servicer = servicer
        if path.exists():
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        os.chmod(path, 0o600)
        self._sock.listen(64)
        self._closed = False
        self._active = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._accept, name="local-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="local-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                header = _recv_exact(conn, HEADER.size)
                if header is None:
                    return
                size, kind = HEADER.unpack(header)
                if kind != REQUEST or size > MAX_FRAME_BYTES:
                    conn.sendall(error_frame(grpc.StatusCode.INVALID_ARGUMENT.value[0], "bad frame"))
                    return
                payload = _recv_exact(conn, size)
                if payload is None:
                    return
                with self._idle:
                    self._active += 1
                try:
                    conn.sendall(self._handle(payload))
                finally:
                    with self._idle:
                        self._active -= 1
                        self._idle.notify_all()

    def _handle(self, payload: bytes) -> bytes:
        request = service_pb2.ModelInferRequest()
        try:
            request.ParseFromString(payload)
        except Exception as exc:  # protobuf's DecodeError and friends
            return error_frame(grpc.StatusCode.INVALID_ARGUMENT.value[0], f"bad request: {exc}")
        if not self.servicer.ready:
            return error_frame(grpc.StatusCode.UNAVAILABLE.value[0], "worker is draining")
        try:
            response = self.servicer.infer(request)
        except InferFailure as failure:
            return error_frame(failure.code.value[0], failure.message)
        return frame(RESPONSE, response.SerializeToString())

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, then wait (bounded) for requests being computed to be answered."""
        self._closed = True
        self._sock.close()
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=timeout_s)
        try:
            self.path.unlink()
        except OSError:
            pass
