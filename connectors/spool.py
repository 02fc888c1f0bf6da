"""The durable spool: a write-ahead queue on local disk between a connector and Kafka.

Every encoded message (telemetry frame or dead letter) is appended here before it is handed
to the Kafka producer, and removed only once Kafka confirmed its delivery. So nothing that
was read is lost while Kafka is unreachable, or when the connector process stops or crashes:
the next start sends what is left first, in the order it was read.

Storage is one SQLite database per source (`<data dir>/spool/<source id>/spool.db`, WAL
journal, `synchronous=NORMAL`: a committed entry survives a crash of the process; a power
loss may lose the last commits). Appends are committed in batches (`commit()`, once per
publisher tick), and the source's frame sequence number is stored in the same transaction,
so a restart continues the `seq` series where the last committed frame left it.

The spool is bounded by `max_bytes` of stored message bytes (keys and values). When an
append would exceed it, the OLDEST entries not in flight are dropped to make room (like
Telegraf's metric buffer), each counted in `dropped` and logged as an error: under a long
outage the spool keeps the most recent data, and the gap shows downstream as missing `seq`.

One process at a time owns a spool directory (an exclusive lock), so two connectors for the
same source cannot interleave their sequence numbers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
import time
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.errors import TwinError

log = logging.getLogger(__name__)

DB_NAME = "spool.db"
LOCK_NAME = "spool.lock"
DEFAULT_MAX_MB = 256
_DROP_BATCH = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: the delivery order
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    seq INTEGER,                            -- frame seq; NULL for dead letters
    readings INTEGER NOT NULL DEFAULT 0,    -- readings in the frame (for counting)
    enqueued REAL NOT NULL                  -- unix time of the append
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SpoolError(TwinError):
    """The spool cannot be opened or written (locked by another process, disk, corruption)."""


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One message waiting for Kafka."""

    id: int
    topic: str
    key: bytes | None
    value: bytes
    seq: int | None
    readings: int

    @property
    def size(self) -> int:
        return len(self.value) + len(self.key or b"")

    @property
    def is_frame(self) -> bool:
        return self.seq is not None


class Spool:
    """A bounded, ordered, durable queue of encoded messages for one source."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_MB * 1024 * 1024) -> None:
        if max_bytes <= 0:
            raise SpoolError(f"spool bound must be positive, got {max_bytes} bytes")
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped = 0
        """Entries dropped (oldest first) because the bound was reached, since opening."""
        self.pinned: Container[int] = ()
        """Ids the overflow policy must not drop (the publisher's in-flight entries)."""
        self._lock_file = _lock(directory)
        try:
            self._db = _connect(directory / DB_NAME)
            row = self._db.execute(
                "SELECT count(*), count(seq), coalesce(sum(length(value) + "
                "coalesce(length(key), 0)), 0) FROM queue"
            ).fetchone()
            self._depth, self._frames, self._bytes = int(row[0]), int(row[1]), int(row[2])
            self.recovered = self._depth
            """Entries found in the spool when it was opened (left by an earlier run)."""
            self.recovered_frames = self._frames
            seq = self._db.execute("SELECT value FROM meta WHERE name = 'next_seq'").fetchone()
            self._next_seq = int(seq[0]) if seq else 0
            self._committed_seq = self._next_seq
        except sqlite3.Error as exc:
            self._unlock()
            raise SpoolError(f"cannot open the spool in {directory}: {exc}") from exc
        self._last_overflow_log = 0.0

    # -- sequence numbers -------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The `seq` the next frame of this source gets."""
        return self._next_seq

    def take_seq(self) -> int:
        """Reserve the next frame sequence number (persisted with the next commit)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    # -- queue ------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Entries waiting (committed or not), frames and dead letters."""
        return self._depth

    @property
    def frames(self) -> int:
        """Frames waiting (committed or not)."""
        return self._frames

    @property
    def size_bytes(self) -> int:
        """Stored message bytes (keys and values), what `max_bytes` bounds."""
        return self._bytes

    def append(
        self, topic: str, key: bytes | None, value: bytes, seq: int | None, readings: int = 0
    ) -> int | None:
        """Add one message at the tail; its id, or None when it alone exceeds the bound.

        Visible to `pending` and durable only after `commit()`.
        """
        size = len(value) + len(key or b"")
        if size > self.max_bytes:
            self._count_drops(1, f"a {size}-byte message is larger than the whole spool")
            return None
        if self._bytes + size > self.max_bytes:
            self._make_room(self._bytes + size - self.max_bytes)
        try:
            cursor = self._db.execute(
                "INSERT INTO queue (topic, key, value, seq, readings, enqueued) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (topic, key, value, seq, readings, time.time()),
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write to the spool in {self.directory}: {exc}") from exc
        self._depth += 1
        self._frames += seq is not None
        self._bytes += size
        return cursor.lastrowid

    def commit(self) -> None:
        """Make every append and removal so far durable, with the next frame seq."""
        try:
            if self._next_seq != self._committed_seq:
                self._db.execute(
                    "INSERT INTO meta (name, value) VALUES ('next_seq', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (self._next_seq,),
                )
            if self._db.in_transaction:
                self._db.commit()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot commit the spool in {self.directory}: {exc}") from exc
        self._committed_seq = self._next_seq

    def last_id(self) -> int:
        """The id of the newest entry ever appended (0 for a new spool)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
        return int(row[0]) if row else 0

    def frames_after(self, after_id: int) -> int:
        """How many waiting frames have an id above `after_id`."""
        row = self._db.execute("SELECT count(seq) FROM queue WHERE id > ?", (after_id,)).fetchone()
        return int(row[0])

    def pending(self, after_id: int, limit: int) -> list[SpoolEntry]:
        """Up to `limit` waiting entries with an id above `after_id`, oldest first."""
        rows = self._db.execute(
            "SELECT id, topic, key, value, seq, readings FROM queue WHERE id > ? "
            "ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [SpoolEntry(*row) for row in rows]

    def remove(self, entries: Iterable[SpoolEntry]) -> None:
        """Forget delivered entries (durable with the next commit); unknown ids are ignored."""
        for entry in entries:
            cursor = self._db.execute("DELETE FROM queue WHERE id = ?", (entry.id,))
            if cursor.rowcount:
                self._depth -= 1
                self._frames -= entry.is_frame
                self._bytes -= entry.size

    def close(self) -> None:
        """Commit and release the spool (the lock too)."""
        try:
            self.commit()
            if self._depth == 0:
                # Give back the pages a long outage left behind (auto_vacuum=INCREMENTAL).
                # executescript steps the pragma to completion (execute frees one page).
                self._db.executescript("PRAGMA incremental_vacuum;")
            self._db.close()
        finally:
            self._unlock()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- overflow ---------------------------------------------------------------------------

    def _make_room(self, needed: int) -> None:
        freed = dropped = 0
        after = 0
        while freed < needed:
            rows = self._db.execute(
                "SELECT id, seq, length(value) + coalesce(length(key), 0) FROM queue "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after, _DROP_BATCH),
            ).fetchall()
            if not rows:
                break
            for row_id, seq, size in rows:
                after = row_id
                if row_id in self.pinned:
                    continue
                self._db.execute("DELETE FROM queue WHERE id = ?", (row_id,))
                self._depth -= 1
                self._frames -= seq is not None
                self._bytes -= size
                freed += size
                dropped += 1
                if freed >= needed:
                    break
        if dropped:
            self._count_drops(dropped, f"the spool reached its bound of {self.max_bytes} bytes")

    def _count_drops(self, count: int, why: str) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._last_overflow_log >= 10.0:  # one line per 10 s, not one per frame
            self._last_overflow_log = now
            log.error(
                "spool %s: %s; dropped the oldest waiting messages (%d so far)",
                self.directory,
                why,
                self.dropped,
            )

    def _unlock(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()


def _lock(directory: Path) -> IO[bytes]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK_NAME, "ab")  # noqa: SIM115 - held until close()
    except OSError as exc:
        raise SpoolError(f"cannot create the spool in {directory}: {exc}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise SpoolError(
            f"the spool in {directory} is in use by another process "
            "(is a connector for this source already running?)"
        ) from exc
    return handle


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # effective only on a new database
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(_SCHEMA)
    db.commit()
    return db
