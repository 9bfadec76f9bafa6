"""Outgoing HTTP: which proxy a request goes through, and one-line summaries of connection failures.

Proxies.  Every outgoing HTTP request (the MediaWiki client, the EventStreams reader, PhotoDNA) asks
:meth:`Proxies.for_url` which proxy to use.  ``network.proxy`` overrides the environment: a URL sends every
request through that proxy, ``direct`` ignores the environment; left empty, ``HTTPS_PROXY`` applies to
https:// URLs and ``HTTP_PROXY`` to http:// URLs (lower-case names win, as in curl and requests).
``network.no_proxy`` (or else ``NO_PROXY``) lists hosts reached directly: ``*``, host names (a name also
covers its subdomains; a leading dot is allowed), IP addresses, CIDR blocks, each optionally with ``:port``.
Kafka, SMTP and PostgreSQL are not HTTP: no proxy applies to them.

Errors.  :func:`describe` turns any exception of aiohttp, requests/urllib3 or the socket layer into a
:class:`NetProblem`: a kind (``dns``, ``refused``, ``tls``, ``timeout``, ``proxy``, ``reset``, ``http``,
``other``) and one line a person can act on, with a hint, instead of the library's raw text.
:func:`describe_status` does the same for an HTTP error answer, keeping only the first line of an HTML
error page's text.
"""

from __future__ import annotations

import errno
import html
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from service.config.core import NetworkSection

DIRECT = "direct"

# --------------------------------------------------------------------------- proxies


@dataclass(frozen=True, slots=True)
class Proxy:
    """One proxy.  ``url`` may carry credentials (from the environment): aiohttp and requests both send
    them as ``Proxy-Authorization``; messages show :attr:`address` only."""

    url: str

    @property
    def address(self) -> str:
        """The proxy's URL without credentials (for aiohttp's ``proxy=`` and for messages)."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, "", "", ""))

    def __str__(self) -> str:
        return self.address


def _normalise(value: str) -> str:
    value = value.strip()
    return value if "://" in value else f"http://{value}"


def proxy_problem(value: str) -> str | None:
    """Why ``value`` is not a usable proxy URL (``http://host:port``), or None."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return f"is not a URL: {value!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be 'direct' or a proxy URL such as http://proxy.example.org:3128, got {value!r}"
    if parts.path.strip("/") or parts.query or parts.fragment:
        return f"must be scheme://host[:port] with no path, got {value!r}"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (secrets stay out of the YAML): set HTTPS_PROXY / HTTP_PROXY instead"
    return None


class Proxies:
    """The proxy for each outgoing URL, from ``network.proxy`` / ``network.no_proxy`` and the environment."""

    def __init__(self, http: str | None = None, https: str | None = None, no_proxy: str = "") -> None:
        self._by_scheme = {"http": Proxy(_normalise(http)) if http else None,
                           "https": Proxy(_normalise(https)) if https else None}
        self._bypass = tuple(_bypass_entries(no_proxy))

    @classmethod
    def direct(cls) -> Proxies:
        return cls()

    @classmethod
    def from_settings(cls, proxy: str, no_proxy: tuple[str, ...], environ: Mapping[str, str]) -> Proxies:
        """``proxy``: '' (use the environment), 'direct', or a URL; ``no_proxy``: () uses ``NO_PROXY``."""

        def env(name: str) -> str:
            return (environ.get(name.lower()) or environ.get(name.upper()) or "").strip()

        bypass = ",".join(no_proxy) if no_proxy else env("no_proxy")
        if proxy == DIRECT:
            return cls(no_proxy=bypass)
        if proxy:
            return cls(proxy, proxy, bypass)
        return cls(env("http_proxy") or None, env("https_proxy") or None, bypass)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Proxies:
        """HTTPS_PROXY / HTTP_PROXY / NO_PROXY only (what a component built without configuration uses)."""
        return cls.from_settings("", (), os.environ if environ is None else environ)

    @classmethod
    def for_config(cls, network: NetworkSection, environ: Mapping[str, str] | None = None) -> Proxies:
        """The proxies ``network.proxy`` / ``network.no_proxy`` and the environment give."""
        return cls.from_settings(network.proxy, network.no_proxy, os.environ if environ is None else environ)

    def for_url(self, url: str) -> Proxy | None:
        """The proxy for ``url``, or None to connect directly."""
        if not self.configured:  # no proxy at all (the common case): nothing to parse
            return None
        parts = urlsplit(str(url))
        proxy = self._by_scheme.get(parts.scheme)
        if proxy is None or self.bypassed(parts.hostname or "", parts.port):
            return None
        return proxy

    def bypassed(self, host: str, port: int | None = None) -> bool:
        host = host.lower().strip("[]").rstrip(".")
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            address = None
        for entry, entry_port in self._bypass:
            if entry_port is not None and entry_port != port:
                continue
            if entry == "*":
                return True
            if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network):
                if address is not None and address.version == entry.version and address in entry:
                    return True
            elif host == entry or host.endswith("." + entry):
                return True
        return False

    @property
    def configured(self) -> bool:
        return any(p is not None for p in self._by_scheme.values())

    def __repr__(self) -> str:
        shown = {k: v.address if v else None for k, v in self._by_scheme.items()}
        return f"Proxies({shown}, no_proxy={len(self._bypass)} entries)"


_Entry = tuple[str | ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]


def _bypass_entries(value: str) -> Iterator[_Entry]:
    for raw in re.split(r"[,\s]+", value.strip()):
        item = raw.strip().lower()
        if not item:
            continue
        if item == "*":
            yield "*", None
            continue
        port: int | None = None
        if item.startswith("["):  # [::1]:8080
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        elif item.count(":") == 1:
            host, _, p = item.partition(":")
            port = int(p) if p.isdigit() else None
        else:
            host = item
        host = host.lstrip("*").lstrip(".").rstrip(".")
        try:
            yield ipaddress.ip_network(host, strict=False), port
        except ValueError:
            if host:
                yield host, port


# --------------------------------------------------------------------------- error summaries


@dataclass(frozen=True, slots=True)
class NetProblem:
    """What went wrong with one HTTP exchange: ``kind`` (a metric label) and one line for people."""

    kind: str  # dns / refused / tls / timeout / proxy / reset / http / other
    summary: str

    def __str__(self) -> str:
        return self.summary


_HINTS = {
    "dns": "check DNS and egress, or set HTTPS_PROXY / network.proxy if this network reaches the internet "
           "only through a proxy",
    "refused": "nothing listens there: check the URL's host and port, the firewall, or the proxy",
    "tls": "the TLS handshake failed: check that the URL is https:// to a TLS port, the CA certificates, "
           "or a TLS-intercepting proxy",
    "timeout": "check egress (NetworkPolicy, firewall) or set HTTPS_PROXY / network.proxy",
    "proxy": "check network.proxy / HTTPS_PROXY and that the proxy allows this host",
    "reset": "the connection was cut; it is retried",
}


_PROXY_TROUBLE = {"dns": "DNS lookup failed", "refused": "connection refused", "timeout": "no answer in time"}


def _host_of(url: object) -> str:
    if url is None:
        return ""
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return str(url)[:100]
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and the errors urllib3 and aiohttp keep inside theirs."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner: list[object] = [e.__cause__, e.__context__, getattr(e, "reason", None),
                               getattr(e, "os_error", None), getattr(e, "_os_error", None),
                               getattr(e, "certificate_error", None), *getattr(e, "args", ())]
        todo.extend(x for x in inner if isinstance(x, BaseException))


def _is(e: BaseException, *names: str) -> bool:
    return any(c.__name__ in names for c in type(e).__mro__)


def _kind(exc: BaseException, *, proxy: bool = True) -> str:
    chain = list(_chain(exc))
    text = " ".join(str(e) for e in chain).lower()
    if proxy and (any(_is(e, "ProxyError", "ClientProxyConnectionError", "ClientHttpProxyError") for e in chain)
                  or "tunnel connection failed" in text):
        return "proxy"
    if any(isinstance(e, socket.gaierror) or _is(e, "ClientConnectorDNSError", "NameResolutionError")
           for e in chain) or "name or service not known" in text or "failed to resolve" in text:
        return "dns"
    if any(isinstance(e, ssl.SSLError | ssl.CertificateError)
           or _is(e, "ClientSSLError", "SSLError", "ClientConnectorCertificateError") for e in chain):
        return "tls"
    if any(isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED
           for e in chain) or "connection refused" in text:
        return "refused"
    if any(isinstance(e, TimeoutError | socket.timeout)
           or _is(e, "Timeout", "ConnectTimeoutError", "ReadTimeoutError", "ServerTimeoutError")
           for e in chain):
        return "timeout"
    if any(isinstance(e, ConnectionError | EOFError)
           or _is(e, "ServerDisconnectedError", "RemoteDisconnected", "IncompleteRead", "ProtocolError",
                  "ChunkedEncodingError", "ClientPayloadError")
           for e in chain):
        return "reset"
    return "other"


def _first_line(text: str, limit: int = 160) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe(exc: BaseException, url: object = None, *, proxy: Proxy | None = None) -> NetProblem:
    """One line saying what happened to the request for ``url``, with a hint; ``exc`` from any HTTP stack."""
    kind = _kind(exc)
    host = _host_of(url) or "the server"
    via = f" through proxy {proxy.address}" if proxy is not None else ""
    if kind == "dns":
        what = f"DNS lookup of {host} failed"
    elif kind == "refused":
        what = f"connection to {host}{via} refused"
    elif kind == "tls":
        reason = next((r for e in _chain(exc) if isinstance(r := getattr(e, "reason", None), str)), None)
        what = f"TLS error talking to {host}{via}" + (f" ({reason.lower().replace('_', ' ')})" if reason else "")
    elif kind == "timeout":
        what = f"no answer from {host}{via} in time"
    elif kind == "proxy":
        name = f"proxy {proxy.address}" if proxy is not None else "the proxy"
        detail = _proxy_detail(exc)
        below = _kind(exc, proxy=False)
        if not detail and below in ("dns", "refused", "timeout"):  # the proxy itself is out of reach
            what = f"cannot connect to {name} ({_PROXY_TROUBLE[below]})"
        else:
            what = f"{name} failed to reach {host}" + (f" ({detail})" if detail else "")
    elif kind == "reset":
        what = f"connection to {host}{via} closed unexpectedly"
    else:
        root = list(_chain(exc))[-1]
        what = f"request to {host}{via} failed: {type(root).__name__}: {_first_line(str(root), 120)}"
    hint = _HINTS.get(kind)
    return NetProblem(kind, f"{what}: {hint}" if hint else what)


def _proxy_detail(exc: BaseException) -> str:
    """The proxy's own answer: ``HTTP 502 Bad Gateway`` (aiohttp keeps the status, urllib3 the status line)."""
    for e in _chain(exc):
        status = getattr(e, "status", None)
        if isinstance(status, int) and status >= 400:
            message = getattr(e, "message", "")
            return f"HTTP {status}" + (f" {message}" if isinstance(message, str) and message else "")
        match = re.search(r"tunnel connection failed: (\d{3}[^'\")]*)", str(e), re.I)
        if match:
            return f"HTTP {match.group(1).strip()}"
    return ""


_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]*>", re.I | re.S)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.I | re.S)


def page_text(body: bytes | str, limit: int = 160) -> str:
    """The first line of text of an answer body: an HTML page's title (or text) without its markup."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if "<" in text and ">" in text:
        title = _TITLE.search(text)
        if title and title.group(1).strip():
            return _first_line(html.unescape(_TAG.sub("", title.group(1))), limit)
        text = html.unescape(_TAG.sub("\n", text))
    return _first_line("".join(c if c.isprintable() or c == "\n" else " " for c in text), limit)


def describe_status(status: int, url: object, body: bytes | str = b"", *, hint: str | None = None) -> NetProblem:
    """One line for an HTTP error answer: the status and the first line of the page's text, never its HTML."""
    host = _host_of(url) or "the server"
    text = page_text(body)
    what = f"HTTP {status} from {host}" + (f": {text}" if text else "")
    return NetProblem("http", f"{what}: {hint}" if hint else what)
