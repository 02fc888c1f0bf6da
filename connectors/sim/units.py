"""Engineering units as OPC UA EUInformation ids (UNECE Recommendation 20 common codes).

OPC UA Part 8 derives a unit's `UnitId` from its UNECE common code: the code's ASCII bytes
read as one big-endian integer ("CEL" -> 0x43454C). Units without a code here get -1
("no id"); the display name still carries the unit as the site file writes it.
"""

from __future__ import annotations

UNECE_CODES = {
    "degC": "CEL",
    "bar": "BAR",
    "A": "AMP",
    "kW": "KWT",
    "m/s": "MTS",
    "kg": "KGM",
    "h": "HUR",
    "m3": "MTQ",
    "m3/h": "MQH",
    "%": "P1",
    "rpm": "RPM",
    "s": "SEC",
    "V": "VLT",
    "Hz": "HTZ",
}


def unece_unit_id(unit: str) -> int:
    code = UNECE_CODES.get(unit)
    if code is None:
        return -1
    return int.from_bytes(code.encode("ascii"), "big")
