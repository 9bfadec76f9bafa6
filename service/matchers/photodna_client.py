"""PhotoDNA Cloud Service: the Match API client (the matcher using it is :mod:`service.matchers.photodna`).

The contract is in :mod:`service.matchers.photodna_api`.  What this client does on every answer:

=========================  =======================================================================
3000                       the result: IsMatch, every MatchFlag (Source, Violations, MatchDistance,
                           MatchId) and the TrackingId go into the matches
3206                       :class:`Unscannable` ``photodna-not-an-image``
3208 / 3209 / HTTP 413     re-encoded once (grown to >= 160 px, or shrunk) and sent again; then
                           :class:`Unscannable` ``photodna-image-size`` / ``photodna-request-size``
3002, other codes, 4xx     :class:`PhotoDnaError` ``photodna-invalid-request`` (logged with the TrackingId,
                           not retried as is)
3004, 429, 5xx, timeouts,  transient: retried ``retries`` times with jittered exponential backoff,
connection errors, bad     honouring ``Retry-After`` (which also pauses every other caller); then
JSON                       :class:`PhotoDnaError` ``photodna``
HTTP 401 / 403             :class:`PhotoDnaUnauthorized`; no further request is sent except one probe
                           every ``auth_retry_interval`` (with the key read again; sent by
                           :class:`~service.matchers.photodna_probe.AuthProbe` even with no traffic, never
                           two at once), ``/healthz/pipeline`` reports the reason and
                           ``photodna_unauthorized`` is 1 until a probe is accepted
=========================  =======================================================================

Every request first passes the circuit breaker, the shared rate limiter and the monthly budget
(:mod:`service.ratelimit`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.backoff import exponential_backoff, parse_retry_after
from service.config import PhotoDnaSection
from service.errors import Unscannable
from service.matchers.photodna_api import (
    CONTENT_TYPES,
    IMAGE_SIZE,
    NOT_AN_IMAGE,
    OK,
    REQUEST_SIZE,
    UNKNOWN_ERROR,
    BadAnswer,
    PhotoDnaError,
    PhotoDnaResult,
    PhotoDnaUnauthorized,
    parse_answer,
    refit_jpeg,
)
from service.metrics import Metrics
from service.net import Proxies, describe
from service.ratelimit import HALF_OPEN, OPEN, CircuitBreaker, MonthlyBudget, RateLimiter

log = logging.getLogger(__name__)

_MAX_ANSWER_BYTES = 1_000_000
_NO_ANSWER = ("timeout", "connection")  # transient reasons without an HTTP response


@dataclass(frozen=True, slots=True)
class _Answer:
    kind: str  # ok / unscannable / refit / invalid / unauthorized / transient
    reason: str = ""
    result: PhotoDnaResult | None = None
    retry_after: float | None = None
    detail: str = ""


@dataclass(slots=True)
class _ProbeSlot:
    taken: bool = False


class PhotoDnaClient:
    """Sends images to the Match endpoint; see the module docstring for what each answer leads to."""

    def __init__(
        self,
        cfg: PhotoDnaSection,
        *,
        user_agent: str,
        metrics: Metrics,
        limiter: RateLimiter,
        budget: MonthlyBudget,
        circuit: CircuitBreaker | None = None,
        session: aiohttp.ClientSession | None = None,
        on_recover: Callable[[], None] = lambda: None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        proxies: Proxies | None = None,
    ) -> None:
        self.cfg = cfg
        self._proxy = (proxies if proxies is not None else Proxies.from_environment()).for_url(cfg.url)
        self._ua = user_agent
        self._metrics = metrics
        self.limiter = limiter
        self.budget = budget
        self.circuit = circuit or CircuitBreaker(
            cfg.circuit.failures, cfg.circuit.open_seconds, cfg.circuit.max_open_seconds,
            on_change=metrics.photodna_circuit.set,
        )
        self._session = session
        self._owns_session = session is None
        self._on_recover = on_recover
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._auth_problem: str | None = None
        self._key_missing = False
        self._next_probe = 0.0
        self._probe_in_flight = False
        # Set whenever the key is refused or accepted again, or a probe ends: the probe task waits on it.
        self.auth_changed = asyncio.Event()
        metrics.photodna_budget_limit.set(cfg.monthly_budget)
        metrics.photodna_unauthorized.set(0)
        metrics.photodna_circuit.set(self.circuit.state)

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self._ua}, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.timeout, sock_read=self.cfg.timeout),
                proxy=self._proxy.url if self._proxy is not None else None,  # network.proxy / HTTPS_PROXY
            )
            self._owns_session = True
        await self.budget.load()
        if not self.cfg.key.get():
            self._unauthorized(f"no PhotoDNA key is available from {self.cfg.key!r}", key_missing=True)
            self._next_probe = 0.0  # the first call reads the key again

    async def aclose(self) -> None:
        await self.budget.close()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- state

    def ready_reason(self) -> str | None:
        if self._key_missing and self.cfg.key.get():  # the key appeared: no request needed to know that
            self._authorized()
        if self._auth_problem is not None:
            return f"PhotoDNA calls stopped: {self._auth_problem}"
        if self.budget.exhausted:
            return f"the monthly PhotoDNA budget of {self.budget.limit} requests is used up"
        return None

    @property
    def authorized(self) -> bool:
        return self._auth_problem is None

    def can_send(self) -> bool:
        """Would a call now send a request (rather than fail at once)?  No side effects."""
        if self._auth_problem is not None and (self._probe_in_flight or self._clock() < self._next_probe):
            return False
        if self.circuit.state == OPEN and self.circuit.retry_in() > 0:
            return False
        return not self.budget.exhausted

    def _unauthorized(self, problem: str, *, key_missing: bool = False) -> None:
        self._key_missing = key_missing
        if self._auth_problem is None:
            log.error("PhotoDNA refuses the key: calls stop until a probe succeeds",
                      extra={"problem": problem, "probe_every": self.cfg.auth_retry_interval})
        self._auth_problem = problem
        self._next_probe = self._clock() + self.cfg.auth_retry_interval
        self._metrics.photodna_unauthorized.set(1)
        self.auth_changed.set()

    def _authorized(self) -> None:
        self._key_missing = False
        if self._auth_problem is not None:
            log.warning("PhotoDNA accepts the key again")
            self._auth_problem = None
            self._metrics.photodna_unauthorized.set(0)
            self.auth_changed.set()
            self._on_recover()

    def probe_due_in(self) -> float | None:
        """While the key is refused: seconds until the next probe may go out (0: now).  None while the key
        is accepted or a probe is in flight (:attr:`auth_changed` is set when that changes)."""
        if self._key_missing and self.cfg.key.get():
            self._authorized()  # the key appeared: no request needed to know that
        if self._auth_problem is None or self._probe_in_flight:
            return None
        return max(0.0, self._next_probe - self._clock())

    def _key(self, slot: _ProbeSlot) -> str:
        """The key to send, or :class:`PhotoDnaUnauthorized` while refused, except for one probe per interval
        and never two at once: the call that takes the probe ``slot`` keeps it until it ends."""
        if self._auth_problem is not None:
            if self._probe_in_flight or self._clock() < self._next_probe:
                raise PhotoDnaUnauthorized(self._auth_problem)
            self._next_probe = self._clock() + self.cfg.auth_retry_interval  # this call is the probe
            slot.taken = self._probe_in_flight = True
        key = self.cfg.key.get()
        if not key:
            self._unauthorized(f"no PhotoDNA key is available from {self.cfg.key!r}", key_missing=True)
            raise PhotoDnaUnauthorized(self._auth_problem or "no key")
        return key

    # -- one image

    async def check(self, body: bytes, content_type: str = "image/jpeg", *, background: bool = False,
                    on_send: Callable[[bytes, str], None] | None = None) -> PhotoDnaResult:
        """PhotoDNA's verdict on one image (status 3000), or :class:`Unscannable` / :class:`PhotoDnaError`.

        ``on_send(body, content_type)`` is called before every request with exactly what it sends (after a
        size refusal, the re-encoded image): the last call describes the image the answer is about."""
        if content_type not in CONTENT_TYPES:
            raise PhotoDnaError(f"content type {content_type!r} is not one PhotoDNA takes", retriable=False,
                                reason="photodna-invalid-request")
        slot = _ProbeSlot()
        try:
            return await self._attempts(body, content_type, background=background, on_send=on_send, slot=slot)
        finally:
            if slot.taken:  # this call was the probe: the next one may go out when due
                self._probe_in_flight = False
                self.auth_changed.set()

    async def _attempts(self, body: bytes, content_type: str, *, background: bool,
                        on_send: Callable[[bytes, str], None] | None, slot: _ProbeSlot) -> PhotoDnaResult:
        attempt = 0
        refitted = False
        while True:
            key = self._key(slot)
            if not self.circuit.allow():
                self._metrics.photodna_failures.labels("circuit-open").inc()
                raise PhotoDnaError(f"PhotoDNA calls paused by the circuit breaker after repeated failures "
                                    f"(trial in {self.circuit.retry_in():.0f} s)", reason="photodna-unavailable")
            trial = self.circuit.state == HALF_OPEN
            try:
                await self.budget.take(background=background)  # first: nothing may sit between grant and send
                permit = await self.limiter.acquire(background=background)
                self._metrics.photodna_wait.labels("background" if background else "live").observe(permit.waited)
                if on_send is not None:
                    on_send(body, content_type)
                answer = await self._send(key, body, content_type, on_send=permit.sent)
            except BaseException:
                if trial:
                    self.circuit.release()
                raise
            if answer.kind == "unauthorized":
                self.circuit.release()
                self._unauthorized(answer.detail)
                raise PhotoDnaUnauthorized(answer.detail)
            if answer.reason not in _NO_ANSWER:
                self._authorized()  # any other answer proves the key works (no answer proves nothing)
            if answer.kind == "transient":
                self._transient_seen(answer)
                if attempt >= self.cfg.retries:
                    self._metrics.photodna_failures.labels("retries-exhausted").inc()
                    raise PhotoDnaError(f"PhotoDNA: {answer.reason} after {attempt + 1} attempt(s): {answer.detail}",
                                        reason="photodna")
                delay = self._delay(attempt, answer.retry_after)
                if answer.retry_after is not None or answer.reason == "http-429":
                    await self.limiter.pause(delay)  # the limit is shared: everyone backs off
                log.info("PhotoDNA %s, retrying in %.2f s", answer.reason, delay)
                await self._sleep(delay)
                attempt += 1
                continue
            self.circuit.success()
            result = answer.result
            tracking = result.tracking_id if result else None
            if answer.kind == "ok":
                assert result is not None
                return result
            if answer.kind == "refit" and not refitted:
                log.info("PhotoDNA refused the image size (%s), re-encoding once", answer.reason,
                         extra={"tracking_id": tracking})
                body = await asyncio.to_thread(refit_jpeg, body)
                content_type = "image/jpeg"
                refitted = True
                continue
            if answer.kind in ("refit", "unscannable"):
                raise Unscannable(answer.reason, f"{answer.detail} (TrackingId {tracking})")
            log.error("PhotoDNA rejected the request", extra={"detail": answer.detail, "tracking_id": tracking})
            self._metrics.photodna_failures.labels("invalid-request").inc()
            raise PhotoDnaError(f"PhotoDNA rejected the request: {answer.detail} (TrackingId {tracking})",
                                reason="photodna-invalid-request", retriable=False, tracking_id=tracking)


    def _transient_seen(self, answer: _Answer) -> None:
        if answer.reason == "http-429":
            self.circuit.release()  # being told to slow down says nothing about the service's health
        else:
            self.circuit.failure()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cfg.max_retry_after)
        backoff = self.cfg.backoff  # "equal jitter": between half and all of the exponential delay
        return exponential_backoff(attempt, initial=backoff.initial_delay, maximum=backoff.max_delay,
                                   jitter=(0.5, 1.0), rng=self._rng)

    async def _send(self, key: str, body: bytes, content_type: str, *,
                    on_send: Callable[[], None] = lambda: None) -> _Answer:
        session = self._session
        if session is None:
            raise RuntimeError("PhotoDnaClient.start() was not called")
        headers = {"Ocp-Apim-Subscription-Key": key, "Content-Type": content_type}
        params = {"enhance": "true" if self.cfg.enhance else "false"}
        t0 = time.monotonic()
        status_label, code_label = "none", "none"
        try:
            async with asyncio.timeout(self.cfg.timeout):
                on_send()
                async with session.post(self.cfg.url, data=body, headers=headers, params=params,
                                        allow_redirects=False) as resp:
                    status_label = str(resp.status)
                    text = (await resp.content.read(_MAX_ANSWER_BYTES)).decode("utf-8", "replace")
                    answer = self._classify(resp.status, resp.headers.get("Retry-After"), text)
        except TimeoutError:
            status_label = "timeout"
            answer = _Answer("transient", "timeout", detail=f"no answer within {self.cfg.timeout} s")
        except aiohttp.ClientError as exc:
            status_label = "connection"
            answer = _Answer("transient", "connection", detail=describe(exc, self.cfg.url, proxy=self._proxy).summary)
        finally:
            self._metrics.photodna_latency.observe(time.monotonic() - t0)
        if answer.result is not None:
            code_label = str(answer.result.code)
        self._metrics.photodna_requests.labels(status_label, code_label).inc()
        return answer

    @staticmethod
    def _classify(status: int, retry_after_header: str | None, text: str) -> _Answer:
        retry_after = parse_retry_after(retry_after_header)
        if status in (401, 403):
            message = text[:200]
            try:
                message = str(json.loads(text).get("message") or message)
            except (ValueError, AttributeError):
                pass
            return _Answer("unauthorized", f"http-{status}", detail=f"HTTP {status}: {message}")
        if status == 429 or status >= 500:
            return _Answer("transient", f"http-{status}", retry_after=retry_after, detail=text[:200])
        if status == 413:
            return _Answer("refit", "photodna-request-size", detail="HTTP 413 request too large")
        if status != 200:
            return _Answer("invalid", f"http-{status}", detail=f"HTTP {status}: {text[:200]}")
        try:
            result = parse_answer(text)
        except BadAnswer as exc:
            return _Answer("transient", "bad-answer", detail=str(exc))
        desc = f"{result.code} {result.description}"
        if result.code == OK:
            return _Answer("ok", result=result)
        if result.code == UNKNOWN_ERROR:
            return _Answer("transient", f"status-{result.code}", result=result, retry_after=retry_after, detail=desc)
        if result.code == NOT_AN_IMAGE:
            return _Answer("unscannable", "photodna-not-an-image", result=result, detail=desc)
        if result.code == IMAGE_SIZE:
            return _Answer("refit", "photodna-image-size", result=result, detail=desc)
        if result.code == REQUEST_SIZE:
            return _Answer("refit", "photodna-request-size", result=result, detail=desc)
        return _Answer("invalid", f"status-{result.code}", result=result, detail=desc)
