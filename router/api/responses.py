"""A whole JSON body as a plain ASGI app: what the chat endpoint returns when not streaming."""

from __future__ import annotations

import asyncio
import logging

from litestar.types import Receive, Scope, Send

from router.api.protocol import ABORT

log = logging.getLogger(__name__)


class JSONBody:
    """Sent within ``write_timeout_s``: a client that will not take the answer is cut off."""

    __slots__ = ("_body", "_headers", "_status", "_write_s")

    def __init__(
        self, body: bytes, headers: list[tuple[bytes, bytes]], write_timeout_s: float = 30.0, status: int = 200
    ) -> None:
        self._write_s = write_timeout_s
        self._body = body
        self._status = status
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with asyncio.timeout(self._write_s):
                await send({"type": "http.response.start", "status": self._status, "headers": self._headers})
                await send({"type": "http.response.body", "body": self._body, "more_body": False})
        except TimeoutError:
            log.warning("client-stalled: the client took no answer for %gs; closed", self._write_s)
            abort_client(scope)


def abort_client(scope: Scope) -> None:
    """Close the client's connection now, through the server's hook (``router.api.protocol``)
    when it has one; without it the server closes a response left unfinished."""
    hook = (scope.get("extensions") or {}).get(ABORT)
    abort = hook.get("abort") if hook is not None else None
    if callable(abort):
        abort()


# Answer to a request whose client has gone: nobody will read it (499, as nginx logs it).
CLIENT_GONE = JSONBody(b"{}", [], status=499)
