"""The daemon as a real subprocess: `speaker run --config ...`, its stderr read line by line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    """A running `speaker` command whose output lines the test can wait for."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "device.cli", *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.lines: list[str] = []
        self.times: list[float] = []  # time.monotonic() when each line arrived
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self.times.append(time.monotonic())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Wait for an output line matching ``pattern`` (from line index ``start``)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output:\n" + "\n".join(self.lines[-60:]))
                self._cond.wait(min(left, 0.1))

    def wait_line(self, pattern: str, timeout: float = 10.0, start: int = 0) -> tuple[int, float, str]:
        """Like :meth:`wait_for`; returns (index, arrival time.monotonic(), line) of the first match."""
        self.wait_for(pattern, timeout, start)
        rx = re.compile(pattern)
        with self._cond:
            i = next(i for i in range(start, len(self.lines)) if rx.search(self.lines[i]))
            return i, self.times[i], self.lines[i]

    def matching(self, pattern: str, start: int = 0) -> list[str]:
        """Every output line from index ``start`` that matches ``pattern``."""
        rx = re.compile(pattern)
        with self._cond:
            return [line for line in self.lines[start:] if rx.search(line)]

    def mark(self) -> int:
        """Index of the next line, for wait_for(start=...)."""
        with self._cond:
            return len(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``sig`` and wait for the exit code (kills after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        return self.proc.returncode


@pytest.fixture
def daemon_factory() -> Iterator[type[Daemon]]:
    """Start daemons with ``daemon_factory(args, env)``; all are stopped after the test."""
    started: list[Daemon] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(args, env)
        started.append(d)
        return d

    yield start  # type: ignore[misc]
    for d in started:
        d.stop(signal.SIGKILL if d.proc.poll() is None else signal.SIGTERM, timeout=3)


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a `speaker` command to completion."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "device.cli", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
