"""``mediamoderation bank list | sync [NAME] | add | remove | import FILE | export NAME``.

``list`` and ``export`` read the bank files and the store (synced banks); ``sync`` syncs ``url`` and
``exchange`` banks now, with a progress bar, and writes them to the store the running service loads from;
``add``, ``remove`` and ``import`` edit a curated local bank file (the running service reloads it within
``banks.reload_interval`` and publishes the change like any other).
Exit codes: 0 ok, 2 usage error (unknown bank, not a local bank, a bad hash or file), 4 a sync failed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from service.cli.exits import EXIT_CONFIG, EXIT_OK, EXIT_UPSTREAM
from service.cli.options import load, start_logging
from service.config import BankSection, Config
from service.errors import BankError

FORMATS = ("csv", "jsonl", "te")  # te: python-threatexchange's "signal_type value" lines (its local_file format)
_TE_KINDS = {"pdq": "pdq", "video_md5": "md5", "md5": "md5", "sha1": "sha1"}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> Any:
    """The ``bank`` group; returns its subparsers (other modules add their ``bank`` commands to it)."""
    bank = sub.add_parser("bank", help="hash banks: list, sync, add/remove/import to curated banks, export")
    bsub = bank.add_subparsers(dest="bank_command", required=True)
    p = bsub.add_parser("list", parents=[common], help="hashes per bank and kind, category, source, last sync, "
                        "errors")
    p.add_argument("--json", action="store_true", help="one JSON object per bank")
    p.set_defaults(func=cmd_list)
    p = bsub.add_parser("sync", parents=[common], help="sync url and exchange banks now (all, or NAME); "
                        "exit 4 if one failed")
    p.add_argument("name", nargs="?", help="one bank")
    p.set_defaults(func=cmd_sync)
    p = bsub.add_parser("add", parents=[common], help="add a hash to a curated local bank file")
    p.add_argument("name", help="a bank with `path:`")
    p.add_argument("hash", help="40 (SHA-1), 32 (MD5) or 64 (PDQ) hex digits")
    p.add_argument("--category", default="", help="default: the bank's")
    p.add_argument("--source", default="", help="where the hash comes from")
    p.add_argument("--id", default="", dest="entry_id", help="the entry's id (e.g. a case number)")
    p.set_defaults(func=cmd_add)
    p = bsub.add_parser("remove", parents=[common], help="remove a hash (every entry of it) from a curated bank")
    p.add_argument("name")
    p.add_argument("hash")
    p.set_defaults(func=cmd_remove)
    p = bsub.add_parser("import", parents=[common], help="add the hashes of FILE to a curated local bank")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--bank", required=True, help="a bank with `path:`")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="csv (hash,category,source,id), jsonl, or te (python-threatexchange's `signal_type value` "
                   "lines); default: by extension (.jsonl/.json: jsonl, .txt: te, else csv)")
    p.add_argument("--source", default="", help="source of entries that name none")
    p.set_defaults(func=cmd_import)
    p = bsub.add_parser("export", parents=[common], help="write a bank's current content (CSV or JSON lines)")
    p.add_argument("name")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    p.add_argument("-o", "--output", default="-", help="a file (default: standard output)")
    p.set_defaults(func=cmd_export)
    return bsub


# ---------------------------------------------------------------------------- reading banks


def _bank(cfg: Config, name: str) -> BankSection | None:
    found = next((b for b in cfg.banks.list if b.name == name), None)
    if found is None:
        print(f"no bank named {name!r} (banks: {', '.join(b.name for b in cfg.banks.list) or 'none'})",
              file=sys.stderr)
    return found


def _curated(cfg: Config, name: str) -> BankSection | None:
    bank = _bank(cfg, name)
    if bank is not None and bank.kind != "file":
        print(f"bank {name!r} is a {bank.kind} bank: only banks with `path:` are edited here", file=sys.stderr)
        return None
    return bank


def _file_entries(bank: BankSection) -> list[tuple[str, str, str, str]]:
    from service.matchers.banks import parse_entries

    data = Path(bank.path).read_bytes() if Path(bank.path).exists() else b""
    if not data.strip():
        return []
    return [(e.hash, e.category, e.source, e.id) for e in parse_entries(bank, data)]


async def _stored(cfg: Config) -> tuple[dict[str, list[tuple[str, str, str, str]]], dict[str, Any]]:
    """Synced banks' stored entries and sync states (the store is opened only when there are synced banks)."""
    from service.store import make_stores

    managed = [b for b in cfg.banks.list if b.kind != "file"]
    if not managed:
        return {}, {}
    stores = make_stores(cfg.store)
    await stores.open()
    try:
        entries = {b.name: [(r.hash, r.category, r.source, r.entry_id)
                            for r in await stores.banksync.bank_hashes(b.name)] for b in managed}
        states = {s.bank: s for s in await stores.banksync.bank_sync_states()}
    finally:
        await stores.close()
    return entries, states


def _kind(value: str) -> str:
    return {40: "sha1", 32: "md5", 64: "pdq"}.get(len(value), "?")


# ---------------------------------------------------------------------------- list / export


def cmd_list(args: argparse.Namespace) -> int:
    cfg = load(args)
    start_logging(args, cfg, tool=True)
    stored, states = asyncio.run(_stored(cfg))
    rows: list[dict[str, Any]] = []
    for bank in cfg.banks.list:
        try:
            entries = _file_entries(bank) if bank.kind == "file" else stored.get(bank.name, [])
            problem = None
        except (BankError, OSError) as exc:
            entries, problem = [], str(exc)
        counts: dict[str, dict[str, int]] = {}
        for h, category, _, _ in entries:
            by_cat = counts.setdefault(_kind(h), {})
            by_cat[category] = by_cat.get(category, 0) + 1
        state = states.get(bank.name)
        rows.append({
            "bank": bank.name, "source": bank.kind, "location": bank.location, "category": bank.category,
            "hashes": {k: sum(v.values()) for k, v in sorted(counts.items())},
            "categories": {k: dict(sorted(v.items())) for k, v in sorted(counts.items())},
            "last_sync": _when(state.last_success) if state is not None else None,
            "errors": state.errors if state is not None else 0,
            "last_error": (state.last_error if state is not None else None) or problem,
        })
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    print(f"{'BANK':20} {'SOURCE':9} {'SHA1':>9} {'MD5':>9} {'PDQ':>9}  {'CATEGORY':18} {'LAST SYNC':20} ERRORS")
    for row in rows:
        n = row["hashes"]
        print(f"{row['bank']:20} {row['source']:9} {n.get('sha1', 0):>9} {n.get('md5', 0):>9} {n.get('pdq', 0):>9}  "
              f"{row['category']:18} {row['last_sync'] or '-':20} {row['errors']}"
              + (f"  {row['last_error']}" if row["last_error"] else ""))
        print(f"{'':20} {row['location']}")
    return EXIT_OK


def _when(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def cmd_export(args: argparse.Namespace) -> int:
    cfg = load(args)
    start_logging(args, cfg, tool=True)
    bank = _bank(cfg, args.name)
    if bank is None:
        return EXIT_CONFIG
    try:
        entries = _file_entries(bank) if bank.kind == "file" else asyncio.run(_stored(cfg))[0].get(bank.name, [])
    except (BankError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    text = _render(entries, args.format)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"{len(entries)} entries of bank {bank.name} written to {args.output}", file=sys.stderr)
    return EXIT_OK


def _render(entries: Iterable[tuple[str, str, str, str]], fmt: str) -> str:
    out = io.StringIO(newline="")
    if fmt == "jsonl":
        for h, category, source, entry_id in entries:
            out.write(json.dumps({"hash": h, "category": category, "source": source, "id": entry_id}) + "\n")
        return out.getvalue()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("hash", "category", "source", "id"))
    writer.writerows(entries)
    return out.getvalue()


# ---------------------------------------------------------------------------- curated banks


def _write(bank: BankSection, entries: list[tuple[str, str, str, str]]) -> None:
    """Rewrite the bank file atomically (a reader never sees half a file)."""
    path = Path(bank.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(_render(entries, bank.file_format))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _add(bank: BankSection, new: list[tuple[str, str, str, str]]) -> int:
    entries = _file_entries(bank)
    seen = {(h, c or bank.category, s, i) for h, c, s, i in entries}
    added = [e for e in new if (e[0], e[1] or bank.category, e[2], e[3]) not in seen]
    if added:
        _write(bank, entries + list(dict.fromkeys(added)))
    return len(set(added))


def cmd_add(args: argparse.Namespace) -> int:
    from service.matchers.banks import make_entry

    cfg = load(args)
    start_logging(args, cfg, tool=True)
    bank = _curated(cfg, args.name)
    if bank is None:
        return EXIT_CONFIG
    try:
        e = make_entry(bank, args.hash, args.category, args.source, args.entry_id, where="hash")
        added = _add(bank, [(e.hash, args.category, e.source, e.id)])
    except (BankError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"bank {bank.name}: {'added' if added else 'already has'} {e.kind} {e.hash}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    cfg = load(args)
    start_logging(args, cfg, tool=True)
    bank = _curated(cfg, args.name)
    if bank is None:
        return EXIT_CONFIG
    value = args.hash.strip().lower()
    try:
        entries = _file_entries(bank)
        kept = [e for e in entries if e[0] != value]
        if len(kept) == len(entries):
            print(f"bank {bank.name} has no entry for {value}", file=sys.stderr)
            return EXIT_CONFIG
        _write(bank, kept)
    except (BankError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"bank {bank.name}: removed {len(entries) - len(kept)} entries of {value}")
    return EXIT_OK


def read_import(bank: BankSection, path: str, fmt: str | None, source: str = "") -> list[tuple[str, str, str, str]]:
    """Entries of an import file: CSV, JSON lines, or python-threatexchange's ``signal_type value`` lines."""
    from service.matchers.banks import make_entry, parse_entries

    data = Path(path).read_bytes()
    lower = path.lower()
    fmt = fmt or ("jsonl" if lower.endswith((".jsonl", ".json")) else "te" if lower.endswith(".txt") else "csv")
    if fmt != "te":
        return [(e.hash, e.category, e.source or source, e.id) for e in parse_entries(bank, data, path=path, fmt=fmt)]
    out = []
    for line, raw in enumerate(data.decode("utf-8-sig").splitlines(), start=1):
        signal_type, _, value = raw.strip().partition(" ")
        if not signal_type:
            continue
        if signal_type not in _TE_KINDS:
            raise BankError(f"{path}:{line}: signal type {signal_type!r} cannot be matched (known: "
                            f"{', '.join(_TE_KINDS)})")
        e = make_entry(bank, value, "", source, "", where=f"{path}:{line}")
        if e.kind != _TE_KINDS[signal_type]:
            raise BankError(f"{path}:{line}: {value[:80]!r} is not a {signal_type} hash")
        out.append((e.hash, "", e.source, e.id))
    return out


def cmd_import(args: argparse.Namespace) -> int:
    cfg = load(args)
    start_logging(args, cfg, tool=True)
    bank = _curated(cfg, args.bank)
    if bank is None:
        return EXIT_CONFIG
    try:
        entries = read_import(bank, args.file, args.format, args.source)
        added = _add(bank, entries)
    except (BankError, OSError, UnicodeDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"bank {bank.name}: {added} entries added, {len(entries) - added} already present")
    return EXIT_OK


# ---------------------------------------------------------------------------- sync


def cmd_sync(args: argparse.Namespace) -> int:
    cfg = load(args, secrets=True)
    output = start_logging(args, cfg)
    managed = [b for b in cfg.banks.list if b.kind != "file"]
    if args.name:
        bank = _bank(cfg, args.name)
        if bank is None:
            return EXIT_CONFIG
        if bank.kind == "file":
            print(f"bank {bank.name!r} is a local file: nothing to sync", file=sys.stderr)
            return EXIT_CONFIG
        managed = [bank]
    if not managed:
        print("no url or exchange banks are configured", file=sys.stderr)
        return EXIT_OK
    return asyncio.run(_sync(cfg, [b.name for b in managed], output.console,
                             table=output.format == "console"))


async def _sync(cfg: Config, names: list[str], console: Any, *, table: bool) -> int:
    from service.exchanges.sync import BankSyncer
    from service.matchers.banks import BankSet
    from service.metrics import Metrics
    from service.net import Proxies
    from service.progress import Reporter, Sample
    from service.store import make_stores

    metrics = Metrics()
    stores = make_stores(cfg.store)
    await stores.open()
    failed = 0
    try:
        banks = BankSet(cfg.banks, metrics)
        syncer = BankSyncer(cfg.banks, banks, stores.banksync, metrics, user_agent=cfg.service.user_agent,
                            proxies=Proxies.for_config(cfg.network))
        await syncer.load()
        for name in names:
            now: dict[str, int] = {"records": 0, "hashes": 0}

            def progress(records: int, size: int, now: dict[str, int] = now) -> None:
                now["records"], now["hashes"] = records, size

            def sample(now: dict[str, int] = now) -> Sample:
                return Sample(completed=now["records"], total=None, fields={"hashes": now["hashes"]})

            reporter = Reporter(f"sync {name}", sample, console=console, interval=30.0, unit="records", table=table)
            stop = asyncio.Event()
            bar = asyncio.create_task(reporter.run(stop))
            try:
                result = await syncer.sync(name, progress=progress)
            finally:
                stop.set()
                await bar
            failed += not result.ok
            rows: list[tuple[str, Any]] = [("added", result.added), ("removed", result.removed),
                                           ("hashes", result.hashes), ("full list", "yes" if result.full else "no"),
                                           ("seconds", f"{result.seconds:.1f}")]
            if result.error:
                rows.append(("error", result.error))
            reporter.summary(f"bank {name}: {'synced' if result.ok else 'sync FAILED'}", rows,
                             {"bank": name, "ok": result.ok, "added": result.added, "removed": result.removed,
                              "hashes": result.hashes, "full": result.full, "error": result.error})
    finally:
        await stores.close()
    return EXIT_UPSTREAM if failed else EXIT_OK
