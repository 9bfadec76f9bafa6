"""The service's exception tree.  Retry decisions are driven by the type, never by message text."""

from __future__ import annotations


class ServiceError(Exception):
    """Root of every error the service raises on purpose."""

    retriable: bool = False


class ConfigError(ServiceError):
    """The configuration is invalid.  ``problems`` lists ``(key_path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


class MalformedEvent(ServiceError):
    """An event that cannot be turned into an upload record."""


class SourceError(ServiceError):
    """A source failed.  ``retriable`` says whether reconnecting may help."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class FetchError(ServiceError):
    """Fetching file details or bytes from the wiki failed."""

    def __init__(self, message: str, *, retriable: bool = False, reason: str = "fetch") -> None:
        super().__init__(message)
        self.retriable = retriable
        self.reason = reason


class FileGone(ServiceError):
    """The file was deleted (or never existed) by the time it was fetched."""


class HostNotAllowed(FetchError):
    """A URL points at a host outside the allowlist (also checked after each redirect)."""

    def __init__(self, url: str) -> None:
        super().__init__(f"host not in allowlist: {url}", retriable=False, reason="host-not-allowed")


class Unscannable(ServiceError):
    """The media cannot be scanned; ``reason`` is a short slug such as ``decompression-bomb``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BankError(ServiceError):
    """A hash bank file is unreadable or malformed."""


class NotifyError(ServiceError):
    """Sending a notification failed."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable
