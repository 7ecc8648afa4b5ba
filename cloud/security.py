"""Bearer-token check and TLS credentials for the cloud daemon."""
from __future__ import annotations

import hmac

import grpc

from common.credentials import read_pem

# Health checks stay open so that orchestrators can probe a token-protected server;
# they reveal only SERVING / NOT_SERVING.
UNAUTHENTICATED_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def _deny(message: str):
    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
    return abort


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` before any handler runs."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method in UNAUTHENTICATED_METHODS:
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if isinstance(given, str):
            given = given.encode()
        if hmac.compare_digest(given, self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        message = "missing bearer token" if not given else "wrong bearer token"
        # answer with the handler's own shape so streaming calls are refused too
        if handler is None or (not handler.request_streaming and not handler.response_streaming):
            return grpc.unary_unary_rpc_method_handler(_deny(message))
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_deny(message))
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(_deny(message))
        return grpc.unary_stream_rpc_method_handler(_deny(message))


def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with `client_ca`, clients must present one (mTLS)."""
    pair = (read_pem(key, "TLS key"), read_pem(cert, "TLS certificate"))
    ca = read_pem(client_ca, "client CA") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)
