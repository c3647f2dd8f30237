"""Home devices over a real mosquitto with simulated devices: discovery and removal, every action,
timeouts and mismatches, confirmation, allow/deny, offline devices, a broker restart mid-run."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from device.config import DeviceConfig
from tests.rig.broker import (
    BrokerSpy,
    DeviceSimulator,
    HomeRig,
    Mosquitto,
    SimDevice,
    StandardDevices,
    SwitchSim,
    Z2MLightSim,
    add_standard_devices,
)

pytestmark = pytest.mark.timeout(60)

ALL = ("Kitchen light", "Living room lamp", "Coffee machine", "Living room blinds", "Garage door", "Front door",
       "Hallway thermostat", "Porch light", "Heater plug")


@pytest.fixture
def std(device_sim: DeviceSimulator) -> StandardDevices:
    return add_standard_devices(device_sim)


def commands_to(spy: BrokerSpy, prefix: str) -> list[tuple[str, str]]:
    return [(m.topic, m.payload.decode()) for m in spy.snapshot() if m.topic.startswith(prefix) and m.topic.endswith("/set")]


async def test_discovery_builds_the_registry_schemas_and_summary(mosquitto: Mosquitto, std: StandardDevices) -> None:
    async with HomeRig(mosquitto) as rig:
        await rig.wait_devices(*ALL)
        await asyncio.sleep(0.3)  # tool schemas are refreshed once a discovery burst settles
        out = await rig.call("list_devices")
        assert out["ok"]
        lines = {line.split(" (")[0]: line for line in out["devices"]}  # one line per device
        assert set(lines) == set(ALL)
        assert lines["Kitchen light"].startswith("Kitchen light (light, Kitchen)")
        assert lines["Living room lamp"] == "Living room lamp (light, Living room): off"
        assert lines["Hallway thermostat"] == "Hallway thermostat (climate, Hall): heat set 20°C now 19.5°C"
        state = {n: await rig.call("get_device_state", {"device": n}) for n in ("Garage door", "Living room lamp", "Hallway thermostat")}
        assert state["Garage door"]["type"] == "garage_door" and state["Garage door"]["needs_confirmation"]
        assert state["Living room lamp"]["state"] == {"state": "off", "brightness": 100, "available": True}
        assert state["Hallway thermostat"]["state"] == {"target_temperature": 20.0, "current_temperature": 19.5, "mode": "heat"}
        only_hall = await rig.call("list_devices", {"area": "hall"})
        assert sorted(line.split(" (")[0] for line in only_hall["devices"]) == ["Front door", "Hallway thermostat"]
        only_covers = await rig.call("list_devices", {"type": "cover"})
        assert [line.split(" (")[0] for line in only_covers["devices"]] == ["Living room blinds"]
        schemas = {s["name"]: s for s in rig.tools.schemas()}
        assert set(schemas) == {"list_devices", "get_device_state", "control_device"}
        params = schemas["control_device"]["parameters"]
        assert sorted(params["properties"]["device"]["enum"]) == sorted(ALL)
        assert params["properties"]["action"]["enum"] == ["turn_on", "turn_off", "toggle", "open", "close", "stop", "lock",
                                                          "unlock", "activate", "set"]
        assert params["required"] == ["device", "action"]
        summary = rig.home.summary()
        assert "Kitchen light (light, Kitchen)" in summary and "Front door (lock, Hall)" in summary


async def test_removed_discovery_config_removes_the_device(mosquitto: Mosquitto, device_sim: DeviceSimulator,
                                                          std: StandardDevices) -> None:
    async with HomeRig(mosquitto) as rig:
        await rig.wait_devices(*ALL)
        device_sim.remove(std.fan)
        for _ in range(100):
            if rig.home.registry.find("Coffee machine").device is None:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert not [line for line in (await rig.call("list_devices"))["devices"] if line.startswith("Coffee machine")]
        enum = {s["name"]: s for s in rig.tools.schemas()}["control_device"]["parameters"]["properties"]["device"]["enum"]
        assert "Coffee machine" not in enum
        out = await rig.call("control_device", {"device": "coffee machine", "action": "turn_on"})
        assert not out["ok"] and "unknown device" in out["error"]
        assert not [t for t, _ in rig.published if t.startswith("home/kitchen/coffee")]


async def test_malformed_discovery_and_state_messages_are_logged_and_skipped(
    mosquitto: Mosquitto, device_sim: DeviceSimulator, std: StandardDevices, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with HomeRig(mosquitto) as rig:
        await rig.wait_devices(*ALL)
        # Subscribed to their state topics (their retained states arrived) before the garbage comes.
        for name in ("living room lamp", "kitchen light", "front door"):
            await rig.wait_state(name, lambda s: bool(s))
        device_sim.publish("homeassistant/light/bad1/config", b"{not json")
        device_sim.publish("homeassistant/switch/bad2/config", json.dumps({"name": "Evil", "cmd_t": "#"}))
        device_sim.publish("homeassistant/switch/bad3/config", b"\xff\xfe")
        device_sim.publish("home/livingroom/lamp/brightness", b"bright!")
        device_sim.publish("zigbee2mqtt/Kitchen light", b"[1,2,3]")
        device_sim.publish("home/hall/frontdoor/state", b"\x00\xff")
        await asyncio.sleep(0.5)
        for topic in ("homeassistant/light/bad1/config", "homeassistant/switch/bad2/config", "homeassistant/switch/bad3/config",
                      "home/livingroom/lamp/brightness", "zigbee2mqtt/Kitchen light"):
            assert topic in caplog.text, f"nothing logged about {topic}"
        assert sorted(rig.home.registry.names()) == sorted(ALL)
        assert rig.home.registry.find("Living room lamp").device.state["brightness"] == 100
        out = await rig.call("control_device", {"device": "living room lamp", "action": "set", "brightness": 25})
        assert out["ok"], out  # the device still works after garbage on its topics


async def test_lights(mosquitto: Mosquitto, std: StandardDevices, mqtt_spy: BrokerSpy) -> None:
    async with HomeRig(mosquitto) as rig:
        await rig.wait_devices(*ALL)
        out = await rig.call("control_device", {"device": "KITCHEN LIGHT", "action": "turn_on", "brightness": 40, "color": "red"})
        assert out["ok"], out
        assert out["state"]["state"] == "on" and out["state"]["brightness"] == 40 and out["state"]["color"].startswith("#ff")
        cmd = json.loads(std.kitchen.commands[-1][1])
        assert cmd["state"] == "ON" and cmd["brightness"] == 102 and set(cmd["color"]) == {"x", "y"}  # xy-only bulb
        out = await rig.call("control_device", {"device": "kitchen light", "action": "toggle"})
        assert out["ok"] and out["state"]["state"] == "off"
        out = await rig.call("control_device", {"device": "living room lamp", "action": "set", "brightness": 30})
        assert out == {"ok": True, "device": "Living room lamp", "state": {"state": "on", "brightness": 30, "available": True}}
        assert std.lamp.commands[-2:] == [("home/livingroom/lamp/set", "on"), ("home/livingroom/lamp/brightness/set", "30")]
        out = await rig.call("control_device", {"device": "living room lamp", "action": "turn_off"})
        assert out["ok"] and out["state"]["state"] == "off"
        out = await rig.call("control_device", {"device": "living room lamp", "action": "turn_on", "color": "blue"})
        assert not out["ok"] and "no colour" in out["error"]
        out = await rig.call("control_device", {"device": "coffee machine", "action": "turn_on", "brightness": 20})
        assert not out["ok"] and "no brightness" in out["error"]
        out = await rig.call("control_device", {"device": "coffee machine", "action": "turn_on"})
        assert out["ok"] and out["state"] == {"state": "on"}
        assert std.fan.on
    assert mqtt_spy.wait_for(lambda m: m.topic == "zigbee2mqtt/Kitchen light/set", 1) is not None


async def test_cover_lock_climate(mosquitto: Mosquitto, std: StandardDevices) -> None:
    async with HomeRig(mosquitto) as rig:
        await rig.wait_devices(*ALL)
        out = await rig.call("control_device", {"device": "living room blinds", "action": "open"})
        assert out["ok"] and out["state"]["state"] in ("opening", "open")
        await rig.wait_state("living room blinds", lambda s: s.get("state") == "open" and s.get("position") == 100)
        out = await rig.call("control_device", {"device": "living room blinds", "action": "set", "position": 30})
        assert out["ok"] and std.blinds.commands[-1] == ("home/livingroom/blinds/position/set", "30")
        await rig.wait_state("living room blinds", lambda s: s.get("position") == 30)
        out = await rig.call("control_device", {"device": "living room blinds", "action": "close"})
        assert out["ok"]
        out = await rig.call("control_device", {"device": "living room blinds", "action": "stop"})
        assert out["ok"] and out["state"]["state"] == "stopped"
        out = await rig.call("control_device", {"device": "living room blinds", "action": "lock"})
        assert not out["ok"] and "supports: open, close, stop, set" in out["error"]

        out = await rig.call("control_device", {"device": "front door", "action": "unlock", "confirmed": True})
        assert out["ok"] and out["state"] == {"state": "unlocked"} and not std.front_door.locked
        out = await rig.call("control_device", {"device": "front door", "action": "lock", "confirmed": True})
        assert out["ok"] and out["state"] == {"state": "locked"} and std.front_door.locked

        out = await rig.call("control_device", {"device": "hallway thermostat", "action": "set", "temperature": 22.5})
        assert out["ok"] and out["state"]["target_temperature"] == 22.5 and std.thermostat.target == 22.5
        out = await rig.call("control_device", {"device": "hallway thermostat", "action": "set", "temperature": 40})
        assert not out["ok"] and "7 to 28" in out["error"]
        out = await rig.call("control_device", {"device": "hallway thermostat", "action": "turn_off"})
        assert out["ok"] and out["state"]["mode"] == "off"
        out = await rig.call("control_device", {"device": "hallway thermostat", "action": "turn_on"})
        assert out["ok"] and out["state"]["mode"] == "heat"
        out = await rig.call("get_device_state", {"device": "Hallway Thermostat"})
        assert out["ok"] and out["state"] == {"target_temperature": 22.5, "current_temperature": 19.5, "mode": "heat"}


async def test_timeout_and_mismatch_report_what_was_seen(mosquitto: Mosquitto, std: StandardDevices,
                                                        mqtt_spy: BrokerSpy) -> None:
    async with HomeRig(mosquitto, command_timeout_s=0.8) as rig:
        await rig.wait_devices(*ALL)
        t0 = time.monotonic()
        out = await rig.call("control_device", {"device": "porch light", "action": "turn_on"})
        took = time.monotonic() - t0
        assert not out["ok"] and "did not report a new state within 0.8 s" in out["error"], out
        assert out["state"] == {"state": "off"}
        assert 0.7 <= took < 2.0
        assert mqtt_spy.wait_for(lambda m: m.topic == "home/porch/light/set" and m.payload == b"ON", 1), "command not sent"

        out = await rig.call("control_device", {"device": "heater plug", "action": "turn_on"})
        assert not out["ok"] and "reported state off instead of state on" in out["error"], out
        assert out["state"] == {"state": "off"}


async def test_confirmation_required_for_locks_garage_doors_and_flagged_devices(
    mosquitto: Mosquitto, device_sim: DeviceSimulator, std: StandardDevices, mqtt_spy: BrokerSpy
) -> None:
    boiler = SwitchSim("Boiler", "home/cellar/boiler", discovered=False)
    device_sim.add(boiler)
    devices = (DeviceConfig(name="Boiler", type="switch", command_topic="home/cellar/boiler/set",
                            state_topic="home/cellar/boiler/state", confirm=True),)
    async with HomeRig(mosquitto, devices=devices) as rig:
        await rig.wait_devices(*ALL, "Boiler")
        for args in (
            {"device": "front door", "action": "unlock"},
            {"device": "front door", "action": "unlock", "confirmed": "true"},
            {"device": "front door", "action": "unlock", "confirmed": 1},
            {"device": "garage door", "action": "open", "confirmed": False},
            {"device": "Boiler", "action": "turn_on"},
        ):
            out = await rig.call("control_device", args)
            assert not out["ok"] and out.get("needs_confirmation") is True, (args, out)
            assert "confirm" in out["error"]
        await asyncio.sleep(0.2)
        assert not commands_to(mqtt_spy, "home/hall/frontdoor") and not commands_to(mqtt_spy, "home/garage")
        assert not commands_to(mqtt_spy, "home/cellar")
        out = await rig.call("control_device", {"device": "garage door", "action": "open", "confirmed": True})
        assert out["ok"], out
        out = await rig.call("control_device", {"device": "boiler", "action": "turn_on", "confirmed": True})
        assert out["ok"] and boiler.on


async def test_allow_and_deny_lists(mosquitto: Mosquitto, std: StandardDevices, mqtt_spy: BrokerSpy) -> None:
    async with HomeRig(mosquitto, allow=["*light*", "front door", "living room *"], deny=["front door", "porch*"]) as rig:
        await rig.wait_devices("Kitchen light", "Living room lamp", "Living room blinds")
        await asyncio.sleep(0.5)
        names = [line.split(" (")[0] for line in (await rig.call("list_devices"))["devices"]]
        assert sorted(names) == ["Kitchen light", "Living room blinds", "Living room lamp"]
        enum = {s["name"]: s for s in rig.tools.schemas()}["control_device"]["parameters"]["properties"]["device"]["enum"]
        assert sorted(enum) == sorted(names)
        for name in ("front door", "porch light", "coffee machine"):
            out = await rig.call("control_device", {"device": name, "action": "unlock" if name == "front door" else "turn_on",
                                                    "confirmed": True})
            assert not out["ok"] and "unknown device" in out["error"], out
            out = await rig.call("get_device_state", {"device": name})
            assert not out["ok"]
        assert "Front door" not in rig.home.summary()
        await asyncio.sleep(0.2)
        assert not commands_to(mqtt_spy, "home/hall") and not commands_to(mqtt_spy, "home/porch")


async def test_unknown_device_names_the_closest_matches(mosquitto: Mosquitto, std: StandardDevices) -> None:
    async with HomeRig(mosquitto) as rig:
        await rig.wait_devices(*ALL)
        out = await rig.call("control_device", {"device": "kitchen lihgt", "action": "turn_on"})
        assert not out["ok"] and "Kitchen light" in out["suggestions"] and "unknown device 'kitchen lihgt'" in out["error"]
        out = await rig.call("get_device_state", {"device": "zzzz"})
        assert not out["ok"] and "known devices:" in out["error"] and "Front door" in out["error"]
        out = await rig.call("control_device", {"device": "the Coffee  Machine", "action": "turn_on"})
        assert out["ok"], out


async def test_offline_device_fails_fast_without_publishing(mosquitto: Mosquitto, device_sim: DeviceSimulator,
                                                           std: StandardDevices) -> None:
    async with HomeRig(mosquitto) as rig:
        await rig.wait_devices(*ALL)
        device_sim.publish("home/livingroom/lamp/status", "offline", retain=True)
        await rig.wait_state("living room lamp", lambda s: s.get("available") is False)
        before = len(rig.published)
        t0 = time.monotonic()
        out = await rig.call("control_device", {"device": "living room lamp", "action": "turn_on"})
        assert not out["ok"] and "offline" in out["error"] and time.monotonic() - t0 < 0.1
        assert len(rig.published) == before
        out = await rig.call("get_device_state", {"device": "living room lamp"})
        assert out["state"]["available"] is False


async def test_config_declared_devices_scene_and_json(mosquitto: Mosquitto, device_sim: DeviceSimulator,
                                                     mqtt_spy: BrokerSpy) -> None:
    plug = SwitchSim("Desk plug", "z2m/desk", discovered=False)
    device_sim.add(plug)
    devices = (
        DeviceConfig(name="Movie scene", type="scene", area="Living room", command_topic="home/scenes/movie"),
        DeviceConfig(name="Desk plug", type="switch", area="Office", command_topic="z2m/desk/set", state_topic="z2m/desk/state"),
        DeviceConfig(name="Hall sensor", type="sensor", area="Hall", state_topic="z2m/hall", value_template="temperature"),
    )
    async with HomeRig(mosquitto, devices=devices, discovery=False) as rig:
        # grouped by area, for the {{devices}} placeholder
        assert [line.split(":")[0] for line in rig.home.summary().splitlines()] == [
            "Hall sensor (sensor, Hall)", "Movie scene (scene, Living room)", "Desk plug (switch, Office)"]
        out = await rig.call("control_device", {"device": "movie scene", "action": "activate"})
        assert out["ok"] and "activated" in out["note"]
        assert mqtt_spy.wait_for(lambda m: m.topic == "home/scenes/movie" and m.payload == b"ON", 2)
        out = await rig.call("control_device", {"device": "desk plug", "action": "turn_on"})
        assert out["ok"] and plug.on
        device_sim.publish("z2m/hall", json.dumps({"temperature": 19.25, "humidity": 40}))
        await rig.wait_state("hall sensor", lambda s: s.get("value") == 19.25)
        out = await rig.call("control_device", {"device": "hall sensor", "action": "turn_on"})
        assert not out["ok"] and "can only be read" in out["error"]


async def test_config_declared_zigbee2mqtt_json_light(mosquitto: Mosquitto, device_sim: DeviceSimulator) -> None:
    sim = Z2MLightSim("Desk lamp", "0x00124b0000000009", "Office")
    sim.discovery_topic = ""  # not announced: only the config knows it
    device_sim.add(sim)
    devices = (DeviceConfig(name="Desk lamp", type="light", schema="json", area="Office",
                            command_topic="zigbee2mqtt/Desk lamp/set", state_topic="zigbee2mqtt/Desk lamp"),)
    async with HomeRig(mosquitto, devices=devices, discovery=False) as rig:
        out = await rig.call("control_device", {"device": "desk lamp", "action": "turn_on", "brightness": 60, "color": "#00ff00"})
        assert out["ok"], out
        assert out["state"]["brightness"] == 60 and out["state"]["state"] == "on"
        cmd = json.loads(sim.commands[-1][1])
        assert cmd == {"state": "ON", "brightness": 153, "color": {"r": 0, "g": 255, "b": 0}}
        out = await rig.call("control_device", {"device": "desk lamp", "action": "turn_off"})
        assert out["ok"] and out["state"]["state"] == "off" and sim.state["state"] == "OFF"


async def test_broker_restart_mid_run(mosquitto: Mosquitto, device_sim: DeviceSimulator, std: StandardDevices) -> None:
    async with HomeRig(mosquitto) as rig:
        await rig.wait_devices(*ALL)
        assert (await rig.call("control_device", {"device": "coffee machine", "action": "turn_on"}))["ok"]
        await asyncio.to_thread(mosquitto.stop)
        for _ in range(100):
            if not rig.mqtt.connected:
                break
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        out = await rig.call("control_device", {"device": "coffee machine", "action": "turn_off"})
        assert not out["ok"] and "broker" in out["error"] and f"127.0.0.1:{mosquitto.port}" in out["error"]
        assert time.monotonic() - t0 < 0.1, "a broker outage must fail the tool call at once"
        listing = await rig.call("list_devices")
        assert listing["ok"] and "not connected" in listing["note"] and len(listing["devices"]) == len(ALL)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(mosquitto.start)
        assert await rig.mqtt.wait_connected(5)
        assert device_sim.connected.wait(5)
        # Persistence is off: the broker forgot everything; the devices re-announce and we re-subscribed.
        out = None
        for _ in range(40):
            out = await rig.call("control_device", {"device": "coffee machine", "action": "turn_off"})
            if out["ok"]:
                break
            await asyncio.sleep(0.1)
        assert out is not None and out["ok"], out
        device_sim.publish("home/livingroom/lamp/brightness", "55", retain=True)
        await rig.wait_state("living room lamp", lambda s: s.get("brightness") == 55)


async def test_speakers_own_discovery_entities_are_not_home_devices(mosquitto: Mosquitto, device_sim: DeviceSimulator,
                                                                   std: StandardDevices) -> None:
    from device.presence import discovery_messages

    async with HomeRig(mosquitto, device_id="office") as rig:
        for topic, payload in discovery_messages(rig.settings).items():  # another speaker's announcement
            device_sim.publish(topic, json.dumps(payload), retain=True)
        await rig.wait_devices(*ALL)
        await asyncio.sleep(0.4)
        assert sorted(rig.home.registry.names()) == sorted(ALL)


class _TemplatedHeater(SimDevice):
    """A device that takes {"power": "ON"} and reports {"power": "ON", "temp": ...}."""

    def __init__(self) -> None:
        super().__init__("Heater")
        self.power = "OFF"

    def command_topics(self) -> list[str]:
        return ["home/heater/set"]

    def state_messages(self) -> list[tuple[str, str, bool]]:
        return [("home/heater", json.dumps({"power": self.power, "temp": 21.5}), False)]

    def handle(self, topic: str, payload: str) -> list[tuple[str, str, bool]]:
        self.power = json.loads(payload)["power"]
        return self.state_messages()


async def test_config_declared_device_with_command_and_value_templates(mosquitto: Mosquitto, device_sim: DeviceSimulator) -> None:
    heater = _TemplatedHeater()
    device_sim.add(heater)
    devices = (DeviceConfig(name="Heater", type="switch", area="Bathroom", command_topic="home/heater/set",
                            state_topic="home/heater", command_template='{"power": "{{ value }}"}',
                            value_template="{{ value_json.power }}"),)
    async with HomeRig(mosquitto, devices=devices, discovery=False) as rig:
        out = await rig.call("control_device", {"device": "heater", "action": "turn_on"})
        assert out["ok"], out
        assert heater.commands[-1] == ("home/heater/set", '{"power": "ON"}')
        assert heater.power == "ON" and out["state"]["state"] == "on"


async def test_fahrenheit_thermostat_takes_and_reports_celsius(mosquitto: Mosquitto, device_sim: DeviceSimulator) -> None:
    from tests.rig.broker import ClimateSim

    sim = ClimateSim("Den thermostat", "home/den", "Den")
    assert sim.discovery is not None
    sim.discovery.update({"temp_unit": "F", "min_temp": 45, "max_temp": 90, "temp_step": 1})
    sim.target, sim.current = 68.0, 66.2
    device_sim.add(sim)
    async with HomeRig(mosquitto) as rig:
        await rig.wait_devices("den thermostat")
        await rig.wait_state("den thermostat", lambda s: "current_temperature" in s)
        state = (await rig.call("get_device_state", {"device": "den thermostat"}))["state"]
        assert state["target_temperature"] == 20.0 and state["current_temperature"] == 19.0
        out = await rig.call("control_device", {"device": "den thermostat", "action": "set", "temperature": 21})
        assert out["ok"], out
        assert sim.commands[-1] == ("home/den/target/set", "70.0")  # 21 °C in whole °F
        assert abs(out["state"]["target_temperature"] - 21.1) < 0.06
        out = await rig.call("control_device", {"device": "den thermostat", "action": "set", "temperature": 40})
        assert not out["ok"] and "7.22 to 32.2 °C" in out["error"]
