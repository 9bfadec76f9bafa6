"""The service's exception tree.  Retry decisions are driven by the type, never by message text.

Every error has ``retriable`` (may trying again later help?) and ``reason`` (a short slug for metrics
and recorded outcomes) declared on its class, so callers read ``exc.retriable`` and ``exc.reason``
directly.  Where a reason depends on the instance (``http-503``, ``api-badvalue``) the constructor
refines it; whether it is retriable never does: a retriable failure is its own subclass.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Root of every error the service raises on purpose."""

    retriable: bool = False
    reason: str = "error"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "reason" not in cls.__dict__ and ServiceError in cls.__bases__:
            cls.reason = cls.__name__.lower()  # a direct subclass that declares none: its name, "storeerror"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(ServiceError):
    """The configuration is invalid.  ``problems`` lists ``(key_path, message)`` pairs."""

    reason = "config"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


class MalformedEvent(ServiceError):
    """An event that cannot be turned into an upload record."""

    reason = "malformed"


class SourceError(ServiceError):
    """A source failed; reconnecting may help."""

    retriable = True
    reason = "source"


class PermanentSourceError(SourceError):
    """A source failed in a way reconnecting will not mend (a missing topic, a refused request)."""

    retriable = False


class FetchError(ServiceError):
    """Fetching file details or bytes from the wiki failed; trying later will not help."""

    reason = "fetch"


class TransientFetchError(FetchError):
    """Fetching failed for a reason that may pass (timeouts, 5xx, lag, a truncated answer)."""

    retriable = True


class FileGone(ServiceError):
    """The file was deleted (or never existed) by the time it was fetched."""

    reason = "gone"


class Unscannable(ServiceError):
    """The media cannot be scanned; ``reason`` is a short slug such as ``decompression-bomb``."""

    reason = "unscannable"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason, reason=reason)
        self.detail = detail


class BankError(ServiceError):
    """A hash bank file is unreadable or malformed."""

    reason = "bank"


class ExchangeError(BankError):
    """A sync of a ``url`` or ``exchange`` bank failed: ``reason`` is ``http``, ``auth``, ``data``, ``network``,
    ``refused`` (host not allowlisted) or ``store``.  The bank keeps its content; the sync is retried with
    backoff."""

    retriable = True
    reason = "http"


class NotifyError(ServiceError):
    """Sending a notification failed; another attempt later may succeed."""

    retriable = True
    reason = "notify"


class PermanentNotifyError(NotifyError):
    """Sending a notification failed for good (a refused recipient, a template that cannot render)."""

    retriable = False


# --------------------------------------------------------------------------- the MediaWiki API client


class WikiApiError(ServiceError):
    """A request to a wiki failed.  ``code`` is MediaWiki's error code, or the reason for other failures.

    ``permission`` marks failures a human must fix (a missing right or grant, no credentials).
    """

    reason = "wiki"
    permission: bool = False

    def __init__(self, message: str, *, code: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.code = code if code is not None else self.reason


class HostNotAllowed(WikiApiError, FetchError):
    """A URL points outside the wiki's allowlist (scheme, host and port; checked on every redirect hop)."""

    reason = "host-not-allowed"

    def __init__(self, url: str) -> None:
        super().__init__(f"host not in allowlist (scheme, host and port must match): {url}")
        self.url = url


class WikiBadUrl(WikiApiError):
    reason = "bad-url"


class WikiTooManyRedirects(WikiApiError):
    reason = "too-many-redirects"


class WikiResponseTooLarge(WikiApiError):
    """The answer was larger than the byte cap of the call; reading stopped there."""

    reason = "too-large"

    def __init__(self, message: str, *, seen: int) -> None:
        super().__init__(message)
        self.seen = seen


class WikiUnreachable(WikiApiError):
    """No answer: the connection failed or broke."""

    retriable = True
    reason = "connection"


class WikiTimeout(WikiUnreachable):
    reason = "timeout"


class WikiHttpError(WikiApiError):
    """The wiki answered with an HTTP status the call cannot use."""

    reason = "http"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, reason=f"http-{status}")
        self.status = status

    @staticmethod
    def for_status(message: str, status: int) -> WikiHttpError:
        cls = WikiHttpTransient if status == 429 or status >= 500 else WikiHttpError
        return cls(message, status=status)


class WikiHttpTransient(WikiHttpError):
    """HTTP 429 or 5xx: the wiki is busy or broken for now."""

    retriable = True


class WikiBadResponse(WikiApiError):
    """The answer is not the JSON object the API sends (a proxy's error page, a cut-off body)."""

    retriable = True
    reason = "bad-response"


class WikiApiRefused(WikiApiError):
    """The API answered with an error object; ``code`` and ``info`` are MediaWiki's."""

    reason = "api"

    def __init__(self, message: str, *, code: str, info: str = "") -> None:
        super().__init__(message, code=code, reason=f"api-{code}")
        self.info = info


class WikiApiTransient(WikiApiRefused):
    """``readonly``, ``ratelimited``, ``internal_api_error*``, ``actionthrottled``: the wiki may accept later."""

    retriable = True


class WikiLagged(WikiApiTransient):
    """``maxlag``: the wiki's replicas lag behind; wait ``Retry-After`` (at least 5 s) and try again."""

    reason = "maxlag"

    def __init__(self, message: str, *, code: str = "maxlag", info: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, code=code, info=info)
        self.reason = "maxlag"
        self.retry_after = retry_after


class WikiPermissionDenied(WikiApiRefused):
    """The account lacks a right or a grant, or is blocked: a human must fix it."""

    permission = True


class WikiBadToken(WikiApiRefused):
    """The CSRF token expired: fetch a new one and repeat the call once."""


class WikiSessionLost(WikiApiRefused):
    """The login session is gone (``assertuserfailed``, ``notloggedin``): log in again once."""


class WikiLoginFailed(WikiApiError):
    """``action=login`` did not succeed, or there are no credentials: a human must fix it."""

    reason = "login"
    permission = True


class WikiLoginThrottled(WikiApiError):
    """Too many login attempts: wait and try later."""

    retriable = True
    reason = "login-throttled"
