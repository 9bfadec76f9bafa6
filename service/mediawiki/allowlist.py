"""Which URLs the MediaWiki client may contact for a wiki: origins compared by scheme, host and port.

The client checks every request and every redirect hop with :func:`origin_allowed`.
"""

from __future__ import annotations

from yarl import URL

from service.config import WikiSection

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_allowed(wiki: WikiSection, url: URL) -> bool:
    """Whether ``url`` may be fetched for ``wiki``: its scheme, host and port must be one of the wiki's.

    The API's own ``scheme://host:port``, and each of ``media_hosts`` (``host`` or ``host:port``) with the
    API's scheme; a missing port is the scheme's default (443, 80), so ``https://h`` and ``https://h:443``
    are the same origin and ``https://h:8443`` is another.  No user info, no other scheme.
    """
    api = URL(wiki.api_url)
    scheme = (url.scheme or "").lower()
    host = (url.host or "").lower().rstrip(".")
    if scheme != (api.scheme or "").lower() or not host or url.user is not None or url.password is not None:
        return False
    try:
        port = url.port
    except ValueError:
        return False
    allowed = {((api.host or "").lower().rstrip("."), api.port)}
    for entry in wiki.media_hosts:
        media = URL(f"{scheme}://{entry}")
        allowed.add(((media.host or "").lower().rstrip("."), media.port))
    return (host, port) in allowed


def origin(url: URL) -> Origin | None:
    """(scheme, host, port) with the default port made explicit; None for anything but http(s)."""
    scheme = (url.scheme or "").lower()
    host = (url.host or "").lower().rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    try:
        return scheme, host, url.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        return None
