"""The HTTP transport under the MediaWiki client, and an in-memory one for tests.

A transport sends one request and returns one answer: it never follows redirects (the client does,
checking every hop against the allowlist), and it stops reading a body beyond ``limit`` bytes.  As
httpx's transports, it is one method plus ``aclose``; :class:`MockTransport` answers from a function.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from service.errors import WikiBadUrl, WikiResponseTooLarge, WikiUnreachable
from service.net import Proxies, describe

_CHUNK = 65536


class Sink(Protocol):
    """Where a streamed body goes instead of memory (e.g. a temporary file, hashed on the way)."""

    def reset(self) -> None:
        """Forget what was written (called before each attempt: a retry starts the body again)."""
        ...

    def write(self, chunk: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Request:
    method: str  # "GET" or "POST"
    url: URL
    data: Mapping[str, str] | None = None  # form fields of a POST
    headers: Mapping[str, str] = field(default_factory=dict)
    sink: Sink | None = None  # a 2xx body is written here chunk by chunk (``Response.body`` stays empty)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDict[str]
    body: bytes  # read for 2xx answers only
    url: URL

    @property
    def redirect(self) -> bool:
        return self.status in (301, 302, 303, 307, 308) and "Location" in self.headers


class Transport(Protocol):
    async def handle(self, request: Request, *, limit: int) -> Response:
        """Send ``request``; raise WikiResponseTooLarge beyond ``limit`` body bytes, WikiUnreachable, WikiBadUrl."""
        ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """aiohttp underneath: one session, its cookies kept (for logins) or dropped.

    Each request goes through the proxy ``proxies`` names for its URL (default: HTTPS_PROXY / HTTP_PROXY
    and NO_PROXY from the environment); a failed connection is raised as WikiUnreachable with a one-line
    summary (:func:`service.net.describe`).
    """

    def __init__(
        self,
        *,
        user_agent: str,
        timeout: float,
        cookies: bool = False,
        session: aiohttp.ClientSession | None = None,
        proxies: Proxies | None = None,
    ) -> None:
        self._user_agent = user_agent
        self._proxies = proxies if proxies is not None else Proxies.from_environment()
        self._timeout = timeout
        self._cookies = cookies
        self._session = session
        self._owns_session = session is None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self._user_agent},
                # The client bounds each whole attempt; these bound each socket step.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._timeout),
                # unsafe: keep cookies for IP-address hosts too (the test wikis run on 127.0.0.1)
                cookie_jar=aiohttp.CookieJar(unsafe=True) if self._cookies else aiohttp.DummyCookieJar(),
            )
            self._owns_session = True
        return self._session

    async def handle(self, request: Request, *, limit: int) -> Response:
        session = self._open()
        headers = {"User-Agent": self._user_agent, **request.headers}
        proxy = self._proxies.for_url(str(request.url))
        try:
            async with session.request(request.method, request.url, data=request.data, headers=headers,
                                       allow_redirects=False, proxy=proxy.url if proxy else None) as resp:
                body = await _read_capped(resp, limit, request.sink) if 200 <= resp.status < 300 else b""
                return Response(resp.status, CIMultiDict(resp.headers), body, resp.url)
        except aiohttp.InvalidURL as exc:
            raise WikiBadUrl(f"invalid URL {request.url}") from exc
        except aiohttp.ClientError as exc:
            raise WikiUnreachable(describe(exc, request.url, proxy=proxy).summary) from exc

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, sink: Sink | None = None) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise WikiResponseTooLarge(f"{resp.url}: {resp.content_length} bytes declared (> {limit})",
                                   seen=resp.content_length)
    buf = bytearray()
    seen = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise WikiResponseTooLarge(f"{resp.url}: more than {limit} bytes", seen=seen)
        if sink is not None:
            sink.write(chunk)
        else:
            buf += chunk
    return bytes(buf)


Handler = Callable[[Request], "Response | Awaitable[Response]"]


def response(status: int = 200, body: bytes | str = b"", *, url: URL | str = "http://mock.invalid/",
             headers: Mapping[str, str] | None = None, json: object = None) -> Response:
    """An answer for :class:`MockTransport` handlers; ``json=`` serialises an object as the body."""
    import json as _json

    if json is not None:
        body = _json.dumps(json)
    data = body.encode() if isinstance(body, str) else body
    return Response(status, CIMultiDict(headers or {}), data, URL(url) if isinstance(url, str) else url)


class MockTransport:
    """Answers every request with ``handler(request)`` (sync or async), in memory; records the requests.

    The byte cap applies as on the wire: a handler's body longer than ``limit`` raises
    WikiResponseTooLarge; a body is kept only for 2xx answers.  A handler may raise WikiUnreachable.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []
        self.closed = False

    async def handle(self, request: Request, *, limit: int) -> Response:
        self.requests.append(request)
        result = self._handler(request)
        resp = await result if inspect.isawaitable(result) else result
        assert isinstance(resp, Response)
        if not 200 <= resp.status < 300:
            return Response(resp.status, resp.headers, b"", request.url)
        if len(resp.body) > limit:
            raise WikiResponseTooLarge(f"{request.url}: more than {limit} bytes", seen=len(resp.body))
        if request.sink is not None:
            for start in range(0, len(resp.body), _CHUNK):
                request.sink.write(resp.body[start:start + _CHUNK])
            return Response(resp.status, resp.headers, b"", request.url)
        return Response(resp.status, resp.headers, resp.body, request.url)

    async def aclose(self) -> None:
        self.closed = True
