"""The PhotoDNA key probe: while the key is refused, one request every ``photodna.auth_retry_interval``.

After a 401/403 (or with no key at all) the client sends nothing for uploads or rescans.  Something
must still find out when the key works again, however quiet the stream is: :class:`AuthProbe` sends a
tiny generated image (160 x 160 px, a few hundred bytes of JPEG) as soon as a probe is due, through the
same path as every request (circuit breaker, monthly budget, rate limiter at background priority), and
never two at once; an upload or a rescan that arrives when a probe is due may serve as the probe
instead, which moves the next one an interval later just the same.  Any answer other than 401/403
proves the key: the client reports it accepted (``photodna_unauthorized`` 0, ``/healthz/pipeline`` OK)
and the rescanner retries the failed scans at once.

So the key is known to work again at most ``auth_retry_interval`` (plus one round trip) after it was
fixed, and a refused key costs at most one request per interval.

:meth:`AuthProbe.run` is a long-lived task taking a stop event: the service runs it under its supervisor
(task ``photodna-probe``); a :class:`~service.matchers.photodna.PhotoDnaMatcher` used on its own starts
and stops it with its own ``start()`` / ``aclose()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
from typing import TYPE_CHECKING

from PIL import Image

from service.errors import ServiceError, Unscannable
from service.matchers.photodna_api import MIN_SIDE, PhotoDnaUnauthorized

if TYPE_CHECKING:
    from service.matchers.photodna_client import PhotoDnaClient

log = logging.getLogger(__name__)


@functools.cache
def probe_jpeg() -> bytes:
    """The probe's image: a plain grey square of the smallest size PhotoDNA takes, as a baseline JPEG."""
    out = io.BytesIO()
    Image.new("RGB", (MIN_SIDE, MIN_SIDE), (128, 128, 128)).save(out, "JPEG", quality=75)
    return out.getvalue()


class AuthProbe:
    """Sends the probe whenever one is due (see the module docstring)."""

    def __init__(self, client: PhotoDnaClient) -> None:
        self.client = client

    async def run(self, stop: asyncio.Event) -> None:
        """Probe while refused until ``stop`` is set; returns then.  One probe's failure never ends it."""
        changed = self.client.auth_changed
        while not stop.is_set():
            changed.clear()  # before reading the state: a change from now on wakes the wait below
            due_in = self.client.probe_due_in()
            if due_in is not None and due_in <= 0:
                await self.probe_once()
                continue
            await _first_of(stop, changed, timeout=due_in)

    async def probe_once(self) -> None:
        """Send the probe image now (if a probe is still due when the client looks); log what came of it."""
        try:
            await self.client.check(probe_jpeg(), "image/jpeg", background=True)
        except PhotoDnaUnauthorized as exc:
            log.info("PhotoDNA key probe: still refused", extra={"problem": str(exc)})
        except (ServiceError, Unscannable) as exc:  # an answer, or no request at all (budget, circuit)
            log.info("PhotoDNA key probe ended without a verdict", extra={"error": str(exc)})
        except Exception:  # a bug must not end probing for good: the next one is due an interval later
            log.exception("PhotoDNA key probe crashed")


async def _first_of(stop: asyncio.Event, changed: asyncio.Event, *, timeout: float | None) -> None:
    """Wait until ``stop`` or ``changed`` is set, or ``timeout`` seconds pass (None: no limit)."""
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        for waiter in waiters:
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
