"""A real MCP server for tests: the ``mcp`` SDK's own MCPServer (formerly FastMCP) over streamable
HTTP on a free loopback port, in a subprocess, shaped like Home Assistant's "MCP Server"
integration: stateless streamable HTTP at ``/api/mcp``, a Bearer token (a long-lived access
token), intent tools named ``HassTurnOn``/``HassTurnOff`` that take an entity ``name`` (and
``area``), ``GetLiveContext``, and tool results as one JSON text content.

Run standalone: ``python -m tests.rig.mcp_server --port 8931 --token-file tok``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.rig.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
PATH = "/api/mcp"


def build_app(token: str, slow_s: float = 3.0) -> Any:
    """The ASGI app: the SDK's streamable HTTP app behind a Bearer-token check."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("Home Assistant")
    states: dict[str, str] = {"kitchen light": "off", "hallway light": "off"}

    def intent_response(name: str, area: str, new: str) -> str:
        if name.casefold() not in states:
            # Home Assistant answers an unmatched name with an error result, not a crash.
            raise ToolError(f"MatchFailedError: no entity named {name!r}")
        states[name.casefold()] = new
        target = {"name": name, "type": "entity", "id": "light." + name.casefold().replace(" ", "_")}
        return json.dumps({"speech": {}, "response_type": "action_done",
                           "data": {"targets": [], "success": [target], "failed": []}, "area": area or None})

    @server.tool(name="HassTurnOn", description="Turns on/opens/presses a device or entity. For locks, this performs a 'lock' action.")
    def hass_turn_on(name: str, area: str = "") -> str:
        return intent_response(name, area, "on")

    @server.tool(name="HassTurnOff", description="Turns off/closes a device or entity.")
    def hass_turn_off(name: str, area: str = "") -> str:
        return intent_response(name, area, "off")

    @server.tool(name="GetLiveContext", description="Provides real-time information about the CURRENT state of devices.")
    def live_context() -> str:
        return json.dumps({"success": True, "result": "\n".join(f"- {n}: {s}" for n, s in sorted(states.items()))})

    @server.tool(name="HassSlow", description="Answers after a long pause (for timeouts).")
    async def slow() -> str:
        await asyncio.sleep(slow_s)
        return json.dumps({"success": True})

    app = server.streamable_http_app(streamable_http_path=PATH, stateless_http=True, json_response=True)
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"401: Unauthorized"})
            return
        await app(scope, receive, send)

    return guarded


class McpServerProcess:
    """The test server in a subprocess; ``stop()``/``start()`` take it down and up on the same port."""

    def __init__(self, tmp: Path, token: str = "ha-long-lived-token-1234567890") -> None:
        self.token = token
        self.port = free_port()
        self.token_file = tmp / "ha.token"
        self.token_file.write_text(token + "\n", encoding="utf-8")
        self.token_file.chmod(0o600)
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.rig.mcp_server", "--port", str(self.port), "--token-file", str(self.token_file)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"MCP test server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("MCP test server did not listen in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerProcess]:
    """A running Home-Assistant-like MCP server, shared by a test module (it starts in seconds)."""
    srv = McpServerProcess(tmp_path_factory.mktemp("mcp"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token-file", required=True)
    args = p.parse_args()
    token = Path(args.token_file).read_text(encoding="utf-8").strip()
    uvicorn.run(build_app(token), host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
