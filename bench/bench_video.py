#!/usr/bin/env python3
"""Video hashing throughput on one core.  Run: ``python bench/bench_video.py [--quick]``.

For 720p and 1080p WebM (VP9) and MPEG-4 files generated here (a slow pan over generated photos, so the
codec has real work), each measured in a fresh one-process worker like the decode pool's:

* ``service``: :func:`service.media.video.prepare_video` (decode every frame, hash 1 frame/s with PDQ);
  sampled frames per second and video seconds per second, by CPU time (per core) and wall time;
* ``decode only`` (baseline, same run): PyAV decoding every frame, no conversion, no hashing;
* ``vpdq`` (reference hasher, same files) when the ``vpdq`` package can be imported;
* peak RSS of the worker (VmHWM).

The machine may be shared: CPU-time rates are the per-core figures, wall-time rates show the load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from service.config import ThumbnailSection  # noqa: E402
from service.config.media import VideoSection  # noqa: E402
from service.media.video import prepare_video  # noqa: E402
from tests.infra.images import photo  # noqa: E402

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
CODECS = {"webm-vp9": ("webm", "libvpx-vp9"), "mpeg4": ("mp4", "mpeg4")}


def make_video(path: Path, size: tuple[int, int], fmt: str, codec: str, seconds: int, fps: int = 25) -> None:
    """A pan over a new generated photo each second: every frame differs from the last."""
    w, h = size
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = w * h * 3  # ~2.8 Mbit/s at 720p, ~6 Mbit/s at 1080p
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for s in range(seconds):
            big = np.asarray(photo(9000 + s, (w + fps * 4, h)).convert("RGB"))
            for i in range(fps):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[:, i * 4:i * 4 + w]), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _measure(kind: str, path: str) -> dict[str, Any]:  # runs in a fresh worker process
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "service":
        media = prepare_video(path, "0" * 40, None, VideoSection(), ThumbnailSection())
        sampled = media.frames_sampled
    elif kind == "decode only":
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            frames = sum(1 for _ in container.decode(stream))
        sampled = -(-frames // 25)  # what the service samples at 1 frame/s
    else:  # the reference vpdq hasher, 1 frame per second
        import vpdq  # type: ignore[import-not-found]

        sampled = len(vpdq.computeHash(path, seconds_per_hash=1, downsample_width=0, downsample_height=0,
                                       thread_count=1))
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "sampled": sampled,
            "rss": _peak_rss_mib()}


def run_fresh(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """One call in a new worker process (peak RSS is that worker's own)."""
    with ProcessPoolExecutor(1, mp_context=get_context("forkserver")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s videos instead of 10 s")
    args = parser.parse_args()
    seconds = 4 if args.quick else 10
    try:
        import vpdq  # type: ignore[import-not-found]  # noqa: F401

        kinds = ["service", "decode only", "vpdq"]
    except ImportError:
        kinds = ["service", "decode only"]
        print("reference vpdq hasher: not importable here (pip install vpdq needs FFmpeg development headers)")
    print(f"{os.cpu_count()} CPUs (shared machine); {seconds} s videos at 25 fps; 1 frame/s sampled; "
          "rates per core from CPU time, wall time in brackets")
    print(f"{'file':<16} {'hasher':<12} {'frames/s':>16} {'video s/s':>16} {'peak RSS':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for size_name, size in SIZES.items():
            for codec_name, (fmt, codec) in CODECS.items():
                path = Path(tmp) / f"{size_name}-{codec_name}.{fmt}"
                make_video(path, size, fmt, codec, seconds)
                for kind in kinds:
                    r = run_fresh(_measure, kind, str(path))
                    per_cpu, per_wall = r["sampled"] / r["cpu"], r["sampled"] / r["wall"]
                    vs_cpu, vs_wall = seconds / r["cpu"], seconds / r["wall"]
                    print(f"{size_name + ' ' + codec_name:<16} {kind:<12} {per_cpu:7.1f} ({per_wall:6.1f}) "
                          f"{vs_cpu:7.1f} ({vs_wall:6.1f}) {r['rss']:6.0f} MiB")


if __name__ == "__main__":
    main()
