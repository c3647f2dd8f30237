"""A local MCP server through the whole daemon: `speaker check` probes it, and in `speaker run` the
model calls a bridged tool (the simulator scripted like the cloud) and gets the server's answer as
the function_call_output. A second server that is down does not stop the daemon."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.rig.broker import free_port
from tests.rig.daemon import run_cli
from tests.rig.mcp_server import McpServerProcess, mcp_server  # noqa: F401  (fixture)
from tests.rig.simulator import Turn, write_device_config

pytest.importorskip("mcp")

WAKE = "hey jarvis, turn on the kitchen light"


def mcp_sections(srv: McpServerProcess) -> dict[str, object]:
    return {
        "mcp": [
            {"name": "ha", "server_url": srv.url, "local": True, "authorization_file": str(srv.token_file),
             "allowed_tools": ["HassTurnOn", "GetLiveContext"]},
            {"name": "attic", "server_url": f"http://127.0.0.1:{free_port()}/api/mcp", "local": True, "connect_timeout_s": 1.0},
        ]
    }


@pytest.mark.timeout(60)
def test_check_prints_one_line_per_local_mcp_server(tmp_path: Path, alsa_rig, simulator, mcp_server: McpServerProcess) -> None:  # noqa: F811
    alsa_rig.start_mic("test_mic")
    sections = {"audio": {"input": "test_mic", "output": "test_spk"}, **mcp_sections(mcp_server)}
    config = write_device_config(tmp_path, simulator, sections=sections)
    result = run_cli(["check", "--config", str(config)], env=alsa_rig.env)
    assert result.returncode == 1  # the attic server is down
    lines = result.stdout.splitlines()
    assert f"ok    mcp ha: {mcp_server.url}: 4 tools, 2 allowed (HassTurnOn, GetLiveContext)" in lines, result.stdout
    assert any(line.startswith("FAIL  mcp attic: http://127.0.0.1:") and "ConnectError" in line for line in lines), result.stdout
    assert mcp_server.token not in result.stdout + result.stderr


@pytest.mark.timeout(90)
@pytest.mark.simulator(
    script=[
        Turn(transcript="turn on the kitchen light", call="ha__HassTurnOn", arguments={"name": "kitchen light"},
             then="The kitchen light is on.")
    ]
)
def test_the_model_calls_a_bridged_mcp_tool(tmp_path: Path, alsa_rig, speech, simulator, mcp_server: McpServerProcess,  # noqa: F811
                                            daemon_factory) -> None:
    mic = alsa_rig.start_mic("test_mic")
    sections = {
        "audio": {"input": "test_mic", "output": "test_spk"},
        "realtime": {"follow_up_s": 1.0, "instructions": "Your tools:\n{{tools}}"},
        "state": {"dir": str(tmp_path / "state")},
        **mcp_sections(mcp_server),
    }
    config = write_device_config(tmp_path, simulator, sections=sections)
    d = daemon_factory(["run", "--config", str(config)], alsa_rig.env)
    d.wait_for(r"MCP server ha connected \(.*\): 2 tools: ha__GetLiveContext, ha__HassTurnOn", timeout=20)
    d.wait_for(r"MCP server attic unreachable: ConnectError.*retrying in", timeout=20)
    d.wait_for(r"ready: listening", timeout=20)
    mic.play(np.concatenate([speech.say(WAKE), speech.silence(1.5)]))
    d.wait_for(r"conversation ended", timeout=30)

    session = simulator.sessions[0]
    update = session.events_of("session.update")[0]["session"]
    names = [t.get("name") for t in update["tools"]]
    assert "ha__HassTurnOn" in names and "ha__GetLiveContext" in names and "ha__HassTurnOff" not in names
    assert "- ha__HassTurnOn: Turns on/opens/presses a device or entity." in update["instructions"]
    outputs = [json.loads(o["output"]) for o in session.function_outputs]
    assert outputs and outputs[0]["ok"] is True, outputs
    assert outputs[0]["result"]["data"]["success"][0]["name"] == "kitchen light"  # the MCP server's own answer
    d.wait_for(r"tool ha__HassTurnOn\(\{'name': 'kitchen light'\}\) -> \{'ok': True", timeout=5)
    assert d.stop() == 0
    assert mcp_server.token not in d.output
    assert "Traceback" not in d.output
    assert "HTTP Request:" not in d.output  # the MCP client's per-request chatter stays out of the log
