"""Who may use the review queue: argon2 passwords or a trusted proxy header, sessions, CSRF tokens.

* Reviewers are listed in ``review.reviewers`` with an argon2 hash (``mediamoderation reviewer
  hash-password`` prints one).  Unknown names are verified against a dummy hash, so timing says nothing.
* Failed sign-ins are throttled (see :class:`SignInThrottle`): 5 in 15 minutes for one reviewer name from
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
from service.store.base import ReviewSession, ReviewStore

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


@dataclass(frozen=True, slots=True)
class Verdict:
    refused: bool  # too many failures from this address (for this name, or for any): answer 429
    delay: float  # seconds to wait before checking the password (the name is under attack)


class SignInThrottle:
    """Failed sign-ins counted per (name, address), per address and per name, over a sliding window.

    The first two refuse (429) only their own address; the per-name count only slows every attempt
    for the name, so the right password from another address always gets through.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, pair_failures: int = THROTTLE_FAILURES,
                 address_failures: int = THROTTLE_ADDRESS_FAILURES, name_ceiling: int = THROTTLE_NAME_CEILING,
                 slow_delay: float = THROTTLE_SLOW_DELAY, window: float = THROTTLE_WINDOW) -> None:
        self._pairs = Throttle(pair_failures, window, clock)
        self._addresses = Throttle(address_failures, window, clock)
        self._names = Throttle(name_ceiling, window, clock)
        self._slow_delay = slow_delay

    @staticmethod
    def _pair(name: str, address: str) -> str:
        return f"{name}\x00{address}"

    def check(self, name: str, address: str) -> Verdict:
        refused = self._pairs.blocked(self._pair(name, address)) or self._addresses.blocked(address)
        return Verdict(refused=refused, delay=self._slow_delay if self._names.blocked(name) else 0.0)

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
    def __init__(self, cfg: ReviewSection, store: ReviewStore, clock: Callable[[], float] = time.time, *,
                 throttle: SignInThrottle | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.cfg = cfg
        self._store = store
        self._clock = clock
        # A hash given as {file: PATH} / {env: VAR} (a mounted Secret) is read once, here.
        self._hashes = {r.name: (r.password_hash.get() or "") if isinstance(r.password_hash, Secret)
                        else r.password_hash for r in cfg.reviewers}
        self.throttle = throttle or SignInThrottle()
        self._sleep = sleep
        prefix = "__Host-" if cfg.secure_cookies else ""
        self.cookie = f"{prefix}mm-review"
        self.login_cookie = f"{prefix}mm-login"

    # -- passwords

    async def check_password(self, name: str, password: str) -> bool:
        stored = self._hashes.get(name) or ""
        candidate = stored if stored.startswith("$argon2") else _DUMMY_HASH
        ok = await asyncio.to_thread(_verify, candidate, password)
        return ok and candidate is stored

    async def sign_in(self, name: str, password: str, address: str) -> SignInResult:
        """Check a password under the throttle: "ok", "bad-password" or "throttled" (nothing was checked)."""
        verdict = self.throttle.check(name, address)
        if verdict.refused:
            return "throttled"
        if verdict.delay:
            log.info("review: sign-in for %r from %s slowed by %.1f s (%d recent failures for the name)",
                     name, address, verdict.delay, self.throttle.name_failures(name))
            await self._sleep(verdict.delay)
        if not await self.check_password(name, password):
            self.throttle.failed(name, address)
            return "bad-password"
        self.throttle.succeeded(name, address)
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

    def proxy_user(self, remote: str | None, header_value: str | None) -> str | None:
        """The reviewer a trusted proxy vouches for, or None."""
        p = self.cfg.proxy_auth
        if p.header is None or not header_value or remote not in p.trusted_proxies:
            return None
        name = header_value.strip()
        if not name or (p.listed_only and name not in self._hashes):
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
        if now >= s.expires_at or now - s.last_seen > self.cfg.session_idle or s.reviewer not in self._allowed():
            await self._store.delete_session(h)
            return None
        if now - s.last_seen > TOUCH_EVERY:
            await self._store.touch_session(h, now)
        return s

    def _allowed(self) -> set[str]:
        # A reviewer removed from the config loses their sessions; proxy users may be unlisted.
        if self.cfg.proxy_auth.header is not None and not self.cfg.proxy_auth.listed_only:
            return _Everyone()
        return set(self._hashes)

    async def end_session(self, token: str | None) -> None:
        if token:
            await self._store.delete_session(token_hash(token))


class _Everyone(set[str]):
    def __contains__(self, item: object) -> bool:
        return True


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
