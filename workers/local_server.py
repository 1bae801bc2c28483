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
        self._active = 0  # requests being computed; close() waits for them
        self._lock = threading.Lock()
        self._drained = threading.Event()
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
        # A buffered reader: its first read of a small frame's header brings the payload
        # with it, in C, where a loop of recv_into calls ran per frame in Python. The
        # accounting is a plain lock; the event is for close() alone.
        with conn, conn.makefile("rb") as reader:
            while True:
                header = reader.read(HEADER.size)
                if len(header) < HEADER.size:
                    return
                size, kind = HEADER.unpack(header)
                if kind != REQUEST or size > MAX_FRAME_BYTES:
                    conn.sendall(error_frame(grpc.StatusCode.INVALID_ARGUMENT.value[0], "bad frame"))
                    return
                payload = reader.read(size)
                if len(payload) < size:
                    return
                with self._lock:
                    self._active += 1
                try:
                    conn.sendall(self._handle(payload))
                finally:
                    with self._lock:
                        self._active -= 1
                        if self._closed and not self._active:
                            self._drained.set()

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
        with self._lock:
            self._closed = True
            busy = self._active > 0
        self._sock.close()
        if busy:
            self._drained.wait(timeout_s)
        try:
            self.path.unlink()
        except OSError:
            pass
