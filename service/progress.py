"""Progress of a finite job (backfill, replay): a rich bar on a terminal, a log line now and then otherwise,
and a final summary.

The bar is drawn through the same rich Console the log handler prints through (:class:`service.logs.LogOutput`),
so a log line written while the bar is live appears above it, never inside it.  The ETA is shown only
once a rate is known (two samples apart in time); until then it reads ``ETA --:--:--``.  The bar is
transient: when the job ends it is replaced by the summary, so the last progress line is never printed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """Where a job stands: ``completed`` of ``total`` units (``None``: unknown yet) and a few counts to show."""

    completed: float
    total: float | None
    fields: dict[str, Any] = field(default_factory=dict)


def metric_sum(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels match ``labels`` (all samples when none are given)."""
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metric_by_label(registry: CollectorRegistry, name: str, label: str) -> dict[str, float]:
    """A counter's samples summed per value of one label."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    s = max(round(seconds), 0)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class EtaColumn(ProgressColumn):
    """``ETA hh:mm:ss`` once rich knows a rate (it needs progress at two different times), else dashes."""

    max_refresh = 0.5

    def render(self, task: Task) -> Text:
        remaining = task.time_remaining if task.total is not None and not task.finished else None
        return Text(f"ETA {clock_text(remaining)}", style="progress.remaining")


class CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        done = f"{task.completed:.0f}"
        return Text(f"{done}/{task.total:.0f}" if task.total is not None else done)


class RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed is not None else f"-- {self.unit}/s")


class FieldsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        fields = task.fields.get("counts") or {}
        return Text("  ".join(f"{k} {v}" for k, v in fields.items()))


class Reporter:
    """Shows a job's progress until it is cancelled or ``stop`` is set; :meth:`summary` prints the end."""

    def __init__(self, title: str, sample: Callable[[], Sample], *, console: Console | None, interval: float,
                 unit: str = "files", refresh: float = 0.5, table: bool = True) -> None:
        self.title = title
        self.sample = sample
        self.console = console
        self.live = console is not None and console.is_terminal
        self.table = table and self.live  # the summary as a table (console logs) or as one log record (JSON logs)
        self.interval = interval
        self.unit = unit
        self.refresh = refresh
        self.started = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        if self.live:
            await self._bar(stop)
        else:
            await self._lines(stop)

    async def _bar(self, stop: asyncio.Event) -> None:
        assert self.console is not None
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), CountColumn(),
                       RateColumn(self.unit), FieldsColumn(), EtaColumn(),
                       console=self.console, transient=True, refresh_per_second=4,
                       redirect_stdout=False, redirect_stderr=False)
        first = self.sample()
        with bar:
            task = bar.add_task(self.title, total=first.total, completed=int(first.completed), counts=first.fields)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.refresh)
                now = self.sample()
                bar.update(task, total=now.total, completed=now.completed, counts=now.fields)

    async def _lines(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            if not stop.is_set():
                now = self.sample()
                log.info(f"{self.title} progress", extra={**now.fields, "completed": int(now.completed),
                                                          "total": int(now.total) if now.total else None})

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self, headline: str, rows: list[tuple[str, Any]], fields: dict[str, Any]) -> None:
        """Print the end of the job: a table on a terminal, one log line with ``fields`` otherwise."""
        if self.table and self.console is not None:
            self.console.print(Text(headline, style="bold"))
            table = Table(show_header=False, box=None, pad_edge=False)
            table.add_column(style="bold")
            table.add_column(justify="right")
            for name, value in rows:
                table.add_row(name, str(value))
            self.console.print(table)
        else:
            log.info(headline, extra=fields)
