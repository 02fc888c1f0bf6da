"""The anomaly stage: conformance (state, memory, warm-up, protection) and detection."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.site import Site, parse_site
from pipeline.stages.anomaly import AnomalyDetector, AnomalyError, AnomalySettings
from pipeline.stages.anomaly_model import P2Quantile, unpack_floats
from pipeline.stages.common import StageStateError

T0 = datetime(2024, 5, 1, tzinfo=UTC)
SIGNALS = ("flow", "pressure", "temperature")


def site_with(signals: tuple[str, ...] = SIGNALS) -> Site:
    spec = {
        "kind": "gauge",
        "unit": "1",
        "physical": {"min": -1000, "max": 1000},
        "expected": {"min": -100, "max": 100},
        "max_rate": 10.0,
        "sampling_period": "1s",
        "measurement_noise": 0.1,
    }
    data = {
        "name": "test",
        "sources": {"src": {"kind": "mqtt", "broker": "mqtt://127.0.0.1:1883"}},
        "lines": {"l1": {"name": "line"}},
        "asset_types": {
            "pump": {
                "signals": {
                    **{name: spec for name in signals},
                    "state": {**spec, "kind": "state", "measurement_noise": 0},
                }
            }
        },
        "assets": [{"id": "p1", "type": "pump", "line": "l1", "source": "src"}],
    }
    return parse_site(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def site() -> Site:
    return site_with()


def state(i: int, values: dict[str, float], nus: dict[str, float] | None = None) -> dict[str, Any]:
    nus = nus or {}
    return {
        "asset_id": "p1",
        "source_id": "src",
        "seq": i,
        "ts": T0 + timedelta(seconds=i),
        "ingest_ts": T0 + timedelta(seconds=i),
        "signals": [
            {
                "signal": name,
                "value": value,
                "rate": 0.0,
                "variance": 0.01,
                "rate_variance": 0.01,
                "innovation": nus.get(name, 0.0),
                "nis": nus.get(name, 0.0) ** 2,
                "outlier": False,
                "measured": True,
            }
            for name, value in values.items()
        ]
        + [  # a state code: never a feature
            {
                "signal": "state",
                "value": float(i % 3),
                "rate": 0.0,
                "variance": 0.0,
                "rate_variance": 0.0,
                "innovation": None,
                "nis": None,
                "outlier": False,
                "measured": True,
            }
        ],
    }


def stream(n: int, seed: int = 0, shift_at: int | None = None, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        values = {s: float(rng.normal(10.0 * (k + 1), 1.0)) for k, s in enumerate(SIGNALS)}
        nus = {s: float(rng.normal()) for s in SIGNALS}
        if shift_at is not None and i >= shift_at:
            values["pressure"] += shift
        yield state(i, values, nus)


def run(detector: AnomalyDetector, records) -> list[dict[str, Any]]:
    return [detector.score(r) for r in records]


def test_warm_up_is_respected(site: Site) -> None:
    settings = AnomalySettings(warmup=50)
    out = run(AnomalyDetector(site, settings), stream(60, shift_at=0, shift=50.0))
    assert all(o["warming_up"] and not o["is_anomaly"] for o in out[:50])
    assert not any(o["warming_up"] for o in out[50:])
    assert {o["model_id"] for o in out} == {"hotelling-t2"}


def test_quiet_on_stationary_noise_and_detects_a_shift_naming_the_signal(site: Site) -> None:
    quiet = run(AnomalyDetector(site), stream(2000, seed=1))
    scored = [o for o in quiet if not o["warming_up"]]
    assert sum(o["is_anomaly"] for o in scored) / len(scored) < 0.05

    out = run(AnomalyDetector(site), stream(1000, seed=2, shift_at=600, shift=4.0))
    after = out[600:]
    assert sum(o["is_anomaly"] for o in after) / len(after) > 0.9
    flagged = next(o for o in after if o["is_anomaly"])
    assert flagged["contributors"][0]["signal"] == "pressure"
    weights = [c["weight"] for c in flagged["contributors"]]
    assert weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1 + 1e-9
    assert flagged["score"] > flagged["threshold"] > 0


def test_a_permanent_change_is_absorbed_eventually_not_at_once(site: Site) -> None:
    out = run(AnomalyDetector(site), stream(5000, seed=3, shift_at=600, shift=4.0))
    assert all(o["is_anomaly"] for o in out[620:900])
    cleared = next(i for i in range(620, 5000) if not out[i]["is_anomaly"])
    assert cleared < 3000
    late = out[3000:]
    assert sum(o["is_anomaly"] for o in late) / len(late) < 0.05


def test_flagged_records_teach_neither_covariance_nor_threshold(site: Site) -> None:
    detector = AnomalyDetector(site, AnomalySettings(absorb_rate=0.0))
    records = list(stream(700, seed=4, shift_at=600, shift=8.0))
    run(detector, records[:610])
    before = detector.snapshot("p1")
    assert before is not None and before["alarm"]
    run(detector, records[610:])
    after = detector.snapshot("p1")
    assert after is not None and after["alarm"]
    assert after["model"]["cov_upper"] == before["model"]["cov_upper"]
    assert after["threshold"] == before["threshold"]
    pressure = SIGNALS.index("pressure")
    d = 2 * len(SIGNALS)
    mean_before = unpack_floats(before["model"]["mean"], (d,))
    assert unpack_floats(after["model"]["mean"], (d,))[pressure] == mean_before[pressure]


def test_snapshot_restore_continues_exactly(site: Site) -> None:
    records = list(stream(900, seed=5, shift_at=500, shift=5.0))
    whole = run(AnomalyDetector(site), records)
    first = AnomalyDetector(site)
    head = run(first, records[:520])
    snap = json.loads(json.dumps(first.snapshot("p1")))
    second = AnomalyDetector(site)
    second.restore("p1", snap)
    assert second.assets() == ["p1"]
    assert head + run(second, records[520:]) == whole


def test_snapshot_keeps_the_model_arrays_exactly_and_compactly(site: Site) -> None:
    detector = AnomalyDetector(site)
    run(detector, stream(300, seed=10))
    model = detector._models["p1"].model
    snap = json.loads(json.dumps(detector.snapshot("p1")))
    restored = AnomalyDetector(site)
    restored.restore("p1", snap)
    again = restored._models["p1"].model
    for name in ("mean", "cov", "counts", "precision"):
        assert np.array_equal(getattr(again, name), getattr(model, name)), name
    # The covariance is kept as its upper triangle; the restored matrix is symmetric again.
    assert np.array_equal(again.cov, again.cov.T) and again.cov[0, 1] != 0
    # Base64 of float64 bytes: about 8·(d + d(d+1)/2 + d + d²)·4/3 bytes, not JSON digits.
    d = 2 * len(SIGNALS)
    assert len(json.dumps(snap)) < 8 * (2 * d + d * (d + 1) // 2 + d * d) * 4 / 3 + 1000


def test_a_truncated_or_mistyped_array_is_refused(site: Site) -> None:
    detector = AnomalyDetector(site)
    run(detector, stream(50, seed=11))
    snap = detector.snapshot("p1")
    assert snap is not None
    short = {**snap, "model": {**snap["model"], "precision": snap["model"]["precision"][:-12]}}
    listed = {**snap, "model": {**snap["model"], "mean": [0.0] * 2 * len(SIGNALS)}}
    for bad in (short, listed):
        with pytest.raises(StageStateError):
            AnomalyDetector(site).restore("p1", bad)


def test_pickle_round_trip(site: Site) -> None:
    records = list(stream(400, seed=6))
    detector = AnomalyDetector(site)
    run(detector, records[:350])
    clone = pickle.loads(pickle.dumps(detector))
    assert run(clone, records[350:]) == run(detector, records[350:])


def test_state_size_is_bounded(site: Site) -> None:
    detector = AnomalyDetector(site)
    sizes = []
    for i, record in enumerate(stream(3000, seed=7)):
        detector.score(record)
        if i in (500, 2999):
            sizes.append(len(json.dumps(detector.snapshot("p1"))))
    assert sizes[1] <= sizes[0] * 1.1


def test_missing_and_late_signals_do_not_break_it() -> None:
    site = site_with(("flow", "pressure", "speed"))
    detector = AnomalyDetector(site, AnomalySettings(warmup=20))
    rng = np.random.default_rng(8)
    for i in range(200):
        values = {"flow": float(rng.normal(5, 1)), "pressure": float(rng.normal(2, 0.1))}
        if i >= 100:
            values["speed"] = float(rng.normal(1500, 10))
        record = state(i, values)
        if i % 7 == 0:
            record["signals"][0]["measured"] = False
            record["signals"][0]["nis"] = record["signals"][0]["innovation"] = None
        out = detector.score(record)
        assert np.isfinite(out["score"])
    assert out["contributors"] == [] or out["is_anomaly"]


def test_unknown_asset_and_bad_snapshot(site: Site) -> None:
    detector = AnomalyDetector(site)
    with pytest.raises(AnomalyError):
        detector.score({**state(0, {"flow": 1.0}), "asset_id": "nope"})
    with pytest.raises(StageStateError):
        detector.restore("p1", {"format": 1, "signals": ["flow"]})


def test_p2_quantile_tracks_a_known_quantile() -> None:
    rng = np.random.default_rng(9)
    values = rng.normal(size=20000)
    quantile = P2Quantile(0.99)
    for v in values.tolist():
        quantile.update(v)
    assert abs(quantile.get() - float(np.quantile(values, 0.99))) < 0.1
    assert P2Quantile.restore(json.loads(json.dumps(quantile.snapshot()))).get() == quantile.get()
