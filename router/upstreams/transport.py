"""How Switchboard speaks HTTP to providers: httpx's API over an aiohttp connection pool.

httpx is the client API the rest of the code (and respx in tests) sees; its default transport
is several times too slow for the hot path (see README, Performance). The gateway therefore sends
``httpx.Request`` objects straight to ``handle_async_request`` of this transport, skipping
``AsyncClient.send``. aiohttp's exceptions are mapped to httpx's here, in one place, so the
gateway handles one family whatever the transport (this one, the mock, a test's MockTransport).
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Final

import aiohttp
import httpx

from providers.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

_DROPPED_HEADERS: Final = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})


@contextlib.contextmanager
def httpx_errors(request: httpx.Request) -> Iterator[None]:
    """Translate aiohttp's exceptions into httpx's (most specific first)."""
    try:
        yield
    except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
        kind = httpx.ConnectTimeout if isinstance(exc, aiohttp.ConnectionTimeoutError) else httpx.ConnectError
        raise kind(_describe(exc), request=request) from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise httpx.ReadTimeout(_describe(exc), request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        raise httpx.RemoteProtocolError(_describe(exc), request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(_describe(exc), request=request) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise httpx.ReadError(_describe(exc), request=request) from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# What Switchboard asks for and can undo; gzip bombs are undone a slice at a time (see below).
ACCEPT_ENCODING: Final = "gzip, deflate"
_SLICE: Final = 64 * 1024  # the most one decompression step may produce


class _Inflate:
    """Undoes gzip or deflate a bounded slice at a time: a 200 KB gzip body that inflates to
    200 MB never exists in memory at once, so the reader can stop at its size cap."""

    __slots__ = ("_raw_fallback", "_zlib")

    def __init__(self, encoding: str) -> None:
        # gzip: 16 + MAX_WBITS. deflate: zlib-wrapped as the RFC says (32 + MAX_WBITS detects the
        # header), or raw deflate, which some servers send instead: tried if the first data fails.
        gzip = encoding in ("gzip", "x-gzip")
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else 32 + zlib.MAX_WBITS)
        self._raw_fallback = not gzip

    def slices(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._zlib.decompress(data, _SLICE)
        except zlib.error:
            if not self._raw_fallback:
                raise
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(data, _SLICE)
        self._raw_fallback = False
        while out:
            yield out
            tail = self._zlib.unconsumed_tail
            if not tail:
                return
            out = self._zlib.decompress(tail, _SLICE)

    def rest(self) -> bytes:
        return self._zlib.flush()


class _ResponseStream(httpx.AsyncByteStream):
    __slots__ = ("_encoding", "_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request, encoding: str) -> None:
        self._response = response
        self._request = request
        self._encoding = encoding

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with httpx_errors(self._request):
            if not self._encoding:
                async for chunk in self._response.content.iter_any():
                    yield chunk
                return
            inflate = _Inflate(self._encoding)
            try:
                async for chunk in self._response.content.iter_any():
                    for piece in inflate.slices(chunk):
                        yield piece
                if rest := inflate.rest():
                    yield rest
            except zlib.error as exc:
                raise httpx.DecodingError(f"invalid {self._encoding} body", request=self._request) from exc

    async def aclose(self) -> None:
        # A fully read body returns its connection to the pool; a partly read one (the client
        # went away, a timeout) must close it, or the upstream would go on generating.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One pooled connection set per provider, opened lazily inside the running loop."""

    def __init__(self, *, max_connections: int = 1024, connect_timeout_s: float = 5.0) -> None:
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,  # undone in bounded slices by _ResponseStream
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        headers = request.headers.multi_items()
        if "accept-encoding" not in request.headers:
            headers.append(("accept-encoding", ACCEPT_ENCODING))
        with httpx_errors(request):
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=request.content or None,
                allow_redirects=False,
            )
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding in ("identity", ""):
            encoding = ""
        elif encoding not in ("gzip", "x-gzip", "deflate"):
            response.close()
            raise httpx.DecodingError(f"unsupported content-encoding {encoding!r}", request=request)
        return httpx.Response(
            status_code=response.status,
            headers=[(k, v) for k, v in response.raw_headers if k.lower() not in _DROPPED_HEADERS],
            stream=_ResponseStream(response, request, encoding),
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            await asyncio.sleep(0)  # let the connector's transports finish closing


def upstream_failure(exc: httpx.HTTPError, provider: str) -> UpstreamError:
    """What a transport failure means for the client. The message names the provider but never
    the exception text, which may carry an internal host name."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"provider '{provider}' timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError | httpx.UnsupportedProtocol):
        return UpstreamConnectError(f"could not connect to provider '{provider}'")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return UpstreamProtocolError(f"provider '{provider}' broke the HTTP protocol or closed the connection")
    return UpstreamConnectError(f"connection to provider '{provider}' failed ({type(exc).__name__})")
