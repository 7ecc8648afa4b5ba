"""Bearer-token check and TLS credentials for the cloud daemon."""
from __future__ import annotations

import hmac
from typing import Callable

import grpc

from cloud.errors import UnauthenticatedError
from common.credentials import read_pem

# Health checks stay open so that orchestrators can probe a token-protected server;
# they reveal only SERVING / NOT_SERVING.
UNAUTHENTICATED_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def bearer_problem(metadata, expected: bytes) -> str | None:
    """Why `metadata` does not carry exactly one `authorization: Bearer <expected>`; None if it does.

    The scheme name is case-insensitive (RFC 7235); the token is compared in constant time."""
    given = [v for k, v in (metadata or ()) if k == "authorization"]
    if not given:
        return "missing bearer token"
    if len(given) > 1:
        return f"expected one authorization header, got {len(given)}"
    value = given[0].encode() if isinstance(given[0], str) else bytes(given[0])
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return "expected the Bearer authorization scheme"
    if not hmac.compare_digest(token.strip(), expected):
        return "wrong bearer token"
    return None


def _deny(refuse: Callable[[str, str], None], method: str, message: str):
    async def abort(request, context):
        refuse(context.peer() or "", method)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
    return abort


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` before any handler runs.

    `on_refusal(peer, method, message)` is told of each refusal (the refusal trace, metrics)."""

    def __init__(self, token: str, on_refusal: Callable[[str, str, str], None] = lambda *_: None):
        self._expected = token.encode()
        self._on_refusal = on_refusal

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method in UNAUTHENTICATED_METHODS:
            return await continuation(handler_call_details)
        problem = bearer_problem(handler_call_details.invocation_metadata, self._expected)
        handler = await continuation(handler_call_details)
        if problem is None:
            return handler
        deny = _deny(lambda peer, m: self._on_refusal(peer, m, problem), method, problem)
        # answer with the handler's own shape so streaming calls are refused too
        if handler is None or (not handler.request_streaming and not handler.response_streaming):
            return grpc.unary_unary_rpc_method_handler(deny)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        return grpc.unary_stream_rpc_method_handler(deny)


def refusal_reporter(trace, metrics) -> Callable[[str, str, str], None]:
    """on_refusal for TokenInterceptor: one trace line and one counted UNAUTHENTICATED call."""
    def report(peer: str, method: str, message: str) -> None:
        trace.record(grpc.StatusCode.UNAUTHENTICATED, peer, method, "", str(UnauthenticatedError(message)))
        metrics.observe(method.rsplit("/", 1)[-1], grpc.StatusCode.UNAUTHENTICATED.name, 0.0)
    return report


def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with `client_ca`, clients must present one (mTLS)."""
    pair = (read_pem(key, "TLS key"), read_pem(cert, "TLS certificate"))
    ca = read_pem(client_ca, "client CA") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)
