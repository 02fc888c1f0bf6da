"""The durable spool: order, durability across reopening, the bound, sequence numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.spool import Spool, SpoolError


def fill(spool: Spool, count: int, size: int = 10, topic: str = "telemetry.raw") -> list[int]:
    ids = []
    for _ in range(count):
        seq = spool.take_seq()
        entry_id = spool.append(topic, b"pump-01", bytes([seq % 256]) * size, seq, readings=3)
        assert entry_id is not None
        ids.append(entry_id)
    spool.commit()
    return ids


def test_entries_come_back_in_append_order_and_leave_when_removed(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        fill(spool, 5)
        spool.append("telemetry.deadletter", None, b"dead", None)
        spool.commit()
        pending = spool.pending(0, 100)
        assert [e.seq for e in pending] == [0, 1, 2, 3, 4, None]
        assert [e.id for e in pending] == sorted(e.id for e in pending)
        assert pending[-1].topic == "telemetry.deadletter" and not pending[-1].is_frame
        assert (spool.depth, spool.frames) == (6, 5)

        spool.remove([pending[1], pending[3]])
        spool.commit()
        assert [e.seq for e in spool.pending(0, 100)] == [0, 2, 4, None]
        assert [e.seq for e in spool.pending(pending[2].id, 2)] == [4, None]
        assert (spool.depth, spool.frames) == (4, 3)


def test_committed_entries_and_the_next_seq_survive_reopening(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        fill(spool, 4)
        spool.remove(spool.pending(0, 1))  # the first one was delivered
        spool.commit()
    with Spool(tmp_path) as again:
        assert again.recovered == 3 and again.recovered_frames == 3
        assert [e.seq for e in again.pending(0, 100)] == [1, 2, 3]
        assert again.next_seq == 4
        assert again.take_seq() == 4
        fill(again, 1)  # takes seq 5
    with Spool(tmp_path) as third:
        assert [e.seq for e in third.pending(0, 100)] == [1, 2, 3, 5]
        assert third.next_seq == 6


def test_ids_are_never_reused_after_the_spool_empties(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        first = fill(spool, 2)
        spool.remove(spool.pending(0, 10))
        spool.commit()
        assert spool.depth == 0
        second = fill(spool, 1)
        assert second[0] > max(first)
        assert spool.last_id() == second[0]


def test_at_the_bound_the_oldest_entries_not_in_flight_are_dropped(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=100) as spool:
        ids = fill(spool, 5, size=13)  # 5 x (13 + 7 key bytes) = 100 bytes: exactly full
        assert spool.size_bytes == 100 and spool.dropped == 0
        spool.pinned = {ids[0]}  # the oldest is in flight: keep it
        fill(spool, 2, size=13)
        seqs = [e.seq for e in spool.pending(0, 100)]
        assert seqs == [0, 3, 4, 5, 6]
        assert spool.dropped == 2
        assert spool.size_bytes <= 100


def test_a_message_larger_than_the_whole_spool_is_dropped_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=50) as spool:
        fill(spool, 1, size=10)
        assert spool.append("telemetry.raw", b"k", b"x" * 60, spool.take_seq()) is None
        assert spool.dropped == 1
        assert [e.seq for e in spool.pending(0, 10)] == [0]


def test_one_process_at_a_time_owns_a_spool(tmp_path: Path) -> None:
    with Spool(tmp_path), pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path)
    with Spool(tmp_path) as again:  # released on close
        assert again.depth == 0


def test_the_bound_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="positive"):
        Spool(tmp_path, max_bytes=0)


def test_an_emptied_spool_gives_its_disk_space_back_on_close(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        fill(spool, 2000, size=500)
        spool.remove(spool.pending(0, 10_000))
        spool.commit()
    assert (tmp_path / "spool.db").stat().st_size < 100_000  # ~1 MB while it was full
