"""Where the site's signals live in the estimate stage's `FilterStore`, and their constants.

Every asset of the site has a slot (its position in the site file); its signals, in the asset
type's order, take consecutive store rows once the asset is first seen. Signal names get a code
(one per distinct name in the site) so that a batch's readings find their store rows with array
lookups: `offset[slot, code]` is the signal's position within its asset, -1 where the asset has
no such signal.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from pipeline.site import SignalKind, Site
from pipeline.stages.kalman import SignalConstants

Ints = npt.NDArray[np.int64]


class _Codes(dict[str, int]):
    """Signal name -> code; a name the site does not know gets the 'unknown' code."""

    def __init__(self, names: list[str]) -> None:
        super().__init__((name, code) for code, name in enumerate(names))
        self.unknown = len(names)

    def __missing__(self, name: str) -> int:
        return self.unknown


class SiteLayout:
    """The site's assets as store slots, their signals as codes, their filter constants."""

    def __init__(self, site: Site, gate: float, min_measurement_variance: float) -> None:
        self.slot = {asset.id: i for i, asset in enumerate(site.assets)}
        """Asset id -> slot."""
        self.names = [tuple(asset.signals) for asset in site.assets]
        """Signal names of each slot, in the asset type's order."""
        self.index = [{name: i for i, name in enumerate(names)} for names in self.names]
        """Signal name -> offset within the asset, per slot."""
        distinct = list(dict.fromkeys(name for names in self.names for name in names))
        self.codes = _Codes(distinct)
        self.offset: Ints = np.full((len(self.names), len(distinct) + 1), -1, dtype=np.int64)
        for slot, names in enumerate(self.names):
            self.offset[slot, [self.codes[name] for name in names]] = np.arange(len(names))
        self.size: Ints = np.array([len(names) for names in self.names], dtype=np.int64)
        self._first: Ints = np.zeros(len(self.names), dtype=np.int64)
        np.cumsum(self.size[:-1], out=self._first[1:])
        signals = [signal for asset in site.assets for signal in asset.signals.values()]
        self._signal = np.empty(len(signals), dtype=object)
        self._signal[:] = [signal.name for signal in signals]
        kinds = [signal.kind for signal in signals]
        self._constants = SignalConstants(
            q=np.array(
                [
                    0.0 if kind is SignalKind.STATE else signal.process_noise_density
                    for signal, kind in zip(signals, kinds, strict=True)
                ]
            ),
            r=np.array([max(s.measurement_noise**2, min_measurement_variance) for s in signals]),
            rate_variance0=np.array([s.max_rate**2 for s in signals]),
            max_rate=np.array([s.max_rate for s in signals]),
            gate=np.array([gate if kind is SignalKind.GAUGE else math.inf for kind in kinds]),
            passthrough=np.array([kind is SignalKind.STATE for kind in kinds], dtype=np.bool_),
        )

    def signals(self, slots: Ints) -> tuple[npt.NDArray[np.object_], SignalConstants]:
        """The names and constants of the signals of `slots`, one slot after the other."""
        rows = spans(self._first[slots], self.size[slots])
        return self._signal[rows], self._constants.take(rows)


def spans(firsts: Ints, sizes: Ints) -> Ints:
    """first, first + 1, ..., first + size - 1 for each (first, size), concatenated."""
    ends = np.cumsum(sizes)
    within = np.arange(int(ends[-1]) if ends.size else 0, dtype=np.int64)
    return np.repeat(firsts - (ends - sizes), sizes) + within
