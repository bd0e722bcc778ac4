"""What can go wrong with a request, and the one table that maps it to HTTP and gRPC codes.

The data plane raises these; the HTTP and gRPC front ends never choose a status themselves,
so both transports answer the same mistake the same way (KServe keeps this in ``errors.py``).
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class ServeError(Exception):
    """A request that cannot be answered; ``str(self)`` is the message the client sees."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    # Seconds a client should wait before retrying (sent as Retry-After), or None.
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidInput(ServeError):
    """The request does not match the model: a name, datatype, shape or size is wrong."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServeError):
    """No such model or version on this server."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class BodyTooLarge(ServeError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(ServeError):
    """Loading, warming up or draining: another replica can answer."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retry_after = 1


class Overloaded(ServeError):
    """The queue is full: answered at once rather than letting requests pile up."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retry_after = 1


class InferenceFailed(ServeError):
    """ONNX Runtime failed on a request that passed validation."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


class StartupError(Exception):
    """The server cannot start: a missing model, an unavailable execution provider, ..."""

    def __init__(self, message: str, *, kind: str = "failure") -> None:
        super().__init__(message)
        # One of the CLI's ExitCode names (invalid_spec, invalid_model, store_error, ...):
        # the shell turns it into an exit status, the adapter does not import the shell.
        self.kind = kind
