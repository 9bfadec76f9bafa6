"""Binding the HTTP server to ``http.host``/``http.port``: a refused bind is a :class:`ConfigError` naming the
setting, not a traceback."""

from __future__ import annotations

import errno

from aiohttp import web

from service.config import HttpSection
from service.errors import ConfigError

_WHY = {
    errno.EADDRINUSE: ("http.port", "port {port} on {host} is already in use (another process listens there)"),
    errno.EACCES: ("http.port", "port {port} on {host} needs privileges this process does not have"),
    errno.EADDRNOTAVAIL: ("http.host", "{host} is not an address of this machine (port {port})"),
}


async def listen(runner: web.AppRunner, http: HttpSection) -> int:
    """Start serving ``runner`` on ``http.host``:``http.port``; return the port bound (``port: 0`` picks one)."""
    site = web.TCPSite(runner, http.host, http.port)
    try:
        await site.start()
    except OSError as exc:
        key, message = _WHY.get(exc.errno or 0, ("http.port", "cannot listen on {host} port {port}: {error}"))
        raise ConfigError([(key, message.format(host=http.host, port=http.port,
                                                error=exc.strerror or exc))]) from exc
    sockets = getattr(site._server, "sockets", None) or []
    port: int = sockets[0].getsockname()[1] if sockets else http.port
    return port
