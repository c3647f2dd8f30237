"""Local MCP servers bridged by the device, against a real MCP server (the mcp SDK's own, over
streamable HTTP, shaped like Home Assistant's MCP Server integration)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from device.config import McpConfig, Secret
from device.tools.mcp_bridge import McpBridge, function_name
from device.tools.registry import ToolRegistry
from tests.rig.mcp_server import McpServerProcess, mcp_server  # noqa: F401  (fixture)

pytest.importorskip("mcp")


def server_config(srv: McpServerProcess, **changes: object) -> McpConfig:
    values: dict[str, object] = {
        "name": "ha", "server_url": srv.url, "local": True, "connect_timeout_s": 3.0,
        "authorization": Secret(srv.token, str(srv.token_file)),
    }
    values.update(changes)
    return McpConfig(**values)  # type: ignore[arg-type]


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # every library's debug lines too: the token must be in none
    return caplog


@pytest.mark.timeout(30)
async def test_lists_allowed_tools_and_calls_them(mcp_server: McpServerProcess, logs) -> None:  # noqa: F811
    registry = ToolRegistry()
    bridge = McpBridge(server_config(mcp_server, allowed_tools=["HassTurnOn", "GetLiveContext", "HassSlow"]),
                       registry, call_timeout_s=2.0)
    await bridge.start()
    try:
        assert bridge.connected
        assert registry.names() == ["ha__GetLiveContext", "ha__HassSlow", "ha__HassTurnOn"]  # HassTurnOff filtered out
        schema = {s["name"]: s for s in registry.schemas()}["ha__HassTurnOn"]
        assert schema["type"] == "function" and schema["description"].startswith("Turns on/opens/presses")
        assert schema["parameters"]["required"] == ["name"] and "area" in schema["parameters"]["properties"]

        on = await registry.call("ha__HassTurnOn", json.dumps({"name": "kitchen light"}), 2.0)
        assert on.output["ok"] is True
        assert on.output["result"]["data"]["success"][0]["name"] == "kitchen light"
        live = await registry.call("ha__GetLiveContext", "{}", 2.0)
        assert "- kitchen light: on" in live.output["result"]["result"]  # the server really changed state
        assert "- hallway light: off" in live.output["result"]["result"]

        missing = await registry.call("ha__HassTurnOn", json.dumps({"name": "garage"}), 2.0)
        assert missing.output["ok"] is False and "no entity named 'garage'" in missing.output["error"]
        off = await registry.call("ha__HassTurnOff", json.dumps({"name": "kitchen light"}), 2.0)
        assert off.output["ok"] is False and "unknown tool" in off.output["error"]
        assert (await bridge.call("HassTurnOff", {"name": "kitchen light"}))["ok"] is False  # allow-list on the call path too

        slow = await registry.call("ha__HassSlow", "{}", 0.5)
        assert slow.output == {"ok": False, "error": "ha__HassSlow did not finish within 0.5 s"}
        again = await registry.call("ha__GetLiveContext", "{}", 2.0)  # a timed-out call leaves the connection usable
        assert again.output["ok"] is True
    finally:
        await bridge.stop()
    assert registry.names() == []
    assert mcp_server.token not in logs.text


@pytest.mark.timeout(40)
async def test_server_down_at_boot_then_up_then_down_again(tmp_path: Path, logs) -> None:
    srv = McpServerProcess(tmp_path)
    registry = ToolRegistry()
    bridge = McpBridge(server_config(srv), registry, call_timeout_s=2.0)
    try:
        await bridge.start()  # nothing listens yet: the daemon goes on without the tools
        assert not bridge.connected and registry.names() == []
        assert "MCP server ha unreachable" in logs.text and "retrying in" in logs.text

        srv.start()
        await wait_until(lambda: bridge.connected, 15, "the bridge to connect")
        assert "ha__HassTurnOn" in registry.names()
        assert "MCP server ha connected" in logs.text

        srv.stop()
        down = await registry.call("ha__HassTurnOn", json.dumps({"name": "kitchen light"}), 3.0)
        assert down.output["ok"] is False and "the MCP server ha" in down.output["error"]
        await wait_until(lambda: "MCP server ha connection lost" in logs.text, 5, "the log to say the connection is lost")
        later = await registry.call("ha__HassTurnOn", json.dumps({"name": "kitchen light"}), 3.0)
        assert later.output["ok"] is False and "not reachable" in later.output["error"]  # tools stay, with a clear error

        srv.start()
        await wait_until(lambda: bridge.connected, 20, "the bridge to reconnect")
        assert "MCP server ha reconnected" in logs.text
        back = await registry.call("ha__HassTurnOn", json.dumps({"name": "kitchen light"}), 3.0)
        assert back.output["ok"] is True
    finally:
        await bridge.stop()
        srv.stop()
    assert srv.token not in logs.text


@pytest.mark.timeout(30)
async def test_wrong_token_is_a_clear_error_without_the_token(mcp_server: McpServerProcess, logs) -> None:  # noqa: F811
    wrong = "wrong-token-abcdefgh"
    bridge = McpBridge(server_config(mcp_server, authorization=Secret(wrong, "x")), ToolRegistry(), call_timeout_s=2.0)
    with pytest.raises(RuntimeError) as err:
        await bridge.probe()
    assert "HTTP 401" in str(err.value) and "authorization_file" in str(err.value)
    await bridge.start()
    try:
        assert not bridge.connected and "HTTP 401" in bridge.last_error
    finally:
        await bridge.stop()
    assert wrong not in logs.text and mcp_server.token not in logs.text


@pytest.mark.timeout(30)
async def test_probe_names_the_tools(mcp_server: McpServerProcess) -> None:  # noqa: F811
    line = await McpBridge(server_config(mcp_server, allowed_tools=["HassTurnOn", "NoSuchTool"]), ToolRegistry(),
                           call_timeout_s=2.0).probe()
    assert "4 tools, 1 allowed (HassTurnOn)" in line and "allowed_tools not offered: NoSuchTool" in line


def test_function_names_are_namespaced_and_valid() -> None:
    assert function_name("ha", "HassTurnOn") == "ha__HassTurnOn"
    assert function_name("home", "light.turn on/x") == "home__light_turn_on_x"
    assert len(function_name("h", "x" * 100)) == 64
