"""How the session is configured: [realtime] pass-through keys, {{tools}}, the household
transcription prompt and remote MCP tools, from the TOML file to the simulator's session (every
client event validated against the openai SDK's models with undeclared keys flagged)."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import tests.test_simulator as sim_tests
from device.config import ConfigError, Settings, load_settings
from device.realtime import protocol as P
from device.realtime import server_events as se
from device.realtime.mcp_events import McpEvents
from device.realtime.session_setup import SessionSetup, household_prompt, wake_phrase
from device.tools.registry import Tool, ToolRegistry
from services import conformance
from services.simulator import RealtimeSimulator, Turn

pytestmark = pytest.mark.skipif(not conformance.available(), reason="needs the openai SDK")

FULL = '''
[wake]
model = "hey_jarvis"
[realtime]
instructions = "Today is {{today}}. You can use:\\n{{tools}}\\nDevices: {{devices}}"
tool_choice = "required"
truncation = { retention_ratio = 0.7, post_instructions_tokens = 8000 }
max_output_tokens = "inf"
tracing = { workflow_name = "kitchen speaker", group_id = "home", metadata = { room = "kitchen" } }
include = ["item.input_audio_transcription.logprobs"]
prompt = { id = "pmpt_123", version = "4", variables = { household = "the Smiths" } }
[[mcp]]
name = "calendar"
server_url = "https://mcp.example.com/calendar"
authorization_file = "{token}"
allowed_tools = ["list_events"]
headers = { "X-Home" = "smiths" }
description = "the family calendar"
'''


def write(tmp_path: Path, text: str) -> Path:
    token = tmp_path / "cal.token"
    token.write_text("Bearer cal-secret-token-42\n", encoding="utf-8")
    path = tmp_path / "speaker.toml"
    path.write_text(text.replace("{token}", str(token)), encoding="utf-8")
    return path


def setup(settings: Settings, names: list[str] | None = None) -> SessionSetup:
    registry = ToolRegistry()

    async def nothing(args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    registry.add(Tool("set_volume", "Set the loudness of this speaker. Use volume for an absolute level.",
                      {"type": "object", "properties": {}}, nothing))
    return SessionSetup(settings, registry, devices_summary=lambda: "kitchen light (light, Kitchen)",
                        vocabulary=lambda: names or [])


def test_every_new_key_is_read_and_sent_as_the_sdk_declares_it(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL), env={})
    event = setup(settings, ["Kitchen light", "Kitchen", "Sofa lamp"]).session_update()
    assert conformance.check_client_event(event) == []
    s = event["session"]
    assert s["tool_choice"] == "required"
    assert s["truncation"] == {"type": "retention_ratio", "retention_ratio": 0.7, "token_limits": {"post_instructions": 8000}}
    assert s["max_output_tokens"] == "inf"
    assert s["tracing"] == {"workflow_name": "kitchen speaker", "group_id": "home", "metadata": {"room": "kitchen"}}
    assert s["include"] == ["item.input_audio_transcription.logprobs"]
    assert s["prompt"] == {"id": "pmpt_123", "version": "4", "variables": {"household": "the Smiths"}}
    assert s["audio"]["input"]["transcription"]["prompt"] == "Names you may hear: Hey Jarvis, Kitchen light, Kitchen, Sofa lamp."
    mcp = s["tools"][-1]
    assert mcp == {"type": "mcp", "server_label": "calendar", "server_url": "https://mcp.example.com/calendar",
                   "require_approval": "never", "allowed_tools": ["list_events"], "authorization": "cal-secret-token-42",
                   "headers": {"X-Home": "smiths"}, "server_description": "the family calendar"}
    assert "cal-secret-token-42" not in repr(settings)  # the Secret hides itself
    # {{tools}}: one compact line per tool, the model's own and the remote server's
    assert "- set_volume: Set the loudness of this speaker.\n- calendar (MCP server: the family calendar): list_events" in s["instructions"]
    assert "Devices: kitchen light (light, Kitchen)" in s["instructions"]


def test_unset_keys_are_not_sent(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[realtime]\ntranscription_prompt = \"\"\n"), env={})
    s = setup(settings, ["Kitchen light"]).session_update()["session"]
    for key in ("truncation", "tracing", "include", "prompt", "max_output_tokens"):
        assert key not in s, key
    assert s["tool_choice"] == "auto"
    assert "prompt" not in s["audio"]["input"]["transcription"]


@pytest.mark.parametrize(("value", "expected"), [
    ('"none"', "none"), ('"auto"', "auto"), ('"set_volume"', {"type": "function", "name": "set_volume"}),
])
def test_tool_choice_modes_and_a_named_function(tmp_path: Path, value: str, expected: object) -> None:
    settings = load_settings(write(tmp_path, f"[realtime]\ntool_choice = {value}\n"), env={})
    ev = setup(settings).session_update()
    assert ev["session"]["tool_choice"] == expected and conformance.check_client_event(ev) == []
    assert conformance.check_client_event(setup(settings).tools_update()) == []


def test_tool_choice_naming_a_tool_the_session_lacks_falls_back_to_auto(tmp_path: Path, caplog) -> None:
    settings = load_settings(write(tmp_path, '[realtime]\ntool_choice = "ha__HassTurnOn"\n'), env={})
    with caplog.at_level(logging.WARNING):
        assert setup(settings).session_update()["session"]["tool_choice"] == "auto"
    assert "realtime.tool_choice names 'ha__HassTurnOn'" in caplog.text


@pytest.mark.parametrize("toml", [
    'truncation = "auto"', 'truncation = "disabled"', "truncation = { retention_ratio = 0.5 }",
    'tracing = "auto"', "max_output_tokens = 1", "max_output_tokens = 4096", 'transcription_prompt = "Smiths, Rex the dog"',
    'prompt = { id = "pmpt_1" }',
])
def test_each_shape_conforms(tmp_path: Path, toml: str) -> None:
    settings = load_settings(write(tmp_path, f"[realtime]\n{toml}\n"), env={})
    assert conformance.check_client_event(setup(settings, ["Hall"]).session_update()) == []


@pytest.mark.parametrize(("toml", "message"), [
    ("[realtime]\ntool_choice = \"turn on!\"", "'realtime.tool_choice' must match"),
    ("[realtime]\ntruncation = \"sometimes\"", "'realtime.truncation' must be \"auto\", \"disabled\" or a table"),
    ("[realtime]\ntruncation = { retention_ratio = 1.5 }", "'realtime.truncation' retention_ratio must be a number between 0 and 1"),
    ("[realtime]\ntruncation = { ratio = 0.5 }", "'realtime.truncation' has unknown key 'ratio'"),
    ("[realtime]\nmax_output_tokens = 5000", "'realtime.max_output_tokens' must be an integer 1-4096, \"inf\""),
    ("[realtime]\nmax_output_tokens = \"lots\"", "'realtime.max_output_tokens' must be an integer 1-4096"),
    ("[realtime]\ntracing = { workflow = \"x\" }", "'realtime.tracing' has unknown key 'workflow'"),
    ("[realtime]\ntracing = { metadata = { n = 1 } }", "'realtime.tracing' metadata values must be strings"),
    ("[realtime]\ninclude = [\"everything\"]", "'realtime.include' must be list of one of"),
    ("[realtime]\nprompt = { version = \"2\" }", "'realtime.prompt' needs an id"),
    ("[realtime]\ninstructions = \"It is {{weather}}\"", "'realtime.instructions': unknown placeholder {{weather}}"),
    ("[[mcp]]\nname = \"ha\"", "missing key 'mcp[0].server_url'"),
    ("[[mcp]]\nname = \"ha\"\nserver_url = \"http://ha.local:8123/api/mcp\"", "'mcp[0].server_url': the cloud reaches remote MCP servers over https only"),
    ("[[mcp]]\nname = \"ha\"\nserver_url = \"http://h/api/mcp\"\nlocal = true\nrequire_approval = \"always\"", "'mcp[0].require_approval'"),
    ("[[mcp]]\nname = \"ha\"\nserver_url = \"https://h/mcp\"\nheaders = { Authorization = \"Bearer x\" }", "'mcp[0].headers': put the token in authorization_file"),
    ("[[mcp]]\nname = \"ha\"\nserver_url = \"https://h/mcp\"\nauthorization_file = \"/nonexistent/ha.token\"", "'mcp[0].authorization_file': secret file /nonexistent/ha.token does not exist"),
    ("[[mcp]]\nname = \"ha\"\nserver_url = \"https://a/mcp\"\n[[mcp]]\nname = \"HA\"\nserver_url = \"https://b/mcp\"", "'mcp[1].name' 'HA' is used by another MCP server"),
    ("[[mcp]]\nname = \"home assistant\"\nserver_url = \"https://a/mcp\"", "'mcp[0].name' must match"),
])
def test_bad_values_name_the_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    path = write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)


def test_household_prompt_and_wake_phrase() -> None:
    assert wake_phrase("hey_jarvis") == "Hey Jarvis"
    assert wake_phrase("/etc/speaker/ok_computer_v0.1.tflite") == "Ok Computer"
    assert household_prompt("Hey Jarvis", ["Kitchen light", "kitchen LIGHT", " Hall  lamp "]) == (
        "Names you may hear: Hey Jarvis, Kitchen light, Hall lamp.")
    long = household_prompt("Alexa", [f"device number {i}" for i in range(200)])
    assert len(long) <= 800 and long.endswith(".")


def test_tools_placeholder_is_filled_and_others_still_work() -> None:
    text = P.render_instructions("{{tools}} | {{devices}} | {{language}} | {{device}}", device="kitchen", language="de",
                                 devices="", now=datetime(2026, 11, 27, 9, 5),
                                 tools=P.tools_summary([{"type": "function", "name": "list_devices", "description": "List them. More."}]))
    assert text == "- list_devices: List them. | (no devices known) | German | kitchen"


async def test_the_simulator_session_gets_every_key_and_reports_remote_mcp(tmp_path: Path, caplog) -> None:
    settings = load_settings(write(tmp_path, FULL), env={})
    tools = [{"name": "list_events", "description": "Events of a day", "input_schema": {"type": "object"}}]
    async with RealtimeSimulator(pace=0, mcp_servers={"calendar": tools},
                                 script=[Turn(say="You have a dentist at nine.", mcp="list_events", arguments={"day": "today"})]) as sim:
        client = await sim_tests.Client.open(sim)
        events = McpEvents()
        await client.s.send(setup(settings, ["Kitchen light"]).session_update())
        await client.until("session.updated")
        await client.until("mcp_list_tools.completed")
        await client.s.send({"type": "response.create"})
        await client.until("response.done")
        await client.s.close()
        config = sim.sessions[0].config
        assert sim.violations == [] and sim.server_violations == []
    for key in ("tool_choice", "truncation", "max_output_tokens", "tracing", "include", "prompt"):
        assert config[key] == setup(settings).session_update()["session"][key], key
    assert config["audio"]["input"]["transcription"]["prompt"].startswith("Names you may hear: Hey Jarvis, Kitchen light")
    assert config["tools"][-1]["type"] == "mcp" and config["tools"][-1]["server_label"] == "calendar"
    with caplog.at_level(logging.DEBUG, logger="speaker.mcp"):
        for ev in client.events:
            events.note(se.parse(ev))
    assert "MCP server calendar offers 1 tools: list_events" in caplog.text
    assert 'MCP call calendar.list_events({"day": "today"})' in caplog.text
    assert "MCP call calendar.list_events completed" in caplog.text
    kinds = [e["type"] for e in client.events]
    assert kinds.index("response.mcp_call.completed") < kinds.index("response.output_audio.delta")


async def test_unreachable_remote_server_and_failed_calls_are_logged(caplog) -> None:
    async with RealtimeSimulator(pace=0, script=[Turn(say="Sorry.", mcp="calendar.list_events", mcp_fail=True)]) as sim:
        client = await sim_tests.Client.open(sim)
        await client.s.send({"type": "session.update", "session": {"type": "realtime", "tools": [
            {"type": "mcp", "server_label": "calendar", "server_url": "https://unreachable.example/mcp", "require_approval": "never"}]}})
        await client.until("mcp_list_tools.failed")
        await client.s.send({"type": "response.create"})
        await client.until("response.done")
        await client.s.close()
        assert sim.violations == [] and sim.server_violations == []
    events = McpEvents()
    with caplog.at_level(logging.INFO, logger="speaker.mcp"):
        for ev in client.events:
            events.note(se.parse(ev))
    assert "MCP server calendar: the cloud could not list its tools" in caplog.text
    assert "MCP call calendar.list_events failed" in caplog.text
    assert "MCP call calendar.list_events error: list_events failed (simulated)" in caplog.text


def test_an_approval_request_is_a_typed_event_and_its_decline_conforms() -> None:
    """The machine declines it (tests/test_machine.py); here: the SDK's shapes both ways."""
    request = {"type": "response.output_item.done", "event_id": "e1", "response_id": "r1", "output_index": 0,
               "item": {"id": "mcpr_1", "type": "mcp_approval_request", "server_label": "calendar", "name": "delete_event",
                        "arguments": "{}"}}
    assert conformance.check_server_event(request) == []
    ev = se.parse(request)
    assert isinstance(ev, se.McpApprovalRequest) and (ev.response_id, ev.request_id, ev.name) == ("r1", "mcpr_1", "delete_event")
    for approve in (False, True):
        reply = P.mcp_approval_response("mcpr_" + "x" * 40, approve, "no one to ask")
        assert conformance.check_client_event(reply) == [] and len(reply["item"]["id"]) <= 32


def test_the_example_config_with_its_session_and_mcp_examples_switched_on(tmp_path: Path) -> None:
    import re

    text = (Path(__file__).resolve().parents[1] / "config" / "speaker.toml").read_text(encoding="utf-8")
    keys = "transcription_prompt|tool_choice|truncation|max_output_tokens|tracing|include|prompt"
    text = re.sub(rf"^# ({keys}) = ", r"\1 = ", text, flags=re.M)
    head, mcp = text.split("# MCP servers.")
    mcp = re.sub(r"^# (\[\[mcp\]\]|\w+ = .*)$", r"\1", mcp, flags=re.M)
    for name in ("device.secret", "ha.token", "calendar.token"):
        (tmp_path / name).write_text("secret-" + name + "\n", encoding="utf-8")
    text = (head + "# MCP servers." + mcp).replace("/etc/speaker/", str(tmp_path) + "/")
    settings = load_settings(write(tmp_path, text), env={})
    assert [(s.name, s.local) for s in settings.mcp] == [("ha", True), ("calendar", False)]
    assert settings.realtime.truncation == "auto" and settings.realtime.prompt["id"] == "pmpt_..."
    event = setup(settings).session_update()
    assert conformance.check_client_event(event) == []
    assert [t["server_label"] for t in event["session"]["tools"] if t["type"] == "mcp"] == ["calendar"]  # ha is bridged
