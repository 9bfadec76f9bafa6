"""Which URLs the MediaWiki client may contact for a wiki: origins compared by scheme, host and port.

The wiki's API URL gives the first origin.  Each ``media_hosts`` entry adds one: a bare ``host`` (the
API's scheme and port), ``host:port`` (the API's scheme), or a URL such as ``https://upload.example``
(its own scheme, the default port when none is given).  A URL with credentials is never allowed.
The client checks every request and every redirect hop with :func:`is_allowed`.
"""

from __future__ import annotations

from yarl import URL

from service.config import WikiSection

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: URL) -> Origin | None:
    """(scheme, host, port) with the default port made explicit; None for anything but http(s)."""
    scheme = (url.scheme or "").lower()
    host = (url.host or "").lower().rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, url.port or _DEFAULT_PORTS[scheme]


def allowed_origins(wiki: WikiSection) -> frozenset[Origin]:
    """The API URL's origin, and each media host: ``host`` (the API's scheme and port), ``host:port`` or a URL."""
    api = origin(URL(wiki.api_url))
    if api is None:
        return frozenset()
    out = {api}
    for entry in wiki.media_hosts:
        entry = entry.strip().lower()
        if "://" in entry:
            parsed = origin(URL(entry))
        else:
            host, _, port = entry.partition(":")
            parsed = (api[0], host.rstrip("."), int(port) if port.isdigit() else api[2]) if host else None
        if parsed is not None:
            out.add(parsed)
    return frozenset(out)


def is_allowed(url: URL, origins: frozenset[Origin]) -> bool:
    return not url.user and origin(url) in origins
