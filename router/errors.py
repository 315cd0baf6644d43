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
    "AllTargetsFailed",
    "AuthenticationFailed",
    "Forbidden",
    "HeadersTooLarge",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotAllowed",
    "ModelNotFound",
    "NoTargetAvailable",
    "Overloaded",
    "PayloadTooLarge",
    "QuotaExceeded",
    "Refused",
    "RequestTimeout",
    "RouteNotFound",
    "StateRefused",
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


class HeadersTooLarge(ClientError):
    status = 431
    code = "request_header_fields_too_large"


class RequestTimeout(ClientError):
    """The client sent its request too slowly."""

    status = 408
    code = "request_timeout"


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class RouteNotFound(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class AuthenticationFailed(ClientError):
    """No key, or one that is unknown, revoked, disabled or expired: one answer for all, so that
    it tells nothing about which."""

    status = 401
    code = "invalid_api_key"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"


class ModelNotAllowed(ClientError):
    status = 403
    code = "model_not_allowed"


class Refused(ClientError):
    """A refusal that carries headers of its own (rate-limit state, retry advice)."""

    status = 429
    error_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retry_after: float | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.headers = headers


class QuotaExceeded(Refused):
    """A key or team over its budget: OpenAI's ``insufficient_quota``, not worth retrying soon."""

    error_type = "insufficient_quota"


class StateRefused(SwitchboardError):
    """``state.on_state_error: closed`` and the state backend away: the request is not admitted."""

    status = 503
    code = "state_unavailable"
    retry_after = 1.0


class NoTargetAvailable(SwitchboardError):
    """No target of the route could be tried: unavailable providers, open breakers, full targets."""

    status = 503
    error_type = "server_error"
    code = "no_target_available"


class AllTargetsFailed(SwitchboardError):
    """Every target that was tried failed. 504 when the last failure was a timeout, else 502;
    never the upstreams' own 401 or 429, which are about Switchboard's keys and quotas."""

    status = 502
    error_type = "server_error"
    code = "upstream_failed"

    def __init__(self, message: str, *, timed_out: bool, retry_after: float | None, calls: int) -> None:
        super().__init__(message, status=504 if timed_out else 502, code="timeout" if timed_out else None)
        self.retry_after = retry_after
        self.calls = calls


class ShuttingDown(SwitchboardError):
    """The process is draining for a shutdown (SIGTERM): a new request is refused so that the
    client's retry lands on another replica; a request still running at ``server.drain_s`` ends
    with this as its error (an error event, for a stream already under way)."""

    status = 503
    code = "server_shutting_down"
    retry_after = 1.0


class Overloaded(SwitchboardError):
    """The proxy is at ``resilience.max_concurrent``: come back shortly."""

    status = 429
    error_type = "rate_limit_error"
    code = "gateway_overloaded"
    retry_after = 1.0


def error_body(exc: SwitchboardError, request_id: str | None = None) -> ErrorEnvelope:
    """OpenAI's four keys; the request id goes in the message, as OpenAI's own errors put theirs."""
    message = exc.message if request_id is None else f"{exc.message} (request id {request_id})"
    return ErrorEnvelope(ErrorBody(message=message, type=exc.error_type, param=exc.param, code=exc.code))


def encode_error(exc: SwitchboardError, request_id: str | None = None) -> bytes:
    return _encode(error_body(exc, request_id))


def internal_error() -> SwitchboardError:
    return SwitchboardError(INTERNAL_ERROR, code="internal_error")
