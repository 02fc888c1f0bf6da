"""The demo's child processes: `twin` commands (and Mosquitto) started, watched and stopped.

Each child writes its log (stderr) to a file of the run directory; a child started with
`--json` prints its summary as one JSON object on stdout, which `stop` reads back.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import PROJECT_ROOT
from pipeline.errors import TwinError


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stdout_path: Path
    summary: dict[str, Any] | None = None
    returncode: int | None = None

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Children:
    """Every process the demo started, stopped in reverse order of start by `stop_all`."""

    run_dir: Path
    env: dict[str, str]
    started: list[Child] = field(default_factory=list)

    def twin(self, name: str, *args: str) -> Child:
        return self.spawn(name, [sys.executable, "-m", "pipeline.cli", *args])

    def spawn(self, name: str, argv: list[str]) -> Child:
        log_path = self.run_dir / f"{name}.log"
        stdout_path = self.run_dir / f"{name}.out"
        with open(log_path, "ab") as log, open(stdout_path, "wb") as out:
            process = subprocess.Popen(argv, env=self.env, cwd=PROJECT_ROOT, stdout=out, stderr=log)
        child = Child(name, process, log_path, stdout_path)
        self.started.append(child)
        return child

    def stop(self, child: Child, timeout: float = 30.0) -> None:
        """SIGTERM, wait (then kill), and read the child's JSON summary if it printed one."""
        if child.returncode is not None:
            return
        if child.running():
            child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
        child.returncode = child.process.returncode
        child.summary = _json_summary(child.stdout_path)

    def stop_all(self) -> None:
        for child in reversed(self.started):
            self.stop(child)


def _json_summary(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    start = text.find("{")
    if start < 0:
        return None
    with contextlib.suppress(ValueError):
        value = json.loads(text[start:])
        return value if isinstance(value, dict) else None
    return None


def wait_for_text(child: Child, text: str, timeout: float) -> None:
    """Wait until `text` appears in the child's log; TwinError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in child.log_tail(100_000):
            return
        if not child.running():
            raise TwinError(f"{child.name} exited at start-up:\n{child.log_tail()}")
        time.sleep(0.2)
    raise TwinError(f"{child.name} did not start within {timeout:.0f}s:\n{child.log_tail()}")


def wait_for_port(child: Child, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running():
            raise TwinError(f"{child.name} exited at start-up:\n{child.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TwinError(f"{child.name} did not listen on port {port} within {timeout:.0f}s")


def mosquitto_binary() -> str | None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return binary if Path(binary).exists() else None


def start_mosquitto(children: Children, binary: str, port: int) -> Child:
    conf = children.run_dir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n",
        encoding="utf-8",
    )
    child = children.spawn("mosquitto", [binary, "-c", str(conf)])
    wait_for_port(child, port, timeout=10)
    return child
