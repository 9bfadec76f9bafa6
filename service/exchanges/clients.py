"""The hash-sharing exchanges, through python-threatexchange's clients, as one small interface.

:class:`ExchangeClient` builds the library's ``SignalExchangeAPI`` for one ``exchange:`` config (its base URL
overridable, for a proxy or a test stand-in), iterates its ``fetch_iter(checkpoint)`` and turns each
``FetchDelta`` into a :class:`Batch`: per upstream record, the hashes the service can match (SHA-1, MD5 and
PDQ, with the record's labels) or None when the record was deleted or withdrawn upstream.  Signal types the
service cannot use (TMK, PhotoDNA, ...) are counted in :attr:`Batch.skipped`.  Checkpoints go to and from
JSON for the store.  The library's clients are synchronous (requests): callers run :meth:`fetch` steps in a
thread.

Fixes over the library, kept here: StopNCII withdrawals are deletions (the library compares the hash value with
the case status, so it never deletes); NCMEC entries keep their image MD5 and SHA-1 fingerprints.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dacite
from threatexchange.exchanges import fetch_state as state
from threatexchange.exchanges.clients.fb_threatexchange.api import ThreatExchangeAPI
from threatexchange.exchanges.clients.ncmec import hash_api as ncmec_api
from threatexchange.exchanges.clients.stopncii import api as stopncii_api
from threatexchange.exchanges.clients.techagainstterrorism import api as tat_api
from threatexchange.exchanges.collab_config import CollaborationConfigBase
from threatexchange.exchanges.impl.fb_threatexchange_api import (
    FBThreatExchangeCollabConfig,
    FBThreatExchangeSignalExchangeAPI,
)
from threatexchange.exchanges.impl.ncmec_api import NCMECCollabConfig, NCMECSignalExchangeAPI
from threatexchange.exchanges.impl.stop_ncii_api import (
    StopNCIICheckpoint,
    StopNCIISignalExchangeAPI,
    StopNCIISignalMetadata,
)
from threatexchange.exchanges.impl.techagainstterrorism_api import TATSignalExchangeAPI
from threatexchange.exchanges.signal_exchange_api import AnySignalExchangeAPI
from threatexchange.signal_type.md5 import VideoMD5Signal
from threatexchange.signal_type.pdq.signal import PdqSignal

from service.config.matching import ExchangeSection
from service.errors import ExchangeError

_HEX_LENGTH = {"sha1": 40, "md5": 32, "pdq": 64}
_HEX_RE = re.compile(r"^[0-9a-f]+$")
# Signal type names as each exchange sends them -> the service's hash kinds.
_SIMPLE_KINDS = {"pdq": "pdq", "video_md5": "md5", "HASH_PDQ": "pdq", "HASH_MD5": "md5", "HASH_SHA1": "sha1"}
_NCMEC_KINDS = {"MD5": "md5", "SHA1": "sha1", "PDQ": "pdq"}
SIGNAL_TYPES = (PdqSignal, VideoMD5Signal)


@dataclass(frozen=True, slots=True)
class Signal:
    kind: str  # sha1, md5, pdq
    hash: str  # lower-case hex
    labels: tuple[str, ...] = ()


@dataclass
class Batch:
    """One ``FetchDelta``: ``updates`` maps an upstream record key to its hashes now (None: deleted)."""

    updates: dict[str, tuple[Signal, ...] | None]
    checkpoint: state.FetchCheckpointBase | None
    skipped: Counter[str] = field(default_factory=Counter)  # signal type -> records skipped


class ExchangeClient:
    """One exchange (see the module docstring); ``api`` is the python-threatexchange ``SignalExchangeAPI``."""

    def __init__(self, name: str, cfg: ExchangeSection, credentials: str) -> None:
        self.name = name
        self.cfg = cfg
        self.api: AnySignalExchangeAPI = _make_api(name, cfg, credentials)

    @property
    def checkpoint_cls(self) -> type[state.FetchCheckpointBase]:
        return self.api.get_checkpoint_cls()

    def checkpoint_to_json(self, checkpoint: state.FetchCheckpointBase | None) -> Any:
        return None if checkpoint is None else dataclasses.asdict(checkpoint)

    def checkpoint_from_json(self, data: Any) -> state.FetchCheckpointBase | None:
        """The stored checkpoint, or None (fetch from the start) when there is none or it no longer parses."""
        if not isinstance(data, dict):
            return None
        try:
            return dacite.from_dict(self.checkpoint_cls, data, config=dacite.Config(cast=[enum.Enum]))
        except (dacite.DaciteError, TypeError, ValueError):
            return None

    def fetch(self, checkpoint: state.FetchCheckpointBase | None) -> Iterator[Batch]:
        """``fetch_iter`` from ``checkpoint`` (None: everything), one :class:`Batch` per delta."""
        for delta in self.api.fetch_iter(SIGNAL_TYPES, checkpoint):
            yield self._convert(delta)

    def _convert(self, delta: state.FetchDelta[Any, Any, Any]) -> Batch:
        batch = Batch(updates={}, checkpoint=delta.checkpoint)
        if self.cfg.type == "ncmec":
            for key, entry in delta.updates.items():
                batch.updates[str(key)] = _ncmec_signals(entry, batch.skipped)
            return batch
        for key, metadata in delta.updates.items():
            type_name, value = key
            record = f"{type_name}:{value}"
            kind = _SIMPLE_KINDS.get(type_name)
            if kind is None:
                batch.skipped[str(type_name)] += 1
                continue
            if metadata is None:
                batch.updates[record] = None
                continue
            signal = _signal(kind, value, _labels(metadata))
            if signal is None:
                batch.skipped[f"invalid-{kind}"] += 1
                continue
            batch.updates[record] = (signal,)
        return batch


def _signal(kind: str, value: str, labels: tuple[str, ...]) -> Signal | None:
    value = (value or "").strip().lower()
    if len(value) != _HEX_LENGTH[kind] or not _HEX_RE.match(value):
        return None
    return Signal(kind, value, labels)


def _labels(metadata: state.FetchedSignalMetadata) -> tuple[str, ...]:
    try:
        tags = metadata.get_as_aggregate_opinion().tags
    except (AssertionError, AttributeError, TypeError):
        return ()
    return tuple(sorted(str(t) for t in tags))


def _ncmec_signals(entry: ncmec_api.NCMECEntryUpdate | None, skipped: Counter[str]) -> tuple[Signal, ...] | None:
    if entry is None or entry.deleted:
        return None
    labels = (entry.classification,) if entry.classification else ()
    out = []
    for fp_type, value in entry.fingerprints.items():
        kind = _NCMEC_KINDS.get(fp_type.upper())
        if kind is None:
            skipped[fp_type] += 1
            continue
        signal = _signal(kind, value, labels)
        if signal is None:
            skipped[f"invalid-{kind}"] += 1
            continue
        out.append(signal)
    return tuple(out)


# ---------------------------------------------------------------------- the library's APIs, base URL overridable


class _NCMEC(NCMECSignalExchangeAPI):
    base_url = ""

    def get_client(self, environment: ncmec_api.NCMECEnvironment) -> ncmec_api.NCMECHashAPI:
        client = super().get_client(environment)
        if self.base_url:
            client._base_url = self.base_url.rstrip("/")
        return client


class _StopNCII(StopNCIISignalExchangeAPI):
    """``fetch_iter`` as the library's, but a withdrawn or deleted case is a deletion."""

    def fetch_iter(self, _supported_signal_types: Any, checkpoint: Any) -> Iterator[Any]:
        start = checkpoint.update_time if checkpoint is not None else stopncii_api.StopNCIIAPI.DEFAULT_START_TIME
        gone = (stopncii_api.StopNCIICaseStatus.Withdrawn, stopncii_api.StopNCIICaseStatus.Deleted)
        for result in self.api.fetch_hashes_iter(start_timestamp=start):
            updates: dict[tuple[str, str], StopNCIISignalMetadata | None] = {}
            for r in result.hashRecords:
                name = {stopncii_api.StopNCIISignalType.ImagePDQ: "pdq",
                        stopncii_api.StopNCIISignalType.VideoMD5: "video_md5"}.get(r.signalType, r.signalType.value)
                updates[(name, r.hashValue)] = None if r.hashStatus in gone else StopNCIISignalMetadata(
                    r.CSPFeedbacks)
            yield state.FetchDelta(updates, StopNCIICheckpoint.from_stopncii_fetch(result))


class _TAT(TATSignalExchangeAPI):
    base_url = ""

    def get_client(self) -> tat_api.TATHashListAPI:
        client = super().get_client()
        if self.base_url:
            client.BASE_URL = self.base_url.rstrip("/") + "/"  # type: ignore[misc]
        return client


def _pair(credentials: str, sep: str, what: str) -> tuple[str, str]:
    first, found, second = credentials.strip().partition(sep)
    if not found or not first or not second:
        raise ExchangeError(f"credentials must be {what}", reason="auth")
    return first, second.strip()


def _make_api(name: str, cfg: ExchangeSection, credentials: str) -> AnySignalExchangeAPI:
    if cfg.type == "ncmec":
        user, password = _pair(credentials, ":", "user:password")
        env = ncmec_api.NCMECEnvironment[cfg.environment]
        ncmec = _NCMEC(NCMECCollabConfig(name=name, environment=env), user, password)
        ncmec.base_url = cfg.base_url
        return ncmec
    if cfg.type == "stopncii":
        fetch_key, subscription_key = _pair(credentials, ",", "fetch_function_key,subscription_key")
        client = stopncii_api.StopNCIIAPI(subscription_key, fetch_key, base_url_override=cfg.base_url or None)
        return _StopNCII(CollaborationConfigBase(name=name, api="stopncii", enabled=True), client)
    if cfg.type == "tcap":
        user, password = _pair(credentials, ":", "user:password")
        tat = _TAT(user, password)
        tat.base_url = cfg.base_url
        return tat
    token = credentials.strip()
    if "|" not in token:
        raise ExchangeError("credentials must be a ThreatExchange access token (app_id|secret)", reason="auth")
    te = ThreatExchangeAPI(token, endpoint_override=cfg.base_url.rstrip("/") or None)
    return FBThreatExchangeSignalExchangeAPI(te, FBThreatExchangeCollabConfig(name=name,
                                                                              privacy_group=cfg.privacy_group))


def label_category(labels: tuple[str, ...], rules: Mapping[str, str], default: str) -> str:
    """The category of the first label a rule names (labels compared case-insensitively), else ``default``."""
    for label in labels:
        category = rules.get(label.lower())
        if category:
            return category
    return default
