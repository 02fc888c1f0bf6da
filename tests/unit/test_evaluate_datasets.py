"""Reading benchmark layouts, deriving a site from them, and the in-memory replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.evaluate.datasets import DatasetError, read, site_for
from pipeline.evaluate.offline import load_replay_site, replay
from pipeline.evaluate.scoring import score_skab

SKAB = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "skab" / "data"

HEADER = "datetime;Flow Rate;Temp-1;anomaly;changepoint\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rows(n: int, start: int = 0) -> str:
    return "".join(
        f"2021-01-01 00:{(start + i) // 60:02d}:{(start + i) % 60:02d};{10 + (i % 3) * 0.1};"
        f"{20 + i * 0.01};{int(i > n // 2)};0\n"
        for i in range(n)
    )


def test_skab_layout_directory_order_names_and_site(tmp_path: Path) -> None:
    for name in ("10.csv", "2.csv"):
        write(tmp_path / "run" / name, HEADER + rows(30))
    series = read([tmp_path / "run"])
    assert [s.asset_id for s in series] == ["run-2", "run-10"]
    one = series[0]
    assert one.signals == ("flow_rate", "temp_1") and one.columns == ("Flow Rate", "Temp-1")
    assert one.values.shape == (30, 2) and one.labels is not None and one.labels.sum() == 14
    assert one.times[1].tzinfo is not None and (one.times[1] - one.times[0]).total_seconds() == 1
    spec = site_for(series, train_rows=20)
    assert spec["validation"] == {"max_age": "36500d"}
    site = load_replay_site(spec)
    signal = site.asset("run-2").signal("flow_rate")
    assert signal.sampling_period.total_seconds() == 1
    assert signal.measurement_noise > 0 and signal.physical.contains(10.1)


def test_unlabelled_file_and_other_sampling_rates(tmp_path: Path) -> None:
    text = "datetime;a\n" + "".join(f"2021-01-01 {h:02d}:00:00;{h * 1.5}\n" for h in range(24))
    (one,) = read([write(tmp_path / "free.csv", text)])
    assert one.labels is None
    period = load_replay_site(site_for([one])).asset(one.asset_id).signal("a").sampling_period
    assert period.total_seconds() == 3600


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time;a\n2021-01-01 00:00:00;1\n", "no 'datetime' column"),
        ("datetime;a\nyesterday;1\n", "unparsable time"),
        ("datetime;a\n", "no rows"),
        ("datetime;a\n2021-01-01 00:00:00;high\n", "not numeric"),
        ("datetime;anomaly\n2021-01-01 00:00:00;0\n", "no signal columns"),
    ],
)
def test_bad_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read([write(tmp_path / "bad.csv", text)])


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        read([tmp_path / "nope"])
    with pytest.raises(DatasetError, match="unknown dataset format"):
        read([tmp_path], fmt="csv")


def test_nab_layout_finds_labels_above_the_file(tmp_path: Path) -> None:
    write(
        tmp_path / "labels" / "combined_windows.json",
        '{"kind/m.csv": [["2021-01-01 00:10:00.000000", "2021-01-01 00:20:00.000000"]]}',
    )
    text = "timestamp,value\n" + "".join(f"2021-01-01 00:{i:02d}:00,{i}\n" for i in range(30))
    (one,) = read([write(tmp_path / "data" / "kind" / "m.csv", text)], fmt="nab")
    assert one.key == "kind/m.csv" and one.asset_id == "m"
    assert one.labels is not None and int(one.labels.sum()) == 11
    (alone,) = [write(tmp_path / "elsewhere" / "x.csv", text)]
    with pytest.raises(DatasetError, match="labels"):
        read([alone], fmt="nab")


@pytest.mark.skipif(not SKAB.is_dir(), reason="SKAB data not present")
def test_real_skab_slice_through_the_stages() -> None:
    series = read([SKAB / "valve1" / "3.csv", SKAB / "valve1" / "5.csv"])
    replayed = replay(series, train_rows=400)
    report = score_skab([(r.series.key, r.series.labels, r.flags) for r in replayed], 400)
    assert report["f1"] > 0.7 and report["far"] < 0.25
    assert all(r.warming_up[:250].all() and not r.flags[:400].any() for r in replayed)
