"""The exception tree: ``retriable`` and ``reason`` are declared on the classes, read without getattr."""

from __future__ import annotations

import pytest

from service.errors import (
    FetchError,
    HostNotAllowed,
    NotifyError,
    PermanentNotifyError,
    PermanentSourceError,
    ServiceError,
    SourceError,
    TransientFetchError,
    Unscannable,
    WikiApiError,
    WikiTimeout,
    WikiUnreachable,
)


@pytest.mark.parametrize(("cls", "retriable"), [
    (ServiceError, False), (FetchError, False), (TransientFetchError, True), (SourceError, True),
    (PermanentSourceError, False), (NotifyError, True), (PermanentNotifyError, False),
    (WikiUnreachable, True), (WikiTimeout, True), (HostNotAllowed, False),
])
def test_retriable_is_a_class_attribute(cls: type[ServiceError], retriable: bool) -> None:
    assert cls.retriable is retriable
    err = cls("x") if cls is not HostNotAllowed else cls("http://evil.example/")
    assert err.retriable is retriable and "retriable" not in vars(err)


def test_reasons_come_from_the_class_or_the_instance() -> None:
    assert TransientFetchError("HTTP 503", reason="http-503").reason == "http-503"
    assert TransientFetchError("lost").reason == "fetch"  # inherited, not the class name
    assert WikiTimeout("slow").reason == "timeout" and WikiTimeout("slow").code == "timeout"
    assert Unscannable("decompression-bomb", "10000 frames").reason == "decompression-bomb"

    class StoreTrouble(ServiceError):  # a direct subclass that declares none is named after itself
        pass

    assert StoreTrouble("x").reason == "storetrouble"


def test_host_not_allowed_is_both_a_fetch_and_a_wiki_error() -> None:
    err = HostNotAllowed("http://127.0.0.1:9/x")
    assert isinstance(err, FetchError) and isinstance(err, WikiApiError)
    assert err.reason == err.code == "host-not-allowed" and not err.permission
