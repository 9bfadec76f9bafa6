"""``url`` banks: a CSV or JSON-lines list over HTTPS, fetched with ETag / If-Modified-Since.

Only hosts in ``banks.allowed_hosts`` are contacted (every redirect hop is checked), through the configured
proxy (:class:`service.net.Proxies`); the body is capped at ``banks.max_bytes``; the auth header's value
comes from ``{env: ...}`` / ``{file: ...}``.  A 304 answer keeps the bank as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from service.config.matching import BankSection, BanksSection
from service.config.validate import host_allowed
from service.errors import ExchangeError
from service.net import Proxies, describe, describe_status

MAX_REDIRECTS = 5


@dataclass(frozen=True)
class UrlListResult:
    """``body`` None: not modified (304).  ``validators`` is the checkpoint to send next time."""

    body: bytes | None
    validators: dict[str, str]


async def fetch_list(bank: BankSection, banks: BanksSection, *, validators: Any, user_agent: str,
                     proxies: Proxies) -> UrlListResult:
    """GET the bank's list; conditional on ``validators`` (``{"etag": ..., "last_modified": ...}``)."""
    headers = {"User-Agent": user_agent or "mediamoderation"}
    old = validators if isinstance(validators, dict) else {}
    if old.get("etag"):
        headers["If-None-Match"] = str(old["etag"])
    if old.get("last_modified"):
        headers["If-Modified-Since"] = str(old["last_modified"])
    auth = bank.auth.get() if bank.auth.configured else None
    if bank.auth.configured and not auth:
        raise ExchangeError(f"bank {bank.name}: auth: {bank.auth.problem()}", reason="auth")
    if auth:
        headers[bank.auth_header] = auth
    timeout = aiohttp.ClientTimeout(total=banks.timeout)
    url = bank.url
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(MAX_REDIRECTS + 1):
            if not host_allowed(banks.allowed_hosts, url):
                raise ExchangeError(f"bank {bank.name}: host of {url} is not in banks.allowed_hosts",
                                    reason="refused")
            proxy = proxies.for_url(url)
            try:
                async with session.get(URL(url, encoded=True), headers=headers, allow_redirects=False,
                                       proxy=proxy.address if proxy else None) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                        url = str(resp.url.join(URL(resp.headers["Location"])))
                        headers.pop(bank.auth_header, None)  # never send the credential to another URL
                        continue
                    if resp.status == 304:
                        return UrlListResult(None, old)
                    if resp.status != 200:
                        body = await resp.content.read(2000)
                        reason = "auth" if resp.status in (401, 403) else "http"
                        raise ExchangeError(f"bank {bank.name}: {describe_status(resp.status, url, body)}",
                                            reason=reason)
                    data = await _read_capped(resp, banks.max_bytes, bank.name)
                    new = {k: v for k, v in (("etag", resp.headers.get("ETag")),
                                             ("last_modified", resp.headers.get("Last-Modified"))) if v}
                    return UrlListResult(data, new)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ExchangeError(f"bank {bank.name}: {describe(exc, url)}", reason="network") from exc
    raise ExchangeError(f"bank {bank.name}: more than {MAX_REDIRECTS} redirects from {bank.url}", reason="http")


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, name: str) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise ExchangeError(f"bank {name}: list is {resp.content_length} bytes, above banks.max_bytes ({limit})",
                            reason="data")
    chunks: list[bytes] = []
    seen = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        seen += len(chunk)
        if seen > limit:
            raise ExchangeError(f"bank {name}: list is larger than banks.max_bytes ({limit})", reason="data")
        chunks.append(chunk)
    return b"".join(chunks)
