from __future__ import annotations

import random

import pytest

from service.watermark import Watermark


def test_moves_only_past_contiguous_done() -> None:
    wm = Watermark()
    seqs = [wm.track(f"p{i}") for i in range(5)]
    wm.done(seqs[1])
    wm.done(seqs[2])
    assert wm.safe_position is None and wm.take_changed() is None
    wm.done(seqs[0])
    assert wm.take_changed() == "p2"
    assert wm.take_changed() is None
    wm.done(seqs[4])
    assert wm.safe_position == "p2" and wm.pending == 2
    wm.done(seqs[3])
    assert wm.safe_position == "p4" and wm.pending == 0


def test_random_order_never_passes_an_unfinished_event() -> None:
    rng = random.Random(7)
    wm = Watermark()
    seqs = [wm.track(i) for i in range(500)]
    order = seqs[:]
    rng.shuffle(order)
    finished: set[int] = set()
    for s in order:
        wm.done(s)
        finished.add(s)
        safe = wm.safe_position
        if safe is not None:
            assert all(i in finished for i in range(safe + 1))
    assert wm.safe_position == 499


def test_double_done_is_an_error() -> None:
    wm = Watermark()
    s = wm.track("a")
    wm.done(s)
    with pytest.raises(ValueError):
        wm.done(s)
