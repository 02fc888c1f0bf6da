"""Batches of twin.state message values to columns, for the sink.

The messages written with the newest state_estimate schema are read as columns by
`pipeline.serde.batch_read`, as `pipeline.serde.validated` reads validated frames: one polars
read of an in-memory Avro container file, timestamps as plain longs. Each decoded estimate is
encoded again from the columns, with the column writers `encode_states` uses, and kept only
if that gives back its body byte for byte: then it is exactly what fastavro reads from that
body. `States` holds a null innovation or nis as NaN and writes NaN back as null, so a body
holding a real NaN there does not come back and is left out: read as columns it would be
taken for null.

Nothing else is decoded here: every message left out (no value, another schema id or
version, another record type, a corrupt body) is named in `DecodedStates.left` for the caller
to decode one by one with `AvroSerde.decode`, which resolves older versions and says why a
message cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.serde.avro import AvroSerde
from pipeline.serde.batch_read import BatchRead, no_datetime, read_items
from pipeline.serde.columnar import state_columns
from pipeline.serde.varint import Bodies, write_bodies
from pipeline.stages.frames import States, concat_states

STATE_TYPE = "state_estimate"


@dataclass(slots=True)
class DecodedStates:
    """A decoded batch of message values: the state estimates read as columns."""

    states: States
    """The estimates read as columns, in message order."""
    rows: list[int]
    """states row i came from values[rows[i]]."""
    left: list[int]
    """Indices of the other values, in order: to be decoded one by one."""


class StatesDecoder:
    """Decodes batches of state_estimate message values into `States` (see the module doc)."""

    def __init__(self, serde: AvroSerde) -> None:
        self.serde = serde
        self._batch = BatchRead(serde, STATE_TYPE, _columns, States.take, concat_states)
        self.batch_reads = self._batch.problem is None
        """False when polars cannot read this schema's estimates: then every message is left
        to be decoded one by one."""

    def decode(self, values: list[bytes | None]) -> DecodedStates:
        """The state estimates of a batch of message values that read as columns."""
        parts, left = self._batch.read(values, self.batch_reads)
        if not parts:
            return DecodedStates(concat_states([]), [], left)
        states, rows = self._batch.merge(parts)
        return DecodedStates(states, rows, left)


def _columns(data: bytes, count: int) -> tuple[States, Bodies, npt.NDArray[np.bool_]]:
    """The state estimates of a container file (`pipeline.serde.batch_read.Columns`)."""
    read = read_items(data, count, "signals")
    table, items = read.table, read.items

    def floats(name: str) -> npt.NDArray[np.float64]:
        # A null innovation or nis is NaN, as States holds it.
        return items.get_column(name).fill_null(np.nan).to_numpy().astype(np.float64)

    def flags(name: str) -> npt.NDArray[np.bool_]:
        return items.get_column(name).to_numpy().astype(np.bool_)

    states = States(
        asset_id=table.get_column("asset_id").to_list(),
        source_id=table.get_column("source_id").to_list(),
        seq=table.get_column("seq").to_numpy().astype(np.int64),
        ts_us=table.get_column("ts").to_numpy().astype(np.int64),
        ingest_us=table.get_column("ingest_ts").to_numpy().astype(np.int64),
        bounds=read.bounds,
        signal=read.signal_names(),
        value=floats("value"),
        rate=floats("rate"),
        variance=floats("variance"),
        rate_variance=floats("rate_variance"),
        innovation=floats("innovation"),
        nis=floats("nis"),
        outlier=flags("outlier"),
        measured=flags("measured"),
    )
    head, signals = state_columns(states, read.signal_pieces())
    again = write_bodies(head, states.bounds, signals)
    # What AvroSerde.decode cannot turn into a record: a timestamp no datetime can hold.
    unreadable = no_datetime(states.ts_us) | no_datetime(states.ingest_us)
    return states, again, unreadable
