"""The store: one implementation per concern over one database layer, handed out as narrow protocols.

``make_stores(cfg)`` builds :class:`Stores` (PostgreSQL when ``store.url`` is set, else SQLite at
``store.path``); every component takes the one field it needs, typed by its protocol in :mod:`.base`.
``memory_stores()`` is the same over :class:`~service.store.memory.MemoryStore`, for unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from service.config import StoreSection
from service.store.banksync import SqlBankSync
from service.store.base import (
    BankSyncStore,
    BudgetStore,
    CheckpointStore,
    EventLedger,
    Lifecycle,
    Outbox,
    PipelineStore,
    RemoteScanStore,
    RescanStore,
    RetroStore,
    ReviewerStore,
    ReviewStore,
    ScanStore,
    StoreError,
    WorkflowStore,
)
from service.store.budget import SqlBudget
from service.store.checkpoints import SqlCheckpoints
from service.store.db import Database
from service.store.ledger import SqlLedger
from service.store.memory import MemoryStore
from service.store.outbox import SqlOutbox
from service.store.pipeline import SqlPipeline, SqlRescan
from service.store.remote import SqlRemoteScans
from service.store.retro import SqlRetro
from service.store.review import SqlReview
from service.store.reviewers import SqlReviewers
from service.store.scans import SqlScans
from service.store.workflow import SqlWorkflow

__all__ = ["Database", "MemoryStore", "StoreError", "Stores", "make_stores", "memory_stores", "sql_stores"]


@dataclass(frozen=True, slots=True)
class Stores:
    """Every store concern of one database, each typed by the narrow protocol components take."""

    db: Lifecycle
    checkpoints: CheckpointStore
    ledger: EventLedger
    scans: ScanStore
    pipeline: PipelineStore
    outbox: Outbox
    remote: RemoteScanStore
    rescan: RescanStore
    budget: BudgetStore
    review: ReviewStore
    reviewers: ReviewerStore
    banksync: BankSyncStore
    workflow: WorkflowStore
    retro: RetroStore  # file hashes and bank deltas (retroactive matching)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.ping()


def sql_stores(db: Database, *, outbox_lease: float | None = None,
               clock: Callable[[], float] = time.time) -> Stores:
    return Stores(
        db=db, checkpoints=SqlCheckpoints(db, clock), ledger=SqlLedger(db, clock), scans=SqlScans(db, clock),
        pipeline=SqlPipeline(db, clock), outbox=SqlOutbox(db, clock, lease=outbox_lease),
        remote=SqlRemoteScans(db, clock), rescan=SqlRescan(db, clock), budget=SqlBudget(db, clock),
        review=SqlReview(db, clock), reviewers=SqlReviewers(db, clock), banksync=SqlBankSync(db, clock),
        workflow=SqlWorkflow(db, clock), retro=SqlRetro(db, clock),
    )


def sqlite_stores(path: str, *, outbox_lease: float | None = None,
                  clock: Callable[[], float] = time.time) -> Stores:
    """One process: outbox items are not leased unless ``outbox_lease`` is given."""
    return sql_stores(Database.for_sqlite(path), outbox_lease=outbox_lease, clock=clock)


def postgres_stores(url: str, *, outbox_lease: float = 300.0, pool_size: int = 8,
                    clock: Callable[[], float] = time.time) -> Stores:
    """Outbox items are leased for ``outbox_lease`` seconds, so replicas never perform one twice."""
    return sql_stores(Database.for_postgres(url, pool_size=pool_size), outbox_lease=outbox_lease, clock=clock)


def make_stores(cfg: StoreSection, *, clock: Callable[[], float] = time.time) -> Stores:
    """The configured store (not opened yet): PostgreSQL when ``store.url`` is set, else SQLite."""
    if cfg.url:
        return postgres_stores(cfg.url, outbox_lease=cfg.outbox_lease, clock=clock)
    return sqlite_stores(cfg.path, clock=clock)


def memory_stores(store: MemoryStore | None = None) -> Stores:
    m = store if store is not None else MemoryStore()
    return Stores(db=m, checkpoints=m, ledger=m, scans=m, pipeline=m, outbox=m, remote=m, rescan=m, budget=m,
                  review=m, reviewers=m, banksync=m, workflow=m, retro=m)
