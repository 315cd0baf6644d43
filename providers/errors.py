"""The one exception tree. Class attributes carry policy; ``router.errors`` maps it to HTTP.

::

    SwitchboardError                  status, OpenAI type/code, retryable, trips_breaker
    ├── UpstreamError                 the provider failed or refused (raised by adapters and the gateway)
    │   ├── UpstreamRejected          the provider says the *client's* request is bad (400/404/413/422…)
    │   ├── UpstreamRateLimited       429
    │   ├── UpstreamAuthFailed        401/403: the provider key is wrong; never blamed on the client
    │   ├── UpstreamServerError       5xx, 408, 409, 529
    │   ├── UpstreamConnectError      connection refused, reset, DNS…
    │   ├── UpstreamTimeout           no answer in time
    │   └── UpstreamProtocolError     the answer is not what the protocol promises
    ├── UntranslatableRequest         the request has no equivalent in the target's API (400)
    └── (client-side errors, in router.errors)
"""

from __future__ import annotations

from typing import ClassVar


class SwitchboardError(Exception):
    """Base of every error a client can see. Subclasses set the policy as class attributes;
    an instance may narrow ``status``/``code``/``param`` (an upstream's 404 stays a 404)."""

    status: int = 500
    error_type: ClassVar[str] = "server_error"
    code: str | None = None
    retryable: ClassVar[bool] = False
    trips_breaker: ClassVar[bool] = False
    retry_after: float | None = None  # seconds the client should wait, sent as `Retry-After`

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class UpstreamError(SwitchboardError):
    status = 502
    retryable = True
    trips_breaker = True

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, status=status)
        self.upstream_status = upstream_status
        if retry_after is not None:
            self.retry_after = retry_after


class UpstreamRejected(UpstreamError):
    """The provider refused the request itself; it goes back to the client with its status."""

    error_type = "invalid_request_error"
    retryable = False
    trips_breaker = False


class UpstreamRateLimited(UpstreamError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamAuthFailed(UpstreamError):
    """A provider rejected Switchboard's key: a broken target, not the client's fault."""

    retryable = False


class UpstreamServerError(UpstreamError):
    pass


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "timeout"
    retryable = False  # a timeout moves on to the next target rather than waiting again


class UpstreamProtocolError(UpstreamError):
    retryable = False


class UntranslatableRequest(SwitchboardError):
    """The client's request cannot be expressed in the target's API (an audio part for Anthropic…)."""

    status = 400
    error_type = "invalid_request_error"
    code = "unsupported_for_target"
