"""Failures of the cloud side, each mapped to one gRPC status code in one table."""
from __future__ import annotations

import grpc

from common.codec import CodecError
from planner.models import UnknownModelError


class CloudError(Exception):
    """Base of the cloud's own failures."""


class UnknownPartitionError(CloudError):
    """A partition index the served model does not have."""


class ArtifactMismatchError(CloudError):
    """The device ran a different fine-tuned artifact than any this server holds."""


class BankRequestError(CloudError):
    """A request whose bank_scheme disagrees with its feature map or the bank's channels."""


class WeightsMismatchError(CloudError):
    """A device whose head runs other weights than the network this server continues."""


class MissingInputError(CloudError):
    """A request with neither a feature map nor an image."""


class ShuttingDownError(CloudError):
    """The server is draining and takes no new work."""


class TailsUnavailableError(CloudError):
    """No Ray Serve replica answered a request after every re-dispatch (cloud.ray_engine)."""


class OverloadedError(CloudError):
    """Over the configured bound on in-flight memory."""


class DeadlineExpiredError(CloudError):
    """The caller's deadline passed before the work could start."""


class InvalidFieldError(CloudError):
    """A request field outside its documented bounds (e.g. an over-long request_id)."""


class StreamIdleError(CloudError):
    """An InferStream sent no frame for longer than the server's idle bound."""


class UnauthenticatedError(CloudError):
    """A call without a valid bearer token (raised by cloud.security, logged like any refusal)."""


class EngineUnavailableError(ValueError):
    """`--engine` names an engine whose packages are not installed (a start-up failure, exit 2)."""


# exception class -> status code; the servicer consults only this table.
STATUS_OF: dict[type[BaseException], grpc.StatusCode] = {
    CodecError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownPartitionError: grpc.StatusCode.INVALID_ARGUMENT,
    MissingInputError: grpc.StatusCode.INVALID_ARGUMENT,
    BankRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownModelError: grpc.StatusCode.NOT_FOUND,
    ArtifactMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    WeightsMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    ShuttingDownError: grpc.StatusCode.UNAVAILABLE,
    TailsUnavailableError: grpc.StatusCode.UNAVAILABLE,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpiredError: grpc.StatusCode.DEADLINE_EXCEEDED,
    InvalidFieldError: grpc.StatusCode.INVALID_ARGUMENT,
    StreamIdleError: grpc.StatusCode.DEADLINE_EXCEEDED,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
}

# Longest status detail sent back (and logged): messages may quote client strings.
MAX_DETAIL_CHARS = 512


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of a known failure, or None for an internal error."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return None


def clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def detail_for(exc: BaseException) -> str:
    """The status detail of a known failure: its message, clipped."""
    return clip(str(exc))
