"""A whole JSON body as a plain ASGI app: what the chat endpoint returns when not streaming."""

from __future__ import annotations

from litestar.types import Receive, Scope, Send


class JSONBody:
    __slots__ = ("_body", "_headers", "_status")

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]], status: int = 200) -> None:
        self._body = body
        self._status = status
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self._status, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body, "more_body": False})


# Answer to a request whose client has gone: nobody will read it (499, as nginx logs it).
CLIENT_GONE = JSONBody(b"{}", [], status=499)
