"""Who may use the review queue: argon2 passwords or a trusted proxy header, sessions, CSRF tokens.

* Reviewers are in the store (``mediamoderation reviewer add``, roles ``reviewer`` and ``admin``) with an
  argon2 hash; the deprecated ``review.reviewers`` of the config file still sign in (as admins) for one
  release.  Unknown names are verified against a dummy hash, so timing says nothing.  A reviewer added or
  disabled in the store counts at the next request, without a restart.
* Every sign-in attempt is a row in the store (the admins' sign-in log); failed ones are throttled from those
  rows, so every replica shares the counts (see :class:`SignInLimits`): 5 in 15 minutes for one reviewer name from
  one client address, 20 from one address whatever the names; past 10 failures for a name from anywhere,
  every attempt for that name waits a few seconds first.  No count of failures ever refuses the right
  password from an address that has not failed: an attacker hammering a name cannot lock its owner out.
* The client address is the peer's, or ``review.proxy_auth.client_header`` (e.g. X-Forwarded-For) when
  the peer is one of ``review.proxy_auth.trusted_proxies``.
* A session is a random token in a cookie (``__Host-`` prefix, Secure, HttpOnly, SameSite=Lax); the
  store keeps only its SHA-256, the reviewer, a per-session CSRF token and its expiry (idle and
  absolute).  Logging in always starts a new session.
* With ``review.proxy_auth.header`` set, a request from a trusted proxy address carrying that header
  is the named reviewer; a session is created for it so that forms still carry CSRF tokens.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import hmac
import ipaddress
import logging
import secrets
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TextIO

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from service.config import ReviewSection, Secret
from service.store.base import ReviewerStore, ReviewSession, ReviewStore, SignInCounts

log = logging.getLogger(__name__)

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
THROTTLE_FAILURES = 5  # per (reviewer name, client address)
THROTTLE_ADDRESS_FAILURES = 20  # per client address, whatever the names (a password sprayed over names)
THROTTLE_NAME_CEILING = 10  # per reviewer name from every address: past it, each attempt is slowed
THROTTLE_SLOW_DELAY = 3.0  # seconds every attempt for a name past its ceiling waits before the check
THROTTLE_WINDOW = 900.0
TOUCH_EVERY = 30.0  # seconds between last-seen writes of one session


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


class Throttle:
    """At most ``failures`` failed logins per key within ``window`` seconds."""

    def __init__(self, failures: int = THROTTLE_FAILURES, window: float = THROTTLE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._failures = failures
        self._window = window
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        q = self._seen.setdefault(key, deque())
        limit = self._clock() - self._window
        while q and q[0] < limit:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> bool:
        return any(len(self._recent(k)) >= self._failures for k in keys)

    def count(self, key: str) -> int:
        return len(self._recent(key))

    def fail(self, *keys: str) -> None:
        for k in keys:
            self._recent(k).append(self._clock())
        if len(self._seen) > 10_000:  # never grow without bound under a spray of names
            self._seen = {k: v for k, v in self._seen.items() if v}

    def clear(self, *keys: str) -> None:
        for k in keys:
            self._seen.pop(k, None)


SignInResult = Literal["ok", "bad-password", "throttled"]
CONFIG_ROLE = "admin"  # config-file reviewers (deprecated) could always do everything


@dataclass(frozen=True, slots=True)
class Verdict:
    refused: bool  # too many failures from this address (for this name, or for any): answer 429
    delay: float  # seconds to wait before checking the password (the name is under attack)


@dataclass(frozen=True, slots=True)
class SignInLimits:
    """The throttle's rule, whoever counts: failures per (name, address) and per address refuse that address only;
    failures per name only slow every attempt for the name, so the right password from another address always gets
    through."""

    pair_failures: int = THROTTLE_FAILURES
    address_failures: int = THROTTLE_ADDRESS_FAILURES
    name_ceiling: int = THROTTLE_NAME_CEILING
    slow_delay: float = THROTTLE_SLOW_DELAY
    window: float = THROTTLE_WINDOW

    def verdict(self, counts: SignInCounts) -> Verdict:
        refused = counts.pair >= self.pair_failures or counts.address >= self.address_failures
        return Verdict(refused=refused, delay=self.slow_delay if counts.name >= self.name_ceiling else 0.0)


class SignInThrottle:
    """The same rule over in-process counts (one process; the service counts in the store, see :class:`Auth`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, pair_failures: int = THROTTLE_FAILURES,
                 address_failures: int = THROTTLE_ADDRESS_FAILURES, name_ceiling: int = THROTTLE_NAME_CEILING,
                 slow_delay: float = THROTTLE_SLOW_DELAY, window: float = THROTTLE_WINDOW) -> None:
        self.limits = SignInLimits(pair_failures, address_failures, name_ceiling, slow_delay, window)
        self._pairs = Throttle(pair_failures, window, clock)
        self._addresses = Throttle(address_failures, window, clock)
        self._names = Throttle(name_ceiling, window, clock)

    @staticmethod
    def _pair(name: str, address: str) -> str:
        return f"{name}\x00{address}"

    def check(self, name: str, address: str) -> Verdict:
        return self.limits.verdict(SignInCounts(pair=self._pairs.count(self._pair(name, address)),
                                                address=self._addresses.count(address),
                                                name=self._names.count(name)))

    def failed(self, name: str, address: str) -> None:
        self._pairs.fail(self._pair(name, address))
        self._addresses.fail(address)
        self._names.fail(name)

    def succeeded(self, name: str, address: str) -> None:
        # Only this address is forgiven: the name's count keeps slowing an attacker elsewhere.
        self._pairs.clear(self._pair(name, address))

    def name_failures(self, name: str) -> int:
        return self._names.count(name)


class Auth:
    """Sign-in, roles and sessions.  Reviewers come from the store (``reviewers``) and, deprecated, from the config
    file; every attempt is recorded in the store, whose recent failures are the throttle all replicas share."""

    def __init__(self, cfg: ReviewSection, store: ReviewStore, clock: Callable[[], float] = time.time, *,
                 reviewers: ReviewerStore | None = None, limits: SignInLimits | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.cfg = cfg
        self._store = store
        self._reviewers = reviewers
        self._clock = clock
        # A hash given as {file: PATH} / {env: VAR} (a mounted Secret) is read once, here.
        self._hashes = {r.name: (r.password_hash.get() or "") if isinstance(r.password_hash, Secret)
                        else r.password_hash for r in cfg.reviewers}
        if self._hashes:
            log.warning("review.reviewers in the config file is deprecated and will be removed in the next release: "
                        "add reviewers to the store with `mediamoderation reviewer add` (%d config reviewer(s) "
                        "still sign in, as admins)", len(self._hashes))
        self.limits = limits or SignInLimits()
        self._sleep = sleep
        prefix = "__Host-" if cfg.secure_cookies else ""
        self.cookie = f"{prefix}mm-review"
        self.login_cookie = f"{prefix}mm-login"

    # -- reviewers and passwords

    async def identity(self, name: str) -> tuple[str, str] | None:
        """(password hash, role) of an active reviewer: the store's entry wins (a disabled one refuses), then the
        config file's (role admin)."""
        if self._reviewers is not None:
            r = await self._reviewers.get_reviewer(name)
            if r is not None:
                return (r.password_hash, r.role) if r.active else None
        stored = self._hashes.get(name)
        return None if stored is None else (stored, CONFIG_ROLE)

    async def role(self, name: str) -> str | None:
        """The reviewer's role; None when they may not use the queue (unknown or disabled)."""
        found = await self.identity(name)
        if found is not None:
            return found[1]
        p = self.cfg.proxy_auth
        return "reviewer" if p.header is not None and not p.listed_only else None

    async def check_password(self, name: str, password: str) -> bool:
        found = await self.identity(name)
        stored = found[0] if found else ""
        candidate = stored if stored.startswith("$argon2") else _DUMMY_HASH
        ok = await asyncio.to_thread(_verify, candidate, password)
        return ok and candidate is stored

    async def sign_in(self, name: str, password: str, address: str) -> SignInResult:
        """Check a password under the throttle: "ok", "bad-password" or "throttled" (nothing was checked).
        Every attempt is recorded (the admins' sign-in log and the throttle's counts)."""
        result = await self._sign_in(name, password, address)
        if self._reviewers is not None:
            await self._reviewers.record_signin(name, address, result)
        return result

    async def _sign_in(self, name: str, password: str, address: str) -> SignInResult:
        counts = (await self._reviewers.signin_counts(name, address, self._clock() - self.limits.window)
                  if self._reviewers is not None else SignInCounts(0, 0, 0))
        verdict = self.limits.verdict(counts)
        if verdict.refused:
            return "throttled"
        if verdict.delay:
            log.info("review: sign-in for %r from %s slowed by %.1f s (%d recent failures for the name)",
                     name, address, verdict.delay, counts.name)
            await self._sleep(verdict.delay)
        if not await self.check_password(name, password):
            return "bad-password"
        return "ok"

    # -- client address and proxy header

    def client_address(self, remote: str | None, headers: Mapping[str, str]) -> str:
        """The peer address, or the configured client header's when the peer is a trusted proxy.

        ``X-Forwarded-For: client, proxy1, proxy2``: the right-most address that is not a trusted proxy.
        """
        peer = remote or "unknown"
        p = self.cfg.proxy_auth
        if p.client_header is None or remote not in p.trusted_proxies:
            return peer
        value = headers.get(p.client_header, "")
        for entry in reversed(value.split(",")[-20:]):
            candidate = entry.strip()
            if candidate in p.trusted_proxies:
                continue
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                return peer  # a malformed header from the proxy: count the proxy's own address
        return peer

    async def proxy_user(self, remote: str | None, header_value: str | None) -> str | None:
        """The reviewer a trusted proxy vouches for, or None."""
        p = self.cfg.proxy_auth
        if p.header is None or not header_value or remote not in p.trusted_proxies:
            return None
        name = header_value.strip()
        if not name or (p.listed_only and await self.identity(name) is None):
            return None
        return name

    # -- sessions

    async def new_session(self, reviewer: str) -> tuple[str, ReviewSession]:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        session = ReviewSession(token_hash=token_hash(token), reviewer=reviewer, csrf=secrets.token_urlsafe(32),
                                created_at=now, last_seen=now, expires_at=now + self.cfg.session_max)
        await self._store.prune_sessions(now)
        await self._store.create_session(session)
        return token, session

    async def session(self, token: str | None) -> ReviewSession | None:
        if not token or len(token) > 200:
            return None
        h = token_hash(token)
        s = await self._store.get_session(h)
        if s is None:
            return None
        now = self._clock()
        if now >= s.expires_at or now - s.last_seen > self.cfg.session_idle or await self.role(s.reviewer) is None:
            await self._store.delete_session(h)
            return None
        if now - s.last_seen > TOUCH_EVERY:
            await self._store.touch_session(h, now)
        return s

    async def end_session(self, token: str | None) -> None:
        if token:
            await self._store.delete_session(token_hash(token))


def _verify(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def read_new_password_hash(stdin: TextIO | None = None, *, min_length: int = 12) -> tuple[int, str]:
    """Read a password (twice on a terminal, one line from a pipe) and return (exit code, argon2 hash or error)."""
    stream = stdin if stdin is not None else sys.stdin
    if stream.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            return 1, "the passwords differ"
    else:
        first = stream.readline().rstrip("\n")
    if len(first) < min_length:
        return 1, f"use at least {min_length} characters"
    return 0, hash_password(first)


def main(argv: list[str] | None = None) -> int:
    """Deprecated ``python -m service.web.review.auth hash``: use ``mediamoderation reviewer hash-password``."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["hash"]:
        print("usage: mediamoderation reviewer hash-password   (reads the password from the terminal or stdin)",
              file=sys.stderr)
        return 2
    print("warning: `python -m service.web.review.auth hash` is deprecated and will be removed in the next "
          "release: use `mediamoderation reviewer hash-password`", file=sys.stderr)
    code, text = read_new_password_hash()
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
