"""Run one long-lived service (``run``, ``replay``, ``backfill``) until it ends or a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

from service.cli.exits import EXIT_CONFIG, EXIT_OK, EXIT_UPSTREAM
from service.errors import BankError, ConfigError, ServiceError

log = logging.getLogger("service.cli")


class Runnable(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...


def serve(make: Callable[[], Runnable], on_started: Callable[[Any], None] | None = None) -> int:
    """Run one service until it ends or SIGTERM/SIGINT stop it (a second signal exits at once).

    ``on_started(service)`` may start tasks (a progress reporter) under the service's supervisor.
    Exit codes: 0 ended normally, 2 invalid config found while starting (a port in use, a bank file),
    4 stopped on an error (an upstream that kept failing).
    """

    async def main() -> None:
        service = make()
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen > 1:
                log.warning("second signal: exiting at once", extra={"signal": signum})
                os._exit(128 + signum)
            service.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        if on_started is not None:
            on_started(service)
        await service.run()

    try:
        asyncio.run(main())
    except ConfigError as exc:  # found while starting, e.g. http.port in use
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BankError as exc:  # banks are parsed only as the service starts (check-config parses them too)
        print(f"error: banks.list: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ServiceError as exc:
        log.error("service stopped on an error", extra={"error": str(exc), "type": type(exc).__name__})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UPSTREAM
    return EXIT_OK
