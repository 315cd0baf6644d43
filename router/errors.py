"""Client-facing errors, and the one mapping from any exception to OpenAI's error JSON.

The tree's root and its upstream branch live in ``providers.errors`` (adapters raise them);
this module adds what the proxy itself refuses, and turns all of it into a status and a body.
"""

from __future__ import annotations

from typing import Final

import msgspec

from providers.errors import SwitchboardError, UpstreamError
from providers.schema import ErrorBody, ErrorEnvelope

__all__ = [
    "InvalidRequest",
    "ModelNotFound",
    "NoTargetAvailable",
    "PayloadTooLarge",
    "RouteNotFound",
    "SwitchboardError",
    "UpstreamError",
    "encode_error",
    "error_body",
]

_encode = msgspec.json.Encoder().encode
INTERNAL_ERROR: Final = "Switchboard hit an internal error; the details are in its log."


class ClientError(SwitchboardError):
    status = 400
    error_type = "invalid_request_error"


class InvalidRequest(ClientError):
    pass


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class RouteNotFound(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class NoTargetAvailable(SwitchboardError):
    """Every target of the route is unavailable (no key, no adapter yet)."""

    status = 503
    error_type = "server_error"
    code = "no_target_available"


def error_body(exc: SwitchboardError) -> ErrorEnvelope:
    return ErrorEnvelope(ErrorBody(message=exc.message, type=exc.error_type, param=exc.param, code=exc.code))


def encode_error(exc: SwitchboardError) -> bytes:
    return _encode(error_body(exc))


def internal_error() -> SwitchboardError:
    return SwitchboardError(INTERNAL_ERROR, code="internal_error")
