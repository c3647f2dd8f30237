"""The realtime simulator as a pytest fixture, plus helpers to point a device config at it.

``simulator`` starts a :class:`services.simulator.RealtimeSimulator` on a free loopback port, in
its own thread and loop (a test that blocks cannot stall it), and stops it after the test. Its
options come from the marker::

    @pytest.mark.simulator(pace=4, script=[Turn(say="hi")], allow_violations=False)

At teardown the test fails if the simulator itself sent a non-conformant event, or if the client
sent one (unless ``allow_violations=True``): every client event of every test is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.simulator import RealtimeSimulator, SimulatorThread, Turn

__all__ = ["Turn", "simulator", "toml_dumps", "write_device_config"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "simulator(**kwargs): options of the realtime simulator fixture (pace, script, ...; "
        "allow_violations=True to accept non-conformant client events)",
    )


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[RealtimeSimulator]:
    """A running realtime simulator (``api_base``, ``ws_url``, ``api_key``, ``sessions``...)."""
    marker = request.node.get_closest_marker("simulator")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    allow = bool(kwargs.pop("allow_violations", False))
    runner = SimulatorThread(**kwargs)
    sim = runner.start()
    try:
        yield sim
    finally:
        runner.stop()
    assert not sim.server_violations, f"the simulator sent non-conformant events: {sim.server_violations}"
    if not allow:
        assert not sim.violations, f"the client sent non-conformant events: {sim.violations}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_dumps(data: dict[str, Any]) -> str:
    """TOML for a dict of sections (``{"audio": {...}}``) and ``devices`` (list of tables)."""
    lines: list[str] = []
    for name, table in data.items():
        if isinstance(table, list):
            for entry in table:
                lines.append(f"[[{name}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items())
                lines.append("")
        elif isinstance(table, dict):
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
            lines.append("")
        else:
            lines.insert(0, f"{name} = {_toml_value(table)}")
    return "\n".join(lines)


def write_device_config(
    directory: Path,
    sim: RealtimeSimulator,
    *,
    token_url: str = "",
    device_secret: str = "",
    sections: dict[str, Any] | None = None,
    name: str = "speaker.toml",
) -> Path:
    """Write a device config whose [realtime] and [auth] point at ``sim``; return its path.

    Direct mode by default (the simulator's API key in a 0600 file); with ``token_url`` and
    ``device_secret``, token-service mode. ``sections`` adds or overrides sections (merged per key).
    """
    directory.mkdir(parents=True, exist_ok=True)
    realtime = {"url": sim.ws_url}
    if token_url:
        secret_file = directory / "device.secret"
        secret_file.write_text(device_secret + "\n", encoding="utf-8")
        auth: dict[str, Any] = {"token_url": token_url, "device_secret_file": str(secret_file)}
    else:
        key_file = directory / "openai.key"
        key_file.write_text(sim.api_key + "\n", encoding="utf-8")
        auth = {"api_base": sim.api_base, "api_key_file": str(key_file)}
    for f in directory.glob("*.secret"):
        os.chmod(f, 0o600)
    if (directory / "openai.key").exists():
        os.chmod(directory / "openai.key", 0o600)
    data: dict[str, Any] = {"realtime": realtime, "auth": auth}
    for section, table in (sections or {}).items():
        if isinstance(table, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **table}
        else:
            data[section] = table
    path = directory / name
    path.write_text(toml_dumps(data), encoding="utf-8")
    return path
