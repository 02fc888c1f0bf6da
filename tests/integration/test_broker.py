"""The embedded broker as a process: start, answer, refuse a busy port, stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from pipeline.errors import BrokerError
from pipeline.kafka.broker import EmbeddedBroker, answers, free_port
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_session_broker_answers_kafka_metadata(broker: EmbeddedBroker) -> None:
    assert answers(broker.bootstrap)


def test_second_broker_on_a_busy_port_is_refused_with_a_reason(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match=f"port {broker.port} .* in use"):
        EmbeddedBroker(broker.port).start()


def test_twin_broker_runs_until_sigterm_and_stops_cleanly(twin_env: dict[str, str]) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "broker", "--port", str(port)],
        env=twin_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert f"broker ready on 127.0.0.1:{port}" in first
        assert answers(f"127.0.0.1:{port}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    # The broker process went with it: nothing answers on the port any more.
    assert not answers(f"127.0.0.1:{port}", timeout=0.5)
