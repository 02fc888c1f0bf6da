"""`twin sql` while `twin sink` holds the embedded engine: the session's real broker, a real
sink process and real `twin sql` processes. Read-only queries are answered by the sink,
writes are refused, and once the sink stops `twin sql` opens the engine itself again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.kafka.clients import producer
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.sink.query_server import ENDPOINT_FILE, NOT_READ_ONLY, read_endpoint
from pipeline.site import load_site
from tests.conftest import REPO, run_twin
from tests.integration.connect_support import make_topics, write_site
from tests.integration.test_sink_clickhouse import frame

pytestmark = pytest.mark.integration

FRAMES = 6
READINGS = 3


def count_readings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_twin("sql", "SELECT count() AS n FROM readings", "--json", env=env)


def test_sql_is_answered_by_the_running_sink_and_directly_after_it_stops(
    twin_env: dict[str, str], tmp_path: Path
) -> None:
    site_path = write_site(tmp_path / "site", partitions=1)
    site = load_site(site_path)
    settings = Settings(kafka_bootstrap=twin_env["TWIN_KAFKA_BOOTSTRAP"])
    make_topics(settings, site)
    data = tmp_path / "clickhouse"
    env = {**twin_env, "TWIN_CLICKHOUSE_DSN": f"chdb://{data}"}

    log = (tmp_path / "sink.log").open("w")
    sink = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "sink", "--assign", "--site", str(site_path)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        serde = AvroSerde.local()
        topic = site.topic("telemetry.valid")
        out = producer(settings)
        for seq in range(1, FRAMES + 1):
            record = frame(seq, READINGS)
            out.produce(topic, serde.encode("validated_frame", record), record["asset_id"].encode())
        assert out.flush(30) == 0

        # Bounded wait for the sink to store the rows (not a timed assertion).
        expected = {"columns": ["n"], "rows": [[FRAMES * READINGS]]}
        deadline = time.monotonic() + 120
        answer = count_readings(env)
        while json.loads(answer.stdout or "null") != expected and time.monotonic() < deadline:
            assert sink.poll() is None, (tmp_path / "sink.log").read_text()
            time.sleep(0.5)
            answer = count_readings(env)
        assert json.loads(answer.stdout) == expected, answer.stderr
        assert sink.poll() is None  # answered while the sink holds the engine
        assert read_endpoint(data) is not None

        table = run_twin("sql", "SELECT signal, value FROM readings WHERE seq = 2 ORDER BY signal",
                         env=env)  # fmt: skip
        assert table.returncode == 0, table.stderr
        assert table.stdout.split("\n")[0].split() == ["signal", "value"]
        assert [line.split() for line in table.stdout.splitlines()[2:5]] == [
            ["s0", "200.0"], ["s1", "201.0"], ["s2", "202.0"]
        ]  # fmt: skip
        csv = run_twin("sql", "SELECT DISTINCT asset_id FROM readings", "--format", "csv", env=env)
        assert csv.stdout.splitlines() == ["asset_id", frame(1)["asset_id"]]

        write = run_twin("sql", "INSERT INTO readings (asset_id) VALUES ('x')", env=env)
        assert write.returncode == 2
        assert write.stderr.strip() == f"twin sql: {NOT_READ_ONLY}"
        dropped = run_twin("sql", "DROP TABLE readings", env=env)
        assert dropped.returncode == 2

        failing = run_twin("sql", "SELECT nope FROM readings", env=env)
        assert failing.returncode == 1
        assert len(failing.stderr.strip().splitlines()) == 1
        assert "nope" in failing.stderr
        assert sink.poll() is None
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(60)
        log.close()
    assert sink.returncode == 0, (tmp_path / "sink.log").read_text()
    assert not (data / ENDPOINT_FILE).exists()

    direct = count_readings(env)
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout) == {"columns": ["n"], "rows": [[FRAMES * READINGS]]}
    # Only a process holding the engine itself may write: now one is allowed to.
    allowed = run_twin("sql", "OPTIMIZE TABLE readings", env=env)
    assert allowed.returncode == 0, allowed.stderr


def test_an_endpoint_file_left_by_a_dead_process_is_ignored(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    record = {"host": "127.0.0.1", "port": 9, "pid": int(gone.stdout), "database": "default"}
    (tmp_path / ENDPOINT_FILE).write_text(json.dumps(record), encoding="utf-8")
    assert read_endpoint(tmp_path) is None
