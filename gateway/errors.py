"""The one error tree. Each class carries its HTTP status, gRPC code and retryability;
both transports read these attributes, so there is no second mapping table."""

from __future__ import annotations

import grpc


class BatchgateError(Exception):
    """Base of every error a client can see. ``str(err)`` is the message sent back."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidInput(BatchgateError):
    """The request is malformed or does not match the model's inputs."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(BatchgateError):
    """Unknown model, version or path."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class PayloadTooLarge(BatchgateError):
    """The request body exceeds the configured limit."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(BatchgateError):
    """A bounded queue is full; the client should retry after ``retry_after_s``."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class Unavailable(BatchgateError):
    """No replica can serve now (starting, draining, all failed)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class DeadlineExceeded(BatchgateError):
    """The request's deadline passed before an answer was ready."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class WorkerError(BatchgateError):
    """The model failed to compute a batch; retrying the same input would fail again."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


class Cancelled(BatchgateError):
    """The client went away; nothing is sent back."""

    http_status = 499
    grpc_code = grpc.StatusCode.CANCELLED


class Unauthenticated(BatchgateError):
    """No credentials, or credentials batchgate does not know."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(BatchgateError):
    """Known credentials without the right to this model or operation."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class RequestTimeout(BatchgateError):
    """The client was too slow sending its request; the connection is closed."""

    http_status = 408
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class RateLimited(Overloaded):
    """This client is over its own rate or concurrency; others are unaffected."""
