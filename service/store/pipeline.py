"""What the pipeline and the rescanner need, each as one object over the concerns they span.

:class:`SqlPipeline`: one round trip when an event enters (ledger + scans), one when it ends (scan,
remote states and outcome, atomically), and matches with their actions in one transaction.  Admits and
finishes that arrive together share a thread hop and a transaction (:mod:`service.store.grouped`).
:class:`SqlRescan`: remote states, scans and matches for the rescanner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.models import UploadEvent
from service.store.base import NewAction, RemoteScan, ScanRecord
from service.store.db import Database
from service.store.ledger import SEEN, SqlLedger, put_event
from service.store.matches import SqlMatches
from service.store.outbox import insert_actions
from service.store.remote import SqlRemoteScans, put_remote
from service.store.scans import SqlScans, put_scan, scan_record
from service.store.schema import scans
from service.store.workflow import put_unscannable

# Was the event handled, and the scan of its SHA-1 if any: one statement (the pipeline's busiest).
_ADMIT = (sa.select(SEEN.exists().label("seen"), scans)
          .select_from(sa.select(sa.literal(1).label("one")).subquery("one")
                       .outerjoin(scans, scans.c.sha1 == sa.bindparam("sha1"))))


def _admit(db: Database) -> sa.Select[Any]:
    return _ADMIT


class SqlPipeline(SqlMatches):
    """:class:`~service.store.base.PipelineStore`."""

    async def admit(self, event_id: str, sha1: str | None) -> tuple[bool, ScanRecord | None]:
        def q(c: Connection) -> tuple[bool, ScanRecord | None]:
            [row] = self.db.compiled(_admit).run(c, {"event_id": event_id, "sha1": sha1})
            if row["seen"]:
                return True, None
            return False, None if row["sha1"] is None else scan_record(row)

        return await self.db.read_grouped(q)

    async def finish(
        self, event: UploadEvent, outcome: str, scan: ScanRecord | None, remote: Sequence[RemoteScan] = (),
        actions: Sequence[NewAction] = (),
    ) -> None:
        now = self.clock()

        def tx(c: Connection) -> None:
            if scan is not None:
                put_scan(self.db, c, scan)
            for r in remote:
                put_remote(self.db, c, r)
            put_event(self.db, c, event, outcome, now)
            if outcome.startswith("unscannable:") and put_unscannable(self.db, c, event, outcome, now):
                insert_actions(self.db, c, actions, now)

        await self.db.write_grouped(tx)


class SqlRescan(SqlRemoteScans, SqlScans, SqlMatches, SqlLedger):
    """:class:`~service.store.base.RescanStore` (they share the database and the clock)."""
