"""Pick the store from the config: PostgreSQL when ``store.url`` is set, else SQLite at ``store.path``."""

from __future__ import annotations

from typing import Any

from service.config import StoreSection


def make_store(cfg: StoreSection) -> Any:
    """A store implementing every protocol in :mod:`service.store.base` (not opened yet)."""
    if cfg.url:
        from service.store.postgres import PostgresStore

        return PostgresStore(cfg.url, outbox_lease=cfg.outbox_lease)
    from service.store.sqlite import SqliteStore

    return SqliteStore(cfg.path)
