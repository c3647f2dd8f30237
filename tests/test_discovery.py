"""Home Assistant discovery parsing: topics, abbreviations, '~', availability, naming, templates,
Zigbee2MQTT configs, device-based discovery, malformed configs (pure functions, no broker)."""

from __future__ import annotations

import json

import pytest

from device.tools.devices import Device, Template, TemplateError
from device.tools.discovery import DiscoveryError, expand, parse_message, parse_topic

P = "homeassistant"


def one(topic: str, cfg: dict | bytes):
    payload = cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode()
    [(key, spec)] = parse_message(topic, payload, P)
    return key, spec


def test_topics_with_and_without_node_id() -> None:
    t = parse_topic("homeassistant/light/esp32/lamp/config", P)
    assert (t.component, t.node_id, t.object_id) == ("light", "esp32", "lamp")
    t = parse_topic("homeassistant/switch/plug_1/config", P)
    assert (t.component, t.node_id, t.object_id) == ("switch", "", "plug_1")
    for bad in ("homeassistant/light/lamp/state", "other/light/lamp/config", "homeassistant/light/a/b/c/config",
                "homeassistant/light/config", "homeassistant/light/l amp/config"):
        assert parse_topic(bad, P) is None, bad


def test_abbreviations_and_base_topic_expand_like_home_assistant() -> None:
    cfg = expand({
        "~": "home/lamp",
        "cmd_t": "~/set", "stat_t": "~/state", "avty_t": "~/status", "pl_on": "1", "pl_off": "0",
        "bri_cmd_t": "~/bri/set", "bri_stat_t": "~/bri", "bri_scl": 100, "pos_t": "~/pos", "set_pos_t": "~/pos/set",
        "pl_open": "O", "pl_cls": "C", "pl_stop": "S", "pl_lock": "L", "pl_unlk": "U", "stat_locked": "LD",
        "temp_cmd_t": "~/t/set", "temp_stat_t": "~/t", "mode_cmd_t": "~/m/set", "mode_stat_t": "~/m",
        "val_tpl": "{{ value_json.x }}", "uniq_id": "u1", "json_attr_t": "attrs/~",
        "dev": {"name": "Lamp", "sa": "Den", "ids": ["x"], "mf": "Acme", "mdl": "L1"},
        "avty": [{"t": "~/avail", "pl_avail": "up", "pl_not_avail": "down", "val_tpl": "{{ value }}"}],
    })
    assert cfg["command_topic"] == "home/lamp/set"
    assert cfg["state_topic"] == "home/lamp/state"
    assert cfg["availability_topic"] == "home/lamp/status"
    assert cfg["json_attributes_topic"] == "attrs/home/lamp"  # '~' at the end
    assert (cfg["payload_on"], cfg["payload_off"]) == ("1", "0")
    assert cfg["brightness_command_topic"] == "home/lamp/bri/set" and cfg["brightness_state_topic"] == "home/lamp/bri"
    assert cfg["brightness_scale"] == 100
    assert cfg["position_topic"] == "home/lamp/pos" and cfg["set_position_topic"] == "home/lamp/pos/set"
    assert (cfg["payload_open"], cfg["payload_close"], cfg["payload_stop"]) == ("O", "C", "S")
    assert (cfg["payload_lock"], cfg["payload_unlock"], cfg["state_locked"]) == ("L", "U", "LD")
    assert cfg["temperature_command_topic"] == "home/lamp/t/set" and cfg["temperature_state_topic"] == "home/lamp/t"
    assert cfg["mode_command_topic"] == "home/lamp/m/set" and cfg["mode_state_topic"] == "home/lamp/m"
    assert cfg["value_template"] == "{{ value_json.x }}" and cfg["unique_id"] == "u1"
    assert cfg["device"] == {"name": "Lamp", "suggested_area": "Den", "identifiers": ["x"], "manufacturer": "Acme", "model": "L1"}
    assert cfg["availability"] == [{"topic": "home/lamp/avail", "payload_available": "up", "payload_not_available": "down",
                                    "value_template": "{{ value }}"}]
    assert "~" not in cfg


def test_default_schema_light_from_abbreviations() -> None:
    key, s = one("homeassistant/light/esp/lamp/config", {
        "~": "home/lamp", "name": None, "cmd_t": "~/set", "stat_t": "~/state", "bri_cmd_t": "~/b/set", "bri_stat_t": "~/b",
        "bri_scl": 100, "pl_on": "on", "pl_off": "off", "avty_t": "~/status",
        "dev": {"name": "Reading lamp", "sa": "Study", "ids": ["l1"]},
    })
    assert key == "discovery:homeassistant/light/esp/lamp/config"
    assert (s.name, s.type, s.area, s.schema) == ("Reading lamp", "light", "Study", "default")
    assert s.command_topics() == {"home/lamp/set", "home/lamp/b/set"}
    assert s.brightness_scale == 100 and (s.payload_on, s.payload_off) == ("on", "off")
    d = Device(s)
    d.apply("home/lamp/state", b"on", False, ["state"])
    d.apply("home/lamp/b", b"40", False, ["brightness"])
    d.apply("home/lamp/status", b"offline", True, ["availability:0"])
    assert d.snapshot() == {"state": "on", "brightness": 40, "available": False}


def test_zigbee2mqtt_json_light_and_its_state() -> None:
    _, s = one("homeassistant/light/0x0017880104e45517/light/config", {
        "availability": [{"topic": "zigbee2mqtt/bridge/state", "value_template": "{{ value_json.state }}"}],
        "brightness": True, "brightness_scale": 254, "command_topic": "zigbee2mqtt/Hall/set",
        "device": {"identifiers": ["zigbee2mqtt_0x0017880104e45517"], "name": "Hall", "model": "LCT015"},
        "name": None, "schema": "json", "state_topic": "zigbee2mqtt/Hall", "supported_color_modes": ["xy", "color_temp"],
        "unique_id": "0x0017880104e45517_light_zigbee2mqtt",
    })
    assert (s.name, s.type, s.schema, s.color_modes, s.brightness_scale) == ("Hall", "light", "json", ("xy", "color_temp"), 254)
    d = Device(s)
    d.apply("zigbee2mqtt/bridge/state", b'{"state":"online"}', True, ["availability:0"])
    d.apply("zigbee2mqtt/Hall", b'{"state":"ON","brightness":127,"color":{"x":0.701,"y":0.299},"linkquality":80}', False, ["state"])
    st = d.snapshot()
    assert st["state"] == "on" and st["brightness"] == 50 and st["available"] is True
    assert st["color"].startswith("#ff0")  # a saturated red


def test_cover_lock_climate_and_sensor_specs() -> None:
    _, cover = one("homeassistant/cover/gar/config", {"name": "Garage", "cmd_t": "g/set", "stat_t": "g/state",
                                                        "dev_cla": "garage", "pos_t": "g/pos", "pos_open": 255, "pos_clsd": 0})
    assert cover.type == "garage_door" and cover.needs_confirmation and cover.position_open == 255
    d = Device(cover)
    d.apply("g/pos", b"51", False, ["position"])
    assert d.state["position"] == 20
    _, lock = one("homeassistant/lock/door/config", {"name": "Door", "cmd_t": "d/set", "stat_t": "d/state",
                                                       "pl_lock": "L", "pl_unlk": "U", "stat_locked": "is_locked"})
    assert lock.needs_confirmation and lock.actions() == ("lock", "unlock")
    d = Device(lock)
    d.apply("d/state", b"is_locked", False, ["state"])
    assert d.state["state"] == "locked"
    _, clim = one("homeassistant/climate/trv/config", {"name": "TRV", "temp_cmd_t": "c/t/set", "temp_stat_t": "c",
                                                         "temp_stat_tpl": "{{ value_json.sp }}", "mode_cmd_t": "c/m/set",
                                                         "modes": ["off", "heat"], "min_temp": 5, "max_temp": 30})
    assert (clim.min_temp, clim.max_temp, clim.modes) == (5.0, 30.0, ("off", "heat"))
    assert clim.actions() == ("turn_on", "turn_off", "set")
    _, sensor = one("homeassistant/sensor/t1/config", {"name": "Temp", "stat_t": "s", "unit_of_meas": "°C",
                                                         "val_tpl": "{{ value_json.temperature | round(1) }}",
                                                         "dev": {"name": "Attic sensor"}})
    assert sensor.name == "Attic sensor Temp"
    d = Device(sensor)
    d.apply("s", b'{"temperature": 21.46}', False, ["state"])
    assert d.snapshot() == {"value": 21.5, "unit": "°C"}
    _, bs = one("homeassistant/binary_sensor/m/config", {"name": "Motion", "stat_t": "m", "pl_on": True, "pl_off": False,
                                                           "val_tpl": "{{ value_json.occupancy }}"})
    d = Device(bs)
    d.apply("m", b'{"occupancy": true}', False, ["state"])
    assert d.state == {"state": "on"}  # Jinja renders true as "True", as Home Assistant compares it


def test_settings_disabled_and_unsupported_components_are_ignored() -> None:
    # Zigbee2MQTT's linkquality is disabled by default, its settings are entity_category config.
    _, s = one("homeassistant/sensor/x/linkquality/config", {"name": "LQI", "stat_t": "z", "ent_cat": "diagnostic", "en": False})
    assert s is None
    _, s = one("homeassistant/switch/x/child_lock/config", {"name": "Child lock", "cmd_t": "z/set", "ent_cat": "config"})
    assert s is None
    _, s = one("homeassistant/button/x/identify/config", {"name": "Identify", "cmd_t": "z/set", "ent_cat": "diagnostic"})
    assert s is None
    # A diagnostic reading (Zigbee2MQTT's battery) stays: people ask for it.
    _, s = one("homeassistant/sensor/x/battery/config", {"name": "Battery", "stat_t": "z", "ent_cat": "diagnostic"})
    assert s is not None and s.entity_category == "diagnostic"
    _, s = one("homeassistant/vacuum/robo/config", {"name": "Robo", "cmd_t": "v/set"})
    assert s is None


def test_empty_payload_means_removal() -> None:
    assert parse_message("homeassistant/light/esp/lamp/config", b"", P) == [("discovery:homeassistant/light/esp/lamp/config", None)]


@pytest.mark.parametrize("payload", [
    b"{not json", b"[1, 2]", b"\xff\xfe", json.dumps({"name": "x"}).encode(),  # no command topic
    json.dumps({"name": "x", "cmd_t": "a/#"}).encode(),  # wildcard command topic
    json.dumps({"name": "x", "cmd_t": "a/set", "stat_t": "+/state"}).encode(),
    json.dumps({"name": "x", "cmd_t": "a/set", "val_tpl": "{% if value %}ON{% endfor %}"}).encode(),
    json.dumps({"name": "x", "cmd_t": ["a"]}).encode(),
    json.dumps({"name": "x", "cmd_t": "a/set", "avty": [{"pl_avail": "x"}]}).encode(),
])
def test_malformed_configs_raise_a_named_error(payload: bytes) -> None:
    with pytest.raises(DiscoveryError):
        parse_message("homeassistant/switch/x/config", payload, P)


def test_device_based_discovery_with_components() -> None:
    payload = {
        "~": "zigbee2mqtt/Desk", "dev": {"name": "Desk", "ids": ["d1"], "sa": "Office"}, "o": {"name": "z2m"},
        "stat_t": "~",
        "cmps": {
            "light": {"p": "light", "schema": "json", "cmd_t": "~/set", "uniq_id": "d1_l"},
            "batt": {"p": "sensor", "name": "Battery", "ent_cat": "diagnostic", "val_tpl": "{{ value_json.battery }}"},
            "power": {"p": "sensor", "name": "Power", "unit_of_meas": "W", "val_tpl": "{{ value_json.power }}"},
            "weird": {"p": "teleporter"},
        },
    }
    out = dict(parse_message("homeassistant/device/desk/config", json.dumps(payload).encode(), P))
    light = out["discovery:homeassistant/device/desk/config#light"]
    # No name key and no device class: Home Assistant calls a JSON light "MQTT JSON Light".
    assert (light.name, light.area, light.command_topic, light.state_topic) == (
        "Desk MQTT JSON Light", "Office", "zigbee2mqtt/Desk/set", "zigbee2mqtt/Desk")
    assert out["discovery:homeassistant/device/desk/config#batt"].name == "Desk Battery"  # a diagnostic reading
    assert out["discovery:homeassistant/device/desk/config#power"].name == "Desk Power"
    assert out["discovery:homeassistant/device/desk/config#weird"] is None


def test_templates_subset() -> None:
    assert Template("{{ value_json.a.b }}").render_value('{"a": {"b": 3}}') == "3"
    assert Template("{{ value_json['x y'][1] }}").render_value('{"x y": [1, 2]}') == "2"
    assert Template("{{ value | int }}").render_value("21.7") == "21"
    assert Template("{{ value_json.t | float | round(1) }}").render_value('{"t": "20.04"}') == "20.0"
    assert Template("{{ value_json.missing }}").render_value("{}") is None
    assert Template("{{ value_json.m | default('off') }}").render_value("{}") == "off"
    assert Template('{"position": {{ position }}}').render({"position": 40}) == '{"position": 40}'
    assert Template("{{ value_json.s }}").render_value("not json") is None
    for bad in ("{% if x %}y{% endfor %}", "{{ value | no_such_filter }}", "{{ }}", "{{ value"):
        with pytest.raises(TemplateError):
            Template(bad)
    # Rendered as Home Assistant does (Jinja): statements, as Zigbee2MQTT's covers with a motor state send,
    # its update entity's dict access, Home Assistant's float with a default; nothing outside the sandbox.
    motor = ('{% if "motor_state" in value_json and value_json["motor_state"] %} {{ value_json["motor_state"] }} '
             '{% else %} stopped {% endif %}')
    assert Template(motor).render_value('{"motor_state": "opening", "position": 10}').strip() == "opening"
    assert Template(motor).render_value('{"position": 10}').strip() == "stopped"
    update = "{{ value_json['update'].get('progress', 'null') }}"
    assert Template(update).render_value('{"update": {"state": "idle"}}') == "null"
    assert Template("{{ value | float(-1) }}").render_value("n/a") == "-1"
    assert Template("{{ value_json.permit_join | lower }}").render_value('{"permit_join": true}') == "true"
    with pytest.raises(ValueError):
        Template("{{ value.__class__.__mro__[1].__subclasses__() }}").render_value("x")


def test_config_json_devices_speak_zigbee2mqtt() -> None:
    from device.config import DeviceConfig
    from device.tools.devices import spec_from_config

    lock = spec_from_config(DeviceConfig(name="Back door", type="lock", schema="json", command_topic="zigbee2mqtt/Back door/set",
                                         state_topic="zigbee2mqtt/Back door"))
    assert lock.payload_unlock == '{"state": "UNLOCK"}' and lock.needs_confirmation
    d = Device(lock)
    d.apply("zigbee2mqtt/Back door", b'{"state": "UNLOCK", "lock_state": "unlocked", "battery": 90}', False, ["state"])
    assert d.state == {"state": "unlocked"}
    cover = spec_from_config(DeviceConfig(name="Blind", type="cover", schema="json", command_topic="z/Blind/set", state_topic="z/Blind"))
    assert cover.position_command_topic == "z/Blind/set" and cover.position_command_template.render({"position": 30}) == '{"position": 30}'
    d = Device(cover)
    d.apply("z/Blind", b'{"state": "OPEN", "position": 70}', False, d.spec.state_topics()["z/Blind"])
    assert d.state == {"state": "open", "position": 70}
    d.apply("z/Blind", b'{"state": "CLOSE", "position": 0}', False, d.spec.state_topics()["z/Blind"])
    assert d.state == {"state": "closed", "position": 0}
    sensor = spec_from_config(DeviceConfig(name="Hall temp", type="sensor", state_topic="z/hall", value_template="temperature"))
    d = Device(sensor)
    d.apply("z/hall", b'{"temperature": 20.5}', False, ["state"])
    assert d.state == {"value": 20.5}
    with pytest.raises(ValueError, match="value_template"):
        spec_from_config(DeviceConfig(name="Bad", type="sensor", state_topic="z/x", value_template="{% if %}"))

    from pathlib import Path

    from device.config import Settings
    from device.tools.home import check_devices

    bad = Settings(path=Path("speaker.toml"), devices=(DeviceConfig(name="Bad", type="switch", command_topic="home/+/set"),))
    with pytest.raises(ValueError, match="speaker.toml.*'Bad' command_topic 'home/\\+/set' contains a wildcard"):
        check_devices(bad)


@pytest.mark.parametrize("component, config, name", [
    ("sensor", {"name": None, "dev_cla": "battery"}, "Front door"),           # name: null -> the device itself
    ("sensor", {"name": "Battery"}, "Front door Battery"),                    # named -> "<device> <name>"
    ("sensor", {"dev_cla": "battery"}, "Front door Battery"),                 # no name key -> the device class
    ("sensor", {"dev_cla": "atmospheric_pressure"}, "Front door Atmospheric pressure"),
    ("sensor", {"dev_cla": "enum"}, "Front door MQTT Sensor"),               # an enum sensor is not named by its class
    ("sensor", {}, "Front door MQTT Sensor"),                                 # neither: the platform's default name
    ("binary_sensor", {"dev_cla": "door"}, "Front door Door"),
    ("button", {"dev_cla": "restart", "cmd_t": "x/set"}, "Front door Restart"),
    ("lock", {"dev_cla": "lock", "cmd_t": "x/set"}, "Front door MQTT Lock"),  # locks are never named by a class
    ("sensor", {"name": "Front door Battery"}, "Front door Battery"),        # an old-style full name is not doubled
    ("sensor", {"name": "Front door"}, "Front door"),                         # the device's own name: the device
    ("sensor", {"name": "Battery", "obj_id": "front_door_battery", "def_ent_id": "sensor.x"}, "Front door Battery"),
])
def test_entity_names_follow_home_assistant(component: str, config: dict, name: str) -> None:
    payload = {"stat_t": "x/state", "dev": {"ids": ["x1"], "name": "Front door"}, **config}
    _, spec = one(f"homeassistant/{component}/x1/obj/config", payload)
    assert spec is not None and spec.name == name


def test_without_a_device_the_entity_name_or_its_id() -> None:
    _, spec = one("homeassistant/switch/x2/garden_pump/config", {"name": "Garden pump", "cmd_t": "p/set"})
    assert spec.name == "Garden pump" and spec.device_id == "discovery:homeassistant/switch/x2/garden_pump/config"
    _, spec = one("homeassistant/switch/x2/garden_pump/config", {"name": None, "cmd_t": "p/set"})
    assert spec.name == "garden pump"  # nothing else to call it by


def test_every_kind_has_one_platform_module() -> None:
    from device.tools.devices import DEVICE_TYPES
    from device.tools.platforms import BY_COMPONENT, BY_KIND, PLATFORMS

    assert set(BY_KIND) == set(DEVICE_TYPES)
    assert set(BY_COMPONENT) == {"light", "switch", "fan", "cover", "lock", "climate", "scene", "button", "alarm_control_panel",
                                 "sensor", "binary_sensor"}
    for p in PLATFORMS:
        for attr in ("KINDS", "COMPONENTS", "ACCEPTS", "read_discovery", "parse", "actions", "plan"):
            assert hasattr(p, attr), f"{p.__name__} has no {attr}"


def test_a_new_platform_is_one_module_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A water valve platform, written as a module would be, plugged into the table and nothing else."""
    import types

    from device.tools import platforms
    from device.tools.platforms.base import Expect, Plan

    valve = types.ModuleType("valve")
    valve.KINDS, valve.COMPONENTS, valve.ACCEPTS = ("valve",), ("valve",), frozenset()
    valve.read_discovery = lambda f, kind: {"options": (("pl_open", f.s("payload_open", "OPEN")),
                                                        ("cmd", f.topic("command_topic")))}
    valve.command_topics = lambda spec: [spec.option("cmd")]
    valve.parse = lambda spec, role, text: {"state": text.lower()} if role == "state" else None
    valve.actions = lambda spec: ("open", "close")
    valve.plan = lambda dev, action, req: Plan([(dev.spec.option("cmd"), dev.spec.option("pl_open"))], Expect(state=frozenset({"open"})))
    monkeypatch.setitem(platforms.BY_KIND, "valve", valve)
    monkeypatch.setitem(platforms.BY_COMPONENT, "valve", valve)

    _, spec = one("homeassistant/valve/garden/config", {"name": None, "cmd_t": "garden/valve/set", "stat_t": "garden/valve",
                                                      "pl_open": "ON", "dev": {"ids": ["g1"], "name": "Garden tap"}})
    assert (spec.name, spec.type, spec.actions()) == ("Garden tap", "valve", ("open", "close"))
    assert spec.command_topics() == {"garden/valve/set"}
    d = Device(spec)
    d.apply("garden/valve", b"OPEN", False, spec.state_topics()["garden/valve"])
    assert d.state == {"state": "open"}
    assert valve.plan(d, "open", None).messages == [("garden/valve/set", "ON")]


def test_zigbee2mqtt_curtain_with_a_motor_state() -> None:
    """homeassistant.ts: a cover whose exposes have motor_state gets a statement value template."""
    cfg = {
        "name": None, "command_topic": "zigbee2mqtt/Curtain/set", "state_topic": "zigbee2mqtt/Curtain",
        "state_opening": "opening", "state_closing": "closing", "state_stopped": "stopped",
        "value_template": '{% if "motor_state" in value_json and value_json["motor_state"] %} '
                          '{{ value_json["motor_state"] }} {% else %} stopped {% endif %}',
        "position_template": '{{ value_json["position"] }}', "set_position_template": '{ "position": {{ position }} }',
        "set_position_topic": "zigbee2mqtt/Curtain/set", "position_topic": "zigbee2mqtt/Curtain",
        "device": {"identifiers": ["zigbee2mqtt_0xa4c138"], "name": "Curtain"},
    }
    _, spec = one("homeassistant/cover/0xa4c138/cover/config", cfg)
    d = Device(spec)
    d.apply("zigbee2mqtt/Curtain", b'{"motor_state": "closing", "position": 60}', False, spec.state_topics()["zigbee2mqtt/Curtain"])
    assert d.state == {"state": "closing", "position": 60}
    d.apply("zigbee2mqtt/Curtain", b'{"motor_state": null, "position": 20}', False, spec.state_topics()["zigbee2mqtt/Curtain"])
    assert d.state == {"state": "stopped", "position": 20}
