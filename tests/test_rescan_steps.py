"""The rescanner records what it finds with the pipeline's own steps: the same decode, and the same
record (allowlist, planners, metrics, outbox) as a live upload."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.config import MediaSection, RescanSection, ThumbnailSection, WikiSection
from service.config.media import AnimationSection, VideoSection
from service.metrics import Metrics
from service.models import FetchedMedia, FileInfo, Match, PreparedMedia, UploadEvent
from service.negative_bank import NegativeBank
from service.rescan import Rescanner
from service.store.base import REMOTE_MATCH, NewAction, OutboxItem, RemoteScan, RemoteScanRow, ScanRecord
from tests.test_rescan import NOW, WIKI, sha, upload


class Fetcher:
    async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia:
        info = FileInfo(title=title, url="u", description_url="d", sha1=expected_sha1, size=3, width=1, height=1,
                        mime="image/jpeg", mediatype="BITMAP")
        return FetchedMedia(info=info, data=b"jpg", data_source="original", original_md5="5" * 32)


def fake_prepare(data: bytes, sha1: str, cfg: ThumbnailSection, *, md5: str | None = None,
                 source: str = "original") -> PreparedMedia:
    return PreparedMedia(sha1=sha1, md5=md5, pdq=None, jpeg=data, width=1, height=1, source=source)


class Remote:
    """A remote matcher that finds every item in two banks."""

    name = "photodna"
    authorized = True

    def can_send(self) -> bool:
        return True

    async def match(self, media: PreparedMedia, *, background: bool = False) -> list[Match]:
        assert background
        return [Match("photodna", "photodna:NCMEC", "child-protection", f"m-{media.sha1[-2:]}", "h"),
                Match("photodna", "photodna:IWF", "child-protection", f"i-{media.sha1[-2:]}", "h")]

    async def aclose(self) -> None:
        return None


class Budget:
    def spare(self, reserve: float = 0.0) -> int:
        return 10


class Store:
    """The rescanner's store in memory: the stale rows it is given, what it records, one allowlisted bank."""

    def __init__(self, rows: Sequence[RemoteScanRow], allowlisted: dict[str, frozenset[str]]) -> None:
        self.rows = list(rows)
        self.allowlisted = allowlisted
        self.recorded: list[tuple[str, list[Match], list[NewAction]]] = []
        self.scans: dict[str, ScanRecord] = {}
        self.remote: list[RemoteScan] = []

    async def retry_remote_failures_now(self, matcher: str, now: float) -> int:
        return 0

    async def due_remote_retries(self, matcher: str, now: float, limit: int) -> list[RemoteScanRow]:
        return []

    async def stale_remote_scans(self, matcher: str, clean_before: float, limit: int) -> list[RemoteScanRow]:
        rows, self.rows = self.rows[:limit], self.rows[limit:]
        return rows

    async def put_remote_scans(self, scans: Sequence[RemoteScan]) -> None:
        self.remote += scans

    async def record_matches(self, event: UploadEvent, sha1: str, matches: Sequence[Match],
                             actions: Sequence[NewAction]) -> list[OutboxItem]:
        self.recorded.append((sha1, list(matches), list(actions)))
        return [OutboxItem(id=len(self.recorded), key=a.key, kind=a.kind, payload=dict(a.payload)) for a in actions]

    async def get_scan(self, sha1: str) -> ScanRecord | None:
        return self.scans.get(sha1)

    async def put_scan(self, record: ScanRecord) -> None:
        self.scans[record.sha1] = record

    async def allowlisted_banks(self, sha1: str) -> frozenset[str]:
        return self.allowlisted.get(sha1, frozenset())

    async def content_pdq(self, sha1: str) -> str | None:
        return None

    async def supersede_outcomes(self, sha1: str, event_id: str | None, prefix: str, outcome: str) -> list[str]:
        return []  # no upload of these old clean contents ended in an error


def row(n: int) -> RemoteScanRow:
    return RemoteScanRow(sha1=sha(n), matcher="photodna", state="clean", scanned_at=NOW - 200 * 86400,
                         clean_at=NOW - 200 * 86400, failures=0, next_attempt_at=None, upload=upload(n),
                         last_error=None)


def planner(event: UploadEvent, sha1: str, matches: Sequence[Match]) -> list[NewAction]:
    return [NewAction(key=f"notify:{event.title}:{m.bank}", kind="notify", payload={}) for m in matches]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_rescan_match_is_recorded_like_a_live_one_allowlist_and_metrics_included() -> None:
    store = Store([row(1), row(2)], allowlisted={sha(1): frozenset({"photodna:IWF"}),
                                                 sha(2): frozenset({"photodna:IWF", "photodna:NCMEC"})})
    metrics = Metrics()
    kicked: list[OutboxItem] = []
    prepared: list[dict[str, Any]] = []

    def recording_prepare(data: bytes, sha1: str, cfg: ThumbnailSection, **kw: Any) -> PreparedMedia:
        prepared.append(kw)
        return fake_prepare(data, sha1, cfg, **kw)

    rescanner = Rescanner(
        RescanSection(concurrency=1, budget_reserve=0.0), matcher=Remote(), budget=Budget(),  # type: ignore[arg-type]
        store=store, fetcher=Fetcher(), wikis={"testwiki": WIKI}, prepare=recording_prepare, cpu=None,
        thumbnail_cfg=ThumbnailSection(), planners=[planner], metrics=metrics, scan_version=lambda: "v1+photodna",
        on_actions=kicked.extend, clock=lambda: NOW, allowlist=NegativeBank(store),
    )
    assert await rescanner.run_once() == {REMOTE_MATCH: 2}
    # Decoded as the thumbnail stage does: the original's MD5 and where the bytes came from.
    assert prepared == [{"md5": "5" * 32, "source": "original"}] * 2
    # Upload 1: the dismissed bank is dropped, the other notifies; upload 2: every bank dismissed, nothing.
    assert [(s, [m.bank for m in ms], [a.key for a in acts]) for s, ms, acts in store.recorded] == [
        (sha(1), ["photodna:NCMEC"], ["notify:File:Old 1.jpg:photodna:NCMEC"])]
    assert [i.key for i in kicked] == ["notify:File:Old 1.jpg:photodna:NCMEC"]
    assert [m.bank for m in store.scans[sha(1)].matches] == ["photodna:NCMEC"] and sha(2) not in store.scans
    assert [(r.sha1, r.state) for r in store.remote] == [(sha(1), REMOTE_MATCH), (sha(2), REMOTE_MATCH)]
    # Counted like the pipeline counts: every match found, and each dismissed one as allowlisted.
    assert sample(metrics, "mediamoderation_matches_total", category="child-protection", matcher="photodna") == 4
    assert sample(metrics, "mediamoderation_allowlisted_matches_total", bank="photodna:IWF") == 2
    assert sample(metrics, "mediamoderation_allowlisted_matches_total", bank="photodna:NCMEC") == 1


async def test_the_rescanner_decodes_video_and_animation_with_the_live_media_config(tmp_path: Path) -> None:
    """The rescanner gets the service's ``media`` section: a video is sampled at its rate and cap, keyframes
    sent as the live pipeline sends them, an animated GIF sampled by the animation settings."""
    from service.media.thumbnail import prepare
    from tests.infra import images, videos

    clip = videos.video(videos.moving(9400, 6), fps=10)
    gif = videos.animated_gif([images.photo(9450 + i) for i in range(5)])

    class MediaFetcher:
        async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia:
            if "1" in title:  # the video, streamed to a temporary file the decode step deletes
                path = tmp_path / "clip.webm"
                path.write_bytes(clip)
                info = FileInfo(title=title, url="u", description_url="d", sha1=expected_sha1 or "", size=len(clip),
                                width=320, height=240, mime="video/webm", mediatype="VIDEO")
                return FetchedMedia(info=info, data=b"", data_source="original", kind="video", path=str(path))
            info = FileInfo(title=title, url="u", description_url="d", sha1=expected_sha1 or "", size=len(gif),
                            width=320, height=240, mime="image/gif", mediatype="BITMAP")
            return FetchedMedia(info=info, data=gif, data_source="original")

    seen: dict[str, PreparedMedia] = {}

    class Recording(Remote):
        async def match(self, media: PreparedMedia, *, background: bool = False) -> list[Match]:
            seen.setdefault(media.sha1, media)
            return []

    media = MediaSection(video=VideoSection(sample_rate=2.0, max_frames=5, photodna_keyframes=2),
                         animation=AnimationSection(max_frames=3))
    metrics = Metrics()
    rescanner = Rescanner(
        RescanSection(concurrency=1, budget_reserve=0.0), matcher=Recording(), budget=Budget(),  # type: ignore[arg-type]
        store=Store([row(1), row(2)], {}), fetcher=MediaFetcher(), wikis={"testwiki": WIKI}, prepare=prepare,
        cpu=None, thumbnail_cfg=ThumbnailSection(make_jpeg=True), planners=[planner], metrics=metrics,
        scan_version=lambda: "v1+photodna", clock=lambda: NOW, media=media,
    )
    assert await rescanner.run_once() == {"clean": 2}
    video, anim = seen[sha(1)], seen[sha(2)]
    assert video.kind == "video" and video.frames_sampled == 5  # 2 a second, capped at 5
    assert [f.timestamp for f in video.frames] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert len(video.keyframes) == 2
    assert anim.frames_sampled == 3  # animation.max_frames
    assert not (tmp_path / "clip.webm").exists()  # the temporary file is deleted after decoding
    assert sample(metrics, "mediamoderation_frames_hashed_total", kind="video") == 5
