"""Decode a video with PyAV in a decode worker: sampled frames, each PDQ-hashed (the vPDQ signature).

:func:`prepare_video` is a top-level pure function for the decode pool (:mod:`service.media.pool`): it
takes the path of the original (streamed to a temporary file by the fetcher) and returns a
:class:`~service.models.PreparedMedia` whose ``frames`` are the sampled frames, or raises
:class:`~service.errors.Unscannable`.

Sampling follows the reference ``vpdq``: every decoded frame is looked at, one frame per ``1 /
sample_rate`` seconds of presentation time is hashed (the first frame always), frames whose PDQ quality is
below ``quality_min`` are dropped from the signature.  ``frame_number`` is the index of the decoded frame
and ``timestamp`` its presentation time in seconds, as in the reference's output lines
(``frame_number,quality,pdq_hex,timestamp``; see :func:`vpdq_lines`).

Budgets: the container's duration and the frame size are checked before decoding (``too-long``,
``too-large-decoded``); the decode loop stops at ``decode_budget`` seconds (``decode-timeout``).  A
decoder that never returns control to Python is stopped by the kernel: in a pool worker the process gets
a CPU-time timer of twice the budget whose signal ends it (the pool then retries the file once, alone, and
ends it ``unscannable:decoder-crashed``).  The worker's address-space ceiling bounds memory.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pdqhash
from PIL import Image

from service.config.matching import ThumbnailSection
from service.config.media import VideoSection
from service.errors import Unscannable
from service.media.thumbnail import _make_jpeg, pdq_bytes
from service.models import KIND_AUDIO, KIND_VIDEO, FrameHash, PreparedMedia

log = logging.getLogger(__name__)

_AV_TIME_BASE = 1_000_000  # container.duration is in microseconds
_DISTINCT = 31  # keyframes further apart than this (PDQ bits) show different pictures
WALL_FACTOR = 3.0  # a decode also stops after this many times its CPU budget in wall-clock time


class _Budget:
    """``decode_budget`` seconds of this thread's CPU time (fair on a loaded machine: the decoder runs in the
    calling thread), and at most ``WALL_FACTOR`` times that in wall-clock time."""

    def __init__(self, seconds: float) -> None:
        self.cpu_end = time.thread_time() + seconds
        self.wall_end = time.monotonic() + seconds * WALL_FACTOR

    def spent(self) -> bool:
        return time.thread_time() > self.cpu_end or time.monotonic() > self.wall_end


def prepare_video(
    path: str,
    sha1: str,
    md5: str | None,
    cfg: VideoSection,
    thumb_cfg: ThumbnailSection,
) -> PreparedMedia:
    """Sample, hash and (when ``thumb_cfg.make_jpeg``) pick the best keyframe of the video at ``path``.

    A file without a video stream (an Ogg with audio only) comes back as ``kind="audio"`` (exact hashes
    only).  Raises :class:`Unscannable`: ``undecodable``, ``too-long``, ``too-large-decoded``,
    ``decode-timeout``.
    """
    import av  # imported here: the image-only paths never load FFmpeg

    budget = _Budget(cfg.decode_budget)
    with cpu_kill_timer(cfg.decode_budget * 2):
        try:
            container = av.open(path, mode="r", metadata_errors="ignore")
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
            raise Unscannable("undecodable", f"not a readable media file: {exc}") from exc
        try:
            if not container.streams.video:
                if not container.streams.audio:
                    raise Unscannable("undecodable", "no video or audio stream")
                return PreparedMedia(sha1=sha1, md5=md5, pdq=None, jpeg=None, width=0, height=0,
                                     source="original", kind=KIND_AUDIO)
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            if duration is not None and duration > cfg.max_duration:
                raise Unscannable("too-long", f"{duration:.0f} s of video (> {cfg.max_duration:.0f} s)")
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > cfg.max_frame_pixels:
                raise Unscannable("too-large-decoded", f"{width}x{height} frames (> {cfg.max_frame_pixels} pixels)")
            stream.thread_type = "SLICE"
            stream.codec_context.thread_count = 1  # one decode worker is one core
            return _sample(container, stream, sha1, md5, cfg, thumb_cfg, budget, duration)
        finally:
            container.close()


def _sample(container: object, stream: object, sha1: str, md5: str | None, cfg: VideoSection,
            thumb_cfg: ThumbnailSection, budget: _Budget, duration: float | None) -> PreparedMedia:
    import av

    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0  # type: ignore[attr-defined]
    step = 1.0 / cfg.sample_rate
    next_t = 0.0
    frames: list[FrameHash] = []
    sampled = 0
    best: list[tuple[int, float, bytes, np.ndarray]] = []  # keyframe candidates: quality, time, PDQ, pixels
    want_keyframes = cfg.photodna_keyframes if thumb_cfg.make_jpeg else 0
    last_t = 0.0
    width = height = 0
    index = -1
    try:
        for frame in container.decode(stream):  # type: ignore[attr-defined]
            index += 1
            if budget.spent():
                raise Unscannable("decode-timeout", f"decoding took more than {cfg.decode_budget:.0f} s of CPU "
                                                    f"(or {WALL_FACTOR:.0f} times that in wall time; {sampled} "
                                                    "frames hashed)")
            t = frame.time if frame.time is not None else index / fps
            last_t = max(last_t, t)
            if t > cfg.max_duration:
                raise Unscannable("too-long", f"frames past {cfg.max_duration:.0f} s")
            if sampled and t + 1e-6 < next_t:
                continue
            if frame.width * frame.height > cfg.max_frame_pixels:
                raise Unscannable("too-large-decoded", f"{frame.width}x{frame.height} frame")
            width, height = frame.width, frame.height
            scale = min(1.0, cfg.frame_max_side / max(frame.width, frame.height))
            rgb = frame.to_ndarray(width=max(1, round(frame.width * scale)),
                                   height=max(1, round(frame.height * scale)), format="rgb24")
            vector, quality = pdqhash.compute(rgb)
            sampled += 1
            next_t = (math.floor(t / step + 1e-6) + 1) * step
            if quality >= cfg.quality_min:
                frames.append(FrameHash(frame_number=index, timestamp=round(float(t), 3),
                                        pdq=pdq_bytes(vector), quality=int(quality)))
                if want_keyframes:
                    _keep_keyframe(best, (int(quality), round(float(t), 3), frames[-1].pdq, rgb), want_keyframes)
            if sampled >= cfg.max_frames:
                log.info("video %s: frame cap of %d reached at %.1f s", sha1, cfg.max_frames, t)
                break
    except (av.FFmpegError, ValueError, OverflowError) as exc:
        if sampled == 0:
            raise Unscannable("undecodable", f"{type(exc).__name__}: {exc}") from exc
        log.info("video %s: decoding stopped at frame %d (%s); keeping the %d frames hashed", sha1, index,
                 exc, sampled)
    if sampled == 0:
        raise Unscannable("undecodable", "no video frame could be decoded")
    keyframes: list[tuple[float, bytes]] = []
    for _, t, _, rgb in best:
        img = Image.fromarray(rgb, "RGB")
        jpeg = _make_jpeg(img, img, thumb_cfg)
        if jpeg is not None:
            keyframes.append((t, jpeg))
    return PreparedMedia(
        sha1=sha1, md5=md5, pdq=None, jpeg=keyframes[0][1] if keyframes else None, width=width, height=height,
        source="original", kind=KIND_VIDEO, frames=tuple(frames), frames_sampled=sampled,
        duration=duration if duration is not None else last_t, keyframes=tuple(keyframes),
    )


def _keep_keyframe(best: list[tuple[int, float, bytes, np.ndarray]], candidate: tuple[int, float, bytes, np.ndarray],
                   limit: int) -> None:
    """Keep the ``limit`` highest-quality frames that differ (PDQ distance > 31): the keyframes sent to PhotoDNA,
    best first.  A near-duplicate of a kept frame replaces it only when of higher quality."""
    quality, _, pdq, _ = candidate
    value = int.from_bytes(pdq, "big")
    for i, kept in enumerate(best):
        if (value ^ int.from_bytes(kept[2], "big")).bit_count() <= _DISTINCT:
            if quality > kept[0]:
                best[i] = candidate
                best.sort(key=lambda k: -k[0])
            return
    best.append(candidate)
    best.sort(key=lambda k: -k[0])
    del best[limit:]


def _duration(container: object, stream: object) -> float | None:
    """Seconds, from the container (or the stream) header; None when neither says."""
    d = getattr(container, "duration", None)
    if d:
        return float(d) / _AV_TIME_BASE
    sd, tb = getattr(stream, "duration", None), getattr(stream, "time_base", None)
    if sd and tb:
        return float(sd * tb)
    return None


@contextmanager
def cpu_kill_timer(seconds: float) -> Iterator[None]:
    """In a pool worker's main thread: a CPU-time timer whose signal (SIGPROF, default action) ends the process
    if the decoder spins without returning to Python.  Elsewhere (threads, the service's own process): nothing,
    the loop's own deadline check is all there is."""
    in_worker = multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread()
    if not in_worker:
        yield
        return
    previous = signal.signal(signal.SIGPROF, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def vpdq_lines(frames: tuple[FrameHash, ...] | list[FrameHash]) -> list[str]:
    """The signature in the reference ``vpdq`` output format: ``frame_number,quality,pdq_hex,timestamp``."""
    return [f"{f.frame_number},{f.quality},{f.pdq.hex()},{f.timestamp:.3f}" for f in frames]


def frame_png(path: str, seconds: float, *, max_side: int = 960, budget: float = 30.0) -> bytes:
    """The frame shown at ``seconds`` (the first at or after it; the last one if the video is shorter), as PNG:
    what the review page blurs and greys like an image preview.  Raises :class:`Unscannable`."""
    import io

    import av

    deadline = time.monotonic() + budget
    try:
        with av.open(path, mode="r", metadata_errors="ignore") as container:
            if not container.streams.video:
                raise Unscannable("undecodable", "no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if (frame.time or 0.0) + 1e-6 >= seconds or time.monotonic() > deadline:
                    break
            if chosen is None:
                raise Unscannable("undecodable", "no video frame")
            scale = min(1.0, max_side / max(chosen.width, chosen.height))
            img = chosen.to_image(width=max(1, round(chosen.width * scale)),
                                  height=max(1, round(chosen.height * scale)))
    except (av.FFmpegError, ValueError) as exc:
        raise Unscannable("undecodable", f"{type(exc).__name__}: {exc}") from exc
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()
