"""A whole JSON body as a plain ASGI app: what the chat endpoint returns when not streaming."""

from __future__ import annotations

from litestar.types import Receive, Scope, Send

from router.api.protocol import ABORT
from router.gateway.outcome import REQUEST_ID_KEY, Outcomes


class JSONBody:
    """A whole answer. A client that will not take it is cut off by the server protocol after
    ``server.write_timeout_s`` (``router.api.protocol``): nothing to time here."""

    __slots__ = ("_body", "_headers", "status")

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]], status: int = 200) -> None:
        self._body = body
        self.status = status
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body, "more_body": False})


def abort_client(scope: Scope) -> None:
    """Close the client's connection now, through the server's hook (``router.api.protocol``)
    when it has one; without it the server closes a response left unfinished."""
    hook = (scope.get("extensions") or {}).get(ABORT)
    abort = hook.get("abort") if hook is not None else None
    if callable(abort):
        abort()


# Answer to a request whose client has gone: nobody will read it (499, as nginx logs it).
CLIENT_GONE = JSONBody(b"{}", [], status=499)


def request_id_of(scope: Scope) -> str:
    """The request's id: the one the chat handler settled on, or the client's, or a new one."""
    state = scope.get("state") or {}
    known = state.get(REQUEST_ID_KEY)
    if isinstance(known, str):
        return known
    outcomes: Outcomes = scope["app"].state.outcomes
    return outcomes.ids.of(scope.get("headers", ()))
