"""A load balancer's idle time-out, on loopback: a TCP proxy that cuts a connection once no byte
has crossed it, either way, for ``idle_s`` (as AWS ALB, nginx and most proxies in front of a
gateway do, typically after 60 s); and a network that goes away: ``sever`` cuts every connection
open at that moment."""

from __future__ import annotations

import asyncio
import contextlib


class IdleCuttingProxy:
    def __init__(self, target_port: int, idle_s: float) -> None:
        self.target_port = target_port
        self.idle_s = idle_s
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._accepted = 0
        self._severed = 0  # connections accepted before the last ``sever`` are cut

    async def __aenter__(self) -> IdleCuttingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._closing = True  # each connection's watchdog closes it (a cancelled one would be logged)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def sever(self) -> None:
        """Cut every connection open now, as a network that goes away does."""
        self._severed = self._accepted

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        loop = asyncio.get_running_loop()
        self._accepted += 1
        number = self._accepted
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        last = [loop.time()]

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65_536):
                last[0] = loop.time()
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.ensure_future(pump(client_r, server_w)), asyncio.ensure_future(pump(server_r, client_w))]
        try:
            while not self._closing and number > self._severed and not any(p.done() for p in pumps):
                if loop.time() - last[0] > self.idle_s:
                    self.cuts += 1
                    break
                await asyncio.sleep(0.02)
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_w, server_w):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            self._tasks.discard(task)
