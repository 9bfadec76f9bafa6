"""A small HTTP forward proxy on loopback, as corporate egress proxies (Squid and the like) behave.

* ``CONNECT host:port`` opens a tunnel (what clients do for https:// URLs);
* ``GET http://host:port/path`` (absolute-form, what clients do for http:// URLs) is forwarded with
  ``Connection: close`` and the answer streamed back (an SSE stream included).

``hosts`` maps names only the proxy can resolve (``*.invalid``) to loopback addresses: a request for such a
name that arrives at its server proves it went through the proxy.  Names it cannot reach get 502, as a real
proxy answers when its own DNS lookup or connection fails.  With ``credentials`` set, requests without the
matching ``Proxy-Authorization`` get 407.  Every request is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class ProxyRecord:
    method: str
    target: str  # "host:port" for CONNECT, the absolute URL otherwise
    authorization: str | None  # the Proxy-Authorization header as received


class ForwardProxy:
    def __init__(self, hosts: Mapping[str, tuple[str, int]] | None = None, *,
                 credentials: tuple[str, str] | None = None) -> None:
        self.hosts = dict(hosts or {})
        self.records: list[ProxyRecord] = []
        self._expected = (f"Basic {base64.b64encode(':'.join(credentials).encode()).decode()}"
                          if credentials else None)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._recorded = asyncio.Condition()

    async def start(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def targets(self) -> list[str]:
        return [r.target for r in self.records]

    async def wait_for_records(self, count: int, within: float = 10.0) -> list[ProxyRecord]:
        async with asyncio.timeout(within), self._recorded:
            await self._recorded.wait_for(lambda: len(self.records) >= count)
        return self.records

    # ------------------------------------------------------------------ serving

    def _resolve(self, host: str, port: int) -> tuple[str, int]:
        return self.hosts.get(host.lower(), (host, port))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines if line)]
        auth = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)
        async with self._recorded:
            self.records.append(ProxyRecord(method, target, auth))
            self._recorded.notify_all()
        if self._expected is not None and auth != self._expected:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = await self._open(writer, *self._resolve(host.strip("[]"), int(port)))
            if upstream is None:
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            parts = urlsplit(target)
            upstream = await self._open(writer, *self._resolve(parts.hostname or "", parts.port or 80))
            if upstream is None:
                return
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            kept = [(k, v) for k, v in headers
                    if k.lower() not in ("connection", "proxy-connection", "proxy-authorization", "keep-alive")]
            out = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in kept), "Connection: close", "", ""]
            upstream[1].write("\r\n".join(out).encode("latin-1"))
        await self._pipe(reader, writer, *upstream)

    async def _open(self, writer: asyncio.StreamWriter, host: str,
                    port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError) as exc:
            body = f"proxy could not reach {host}:{port}: {exc}".encode()
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
            return None

    async def _pipe(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter,
                    u_reader: asyncio.StreamReader, u_writer: asyncio.StreamWriter) -> None:
        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()

        up = asyncio.create_task(copy(c_reader, u_writer))
        down = asyncio.create_task(copy(u_reader, c_writer))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for task in (up, down):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            u_writer.close()
            with contextlib.suppress(Exception):
                await u_writer.wait_closed()
