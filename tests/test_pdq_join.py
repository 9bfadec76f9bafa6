"""pdq_join: every pair within the radius between many stored hashes and a few new ones, exactly as brute force."""

from __future__ import annotations

import numpy as np
import pytest

from service.matchers import pdq_join


def brute_force(stored: np.ndarray, new: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    dist = np.bitwise_count(stored[:, None, :] ^ new[None, :, :]).sum(axis=2)
    return {(int(a), int(b), int(dist[a, b])) for a, b in zip(*np.nonzero(dist <= radius), strict=True)}


def planted(seed: int, n_stored: int, n_new: int) -> tuple[np.ndarray, np.ndarray]:
    """Random hashes; the first half of the new ones are stored ones with 0-40 bits flipped."""
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 2**64, size=(n_stored, 4), dtype=np.uint64)
    new = rng.integers(0, 2**64, size=(n_new, 4), dtype=np.uint64)
    for k in range(n_new // 2):
        row = stored[int(rng.integers(n_stored))].copy()
        for bit in rng.choice(256, int(rng.integers(0, 41)), replace=False):
            row[bit // 64] ^= np.uint64(1 << int(bit % 64))
        new[k] = row
    return stored, new


@pytest.mark.parametrize("radius", [0, 7, 8, 23, 31, 40])
def test_join_is_brute_force(radius: int) -> None:
    stored, new = planted(radius, 20_000, 120)
    rows, cols, dist = pdq_join.join(stored, new, radius)
    got = list(zip(rows.tolist(), cols.tolist(), dist.tolist(), strict=True))
    assert len(got) == len(set(got))  # each pair once
    assert set(got) == brute_force(stored, new, radius)
    if radius >= 31:
        assert len(got) >= 40  # the planted pairs within range are there


def test_pieces_and_blocks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    stored, new = planted(5, 5_000, 60)
    expected = brute_force(stored, new, 31)
    monkeypatch.setattr(pdq_join, "KEY_BUDGET", 5489 * 7)  # pieces of 7 new hashes
    monkeypatch.setattr(pdq_join, "BLOCK", 999)  # and blocks of 999 stored ones
    ticks = []
    rows, cols, dist = pdq_join.join(stored, new, 31, tick=lambda: ticks.append(1))
    assert set(zip(rows.tolist(), cols.tolist(), dist.tolist(), strict=True)) == expected
    assert len(ticks) >= 9 * 8 * 6  # the caller's duty cycle gets a say between blocks


def test_nothing_in_nothing_out() -> None:
    empty = np.empty((0, 4), np.uint64)
    one = np.zeros((1, 4), np.uint64)
    for a, b in ((empty, one), (one, empty)):
        assert all(x.size == 0 for x in pdq_join.join(a, b, 31))
    assert all(x.size == 0 for x in pdq_join.join(one, one, -1))
