"""Real-world device announcements, rebuilt from the projects' own source, and devices that answer.

- Zigbee2MQTT 2.x (``lib/extension/homeassistant.ts``): each device's entities come from its
  exposes (zigbee-herdsman-converters); ``discover()`` then adds ``object_id`` and
  ``default_entity_id`` (``<device>_<suffix>``), ``unique_id`` (``<ieee>_<object id>_zigbee2mqtt``),
  the ``device`` block (identifiers ``zigbee2mqtt_<ieee>``, name, model = description, model_id,
  manufacturer = vendor, via_device = the bridge), ``origin`` and the availability list (bridge
  state, plus the device's own when availability is on, with ``availability_mode: all``). The
  main entity of lights, switches, locks, covers and climates has ``name: null``.
- Tasmota's legacy discovery (``tasmota_xdrv_driver/xdrv_12_home_assistant.ino``, SetOption19 1):
  abbreviated keys; the relay's ``dev`` has only ``ids`` and the device's name arrives with the
  status sensor (``HASS_DISCOVER_DEVICE_INFO``); the other relay type's topic is cleared.
- Home Assistant's device-based discovery (``<prefix>/device/<id>/config`` with ``cmps``, shared
  ``dev``, ``o``, ``~`` and state topic), as its MQTT documentation describes it.
- ESPHome's MQTT discovery: abbreviated keys, identifiers as a plain string, entity names.

The ``*Sim`` classes answer commands the way the real device software does (Zigbee2MQTT publishes
the whole device state as JSON on ``zigbee2mqtt/<name>``; Tasmota answers on ``stat/`` and
``tele/<topic>/STATE``). A sleepy Zigbee sensor never answers ``/get``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from tests.rig.broker import Out, SimDevice

Z2M_VERSION = "2.6.3"
Z2M_ORIGIN = {"name": "Zigbee2MQTT", "sw": Z2M_VERSION, "url": "https://www.zigbee2mqtt.io"}
BRIDGE_IEEE = "0x00124b0024c1a2b3"
BRIDGE_IDENTIFIER = f"zigbee2mqtt_bridge_{BRIDGE_IEEE}"
# getEncodedBaseTopic(): the base topic's character codes, for the bridge's discovery topics.
ENCODED_BASE = "".join(str(ord(c)) for c in "zigbee2mqtt")


def _vt(prop: str) -> str:
    return '{{ value_json["%s"] }}' % prop


# The entities of each device before discover() finishes them: (type, object_id, payload). The
# payloads are what exposeToConfig() builds for these exposes, including NUMERIC/BINARY lookups.
LINKQUALITY = ("sensor", "linkquality", {
    "name": "Linkquality", "value_template": _vt("linkquality"), "enabled_by_default": False, "unit_of_measurement": "lqi",
    "entity_category": "diagnostic", "icon": "mdi:signal", "state_class": "measurement"})
BATTERY = ("sensor", "battery", {
    "name": "Battery", "value_template": _vt("battery"), "enabled_by_default": True, "unit_of_measurement": "%",
    "device_class": "battery", "state_class": "measurement", "entity_category": "diagnostic"})
IDENTIFY = ("button", "identify", {
    "name": "Identify", "state_topic": False, "command_topic": True, "command_topic_postfix": "identify",
    "payload_press": "identify", "device_class": "identify", "entity_category": "config"})


def _update(ieee: str) -> tuple[str, str, dict[str, Any]]:
    return ("update", "update", {
        "name": None, "entity_picture": "https://github.com/Koenkk/zigbee2mqtt/raw/master/images/logo.png",
        "state_topic": True, "device_class": "firmware", "entity_category": "config",
        "command_topic": "zigbee2mqtt/bridge/request/device/ota_update/update", "payload_install": f'{{"id": "{ieee}"}}',
        "value_template": "{\"latest_version\":\"{{ value_json['update']['latest_version'] }}\",\"installed_version\":"
        "\"{{ value_json['update']['installed_version'] }}\",\"update_percentage\":{{ value_json['update'].get('progress', 'null') }},"
        "\"in_progress\":{{ (value_json['update']['state'] == 'updating')|lower }}}"})


def z2m_discovery(name: str, ieee: str, model: str, model_id: str, vendor: str,
                  entities: list[tuple[str, str, dict[str, Any]]], *, availability: bool = True,
                  device_options: dict[str, Any] | None = None, prefix: str = "homeassistant") -> list[tuple[str, dict[str, Any]]]:
    """What Zigbee2MQTT's discover() publishes for one device: [(topic, payload)]."""
    base = f"zigbee2mqtt/{name}"
    device = {"identifiers": [f"zigbee2mqtt_{ieee}"], "name": name, "model": model, "model_id": model_id,
              "manufacturer": vendor, "sw_version": "2.0.1", "hw_version": 1, "via_device": BRIDGE_IDENTIFIER}
    device.update(device_options or {})  # the user's `homeassistant: {device: ...}` override
    out = []
    for kind, object_id, entry in entities:
        payload = dict(entry)
        state_topic = base + (f"/{payload.pop('state_topic_postfix')}" if "state_topic_postfix" in payload else "")
        if payload.get("state_topic", True) is not False:
            payload["state_topic"] = state_topic
        else:
            payload.pop("state_topic", None)
        if payload.get("position_topic"):
            payload["position_topic"] = state_topic
        obj = name.replace(" ", "_").lower()
        if object_id.startswith(kind) and "_" in object_id:
            obj += "_" + object_id.split("_", 1)[1]
        elif not object_id.startswith(kind):
            obj += f"_{object_id}"
        payload["object_id"] = obj
        payload["default_entity_id"] = f"{kind}.{obj}"
        payload["unique_id"] = f"{ieee}_{object_id}_zigbee2mqtt"
        payload["device"] = device
        payload["origin"] = Z2M_ORIGIN
        avty = [{"topic": "zigbee2mqtt/bridge/state", "value_template": "{{ value_json.state }}"}]
        if availability:
            payload["availability_mode"] = "all"
            avty.append({"topic": f"{base}/availability", "value_template": "{{ value_json.state }}"})
        payload["availability"] = avty
        postfix = payload.pop("command_topic_postfix", None)
        command = f"{base}/set" + (f"/{postfix}" if postfix else "")
        if payload.get("command_topic") is True:
            payload["command_topic"] = command
        if payload.get("set_position_topic"):
            payload["set_position_topic"] = command
        for key in ("mode_state_topic", "current_temperature_topic", "temperature_state_topic"):
            if payload.get(key):
                payload[key] = state_topic
        if payload.get("mode_command_topic"):
            payload["mode_command_topic"] = f"{base}/set/system_mode"
        if isinstance(payload.get("temperature_command_topic"), str):
            payload["temperature_command_topic"] = f"{base}/set/{payload['temperature_command_topic']}"
        out.append((f"{prefix}/{kind}/{ieee}/{object_id}/config", payload))
    return out


class Z2MDeviceSim(SimDevice):
    """A Zigbee2MQTT device: announces all its entities, takes JSON (or a bare state word) on
    ``<name>/set`` and answers with its whole state on ``zigbee2mqtt/<name>``; ``/get`` unanswered
    when ``sleepy`` (a battery device asleep)."""

    def __init__(self, name: str, configs: list[tuple[str, dict[str, Any]]], state: dict[str, Any],
                 apply: Callable[[dict[str, Any], str, dict[str, Any]], None], *, sleepy: bool = False) -> None:
        super().__init__(name)
        self.base = f"zigbee2mqtt/{name}"
        self.configs = configs
        self.state = state
        self.apply = apply
        self.sleepy = sleepy
        self.online = True

    def discovery_messages(self) -> list[tuple[str, dict[str, Any]]]:
        return self.configs

    def config(self, object_id: str) -> dict[str, Any]:
        return next(p for t, p in self.configs if t.endswith(f"/{object_id}/config"))

    def command_topics(self) -> list[str]:
        return sorted({p["command_topic"] for _, p in self.configs if isinstance(p.get("command_topic"), str)
                       and p["command_topic"].startswith(self.base)} | {f"{self.base}/set", f"{self.base}/get"})

    def state_messages(self) -> list[Out]:
        return [("zigbee2mqtt/bridge/state", json.dumps({"state": "online"}), True),
                (f"{self.base}/availability", json.dumps({"state": "online" if self.online else "offline"}), True),
                (self.base, json.dumps(self.state), False)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        if topic.endswith("/get"):
            return [] if self.sleepy else [(self.base, json.dumps(self.state), False)]
        try:
            cmd = json.loads(payload)
        except ValueError:
            cmd = payload
        if not isinstance(cmd, dict):  # Zigbee2MQTT reads a bare payload as {"state": payload}
            cmd = {"state": str(cmd)}
        sub = topic[len(self.base) + len("/set"):].lstrip("/")
        if sub:  # <name>/set/<attribute>: the payload is that attribute's value
            cmd = {sub: cmd.get("state", cmd)}
        self.apply(self.state, sub, cmd)
        return [(self.base, json.dumps(self.state), False)]


# --------------------------------------------------------------------------- Zigbee2MQTT devices


def hue_color_light(name: str = "Living room lamp", ieee: str = "0x001788010b4c5d6e", **kw: Any) -> Z2MDeviceSim:
    """Philips 9290022166, Hue white and color ambiance E26/E27: philips.m.light(color, colorTemp 153-500)."""
    effects = ["blink", "breathe", "okay", "channel_change", "candle", "fireplace", "colorloop", "sunrise",
               "finish_effect", "stop_effect", "stop_hue_effect"]
    entities = [
        ("light", "light", {"name": None, "brightness": True, "schema": "json", "command_topic": True, "brightness_scale": 254,
                            "supported_color_modes": ["xy", "color_temp"], "max_mireds": 500, "min_mireds": 153,
                            "effect": True, "effect_list": effects}),
        ("select", "effect", {"name": "Effect", "state_topic": False, "command_topic": True, "command_topic_postfix": "effect",
                              "options": effects, "enabled_by_default": False, "entity_category": "config", "icon": "mdi:palette"}),
        ("select", "power_on_behavior", {"name": "Power-on behavior", "value_template": _vt("power_on_behavior"),
                                         "state_topic": True, "command_topic": True, "command_topic_postfix": "power_on_behavior",
                                         "options": ["off", "on", "toggle", "previous"], "entity_category": "config",
                                         "icon": "mdi:power-settings"}),
        IDENTIFY, LINKQUALITY, _update(ieee),
    ]
    state = {"state": "OFF", "brightness": 254, "color_mode": "xy", "color": {"x": 0.4573, "y": 0.41, "hue": 35, "saturation": 66},
             "color_temp": 370, "linkquality": 148, "power_on_behavior": "previous",
             "update": {"state": "idle", "installed_version": 16786176, "latest_version": 16786176}}

    def apply(st: dict[str, Any], sub: str, cmd: dict[str, Any]) -> None:
        if cmd.get("state") in ("ON", "OFF", "TOGGLE"):
            st["state"] = {"TOGGLE": "OFF" if st["state"] == "ON" else "ON"}.get(cmd["state"], cmd["state"])
        if "brightness" in cmd:
            st["brightness"] = int(cmd["brightness"])
            st["state"] = "ON" if cmd["brightness"] else "OFF"
        color = cmd.get("color")
        if isinstance(color, dict) and "x" in color:
            st["color"] = {**st["color"], "x": color["x"], "y": color["y"]}
            st["color_mode"] = "xy"

    configs = z2m_discovery(name, ieee, "Hue white and color ambiance E26/E27", "9290022166", "Philips", entities, **kw)
    return Z2MDeviceSim(name, configs, state, apply)


def ikea_blind(name: str = "Living room blinds", ieee: str = "0x680ae2fffe4a7b21", **kw: Any) -> Z2MDeviceSim:
    """IKEA E1757, FYRTUR roller blind: m.windowCovering({controls: ["lift"]}), identify, ikeaBattery."""
    entities = [
        ("cover", "cover", {"name": None, "command_topic": True, "state_topic": True, "value_template": _vt("state"),
                            "state_open": "OPEN", "state_closed": "CLOSE", "state_stopped": "STOP",
                            "position_template": _vt("position"), "set_position_template": '{ "position": {{ position }} }',
                            "set_position_topic": True, "position_topic": True}),
        IDENTIFY, BATTERY, LINKQUALITY, _update(ieee),
    ]
    state = {"position": 100, "state": "OPEN", "battery": 87, "linkquality": 112,
             "update": {"state": "idle", "installed_version": 587814449, "latest_version": 587814449}}

    def apply(st: dict[str, Any], sub: str, cmd: dict[str, Any]) -> None:
        if "position" in cmd:
            st["position"] = int(cmd["position"])
            st["state"] = "CLOSE" if st["position"] == 0 else "OPEN"
        elif cmd.get("state") in ("OPEN", "CLOSE"):
            st["position"] = 100 if cmd["state"] == "OPEN" else 0
            st["state"] = cmd["state"]
        elif cmd.get("state") == "STOP":
            st["state"] = "STOP"

    configs = z2m_discovery(name, ieee, "FYRTUR roller blind, block-out", "E1757", "IKEA", entities, **kw)
    return Z2MDeviceSim(name, configs, state, apply)


def yale_lock(name: str = "Front door", ieee: str = "0x000d6f0011a2b3c4", **kw: Any) -> Z2MDeviceSim:
    """Yale YRD256HA20BP, Assure lock SL: lockExtend() (lock, lock_state, battery, sound volume,
    auto relock time, pin codes)."""
    entities = [
        ("lock", "lock", {"name": None, "command_topic": True, "value_template": _vt("state"),
                          "state_locked": "LOCK", "state_unlocked": "UNLOCK"}),
        ("sensor", "lock_state", {"name": "Lock state", "value_template": _vt("lock_state"), "enabled_by_default": True,
                                  "icon": "mdi:lock"}),
        ("select", "sound_volume", {"name": "Sound volume", "value_template": _vt("sound_volume"), "state_topic": True,
                                    "command_topic": True, "command_topic_postfix": "sound_volume",
                                    "options": ["silent_mode", "low_volume", "high_volume"], "entity_category": "config",
                                    "icon": "mdi:volume-high"}),
        ("number", "auto_relock_time", {"name": "Auto relock time", "value_template": _vt("auto_relock_time"),
                                        "command_topic": True, "command_topic_postfix": "auto_relock_time",
                                        "unit_of_measurement": "s", "entity_category": "config", "icon": "mdi:timer",
                                        "min": 0, "max": 3600}),
        BATTERY, LINKQUALITY,
    ]
    state = {"state": "LOCK", "lock_state": "locked", "battery": 64, "linkquality": 87, "sound_volume": "low_volume",
             "auto_relock_time": 0}

    def apply(st: dict[str, Any], sub: str, cmd: dict[str, Any]) -> None:
        if cmd.get("state") in ("LOCK", "UNLOCK"):
            st["state"] = cmd["state"]
            st["lock_state"] = "locked" if cmd["state"] == "LOCK" else "unlocked"

    configs = z2m_discovery(name, ieee, "Assure lock SL", "YRD256HA20BP", "Yale", entities, **kw)
    return Z2MDeviceSim(name, configs, state, apply)


def aqara_sensor(name: str = "Bedroom sensor", ieee: str = "0x00158d0004c5d6e7", **kw: Any) -> Z2MDeviceSim:
    """Aqara WSDCGQ11LM, temperature and humidity sensor: battery, temperature, humidity, pressure,
    battery_voltage. A sleepy end device: it never answers /get."""
    entities = [
        BATTERY,
        ("sensor", "temperature", {"name": "Temperature", "value_template": _vt("temperature"), "enabled_by_default": True,
                                   "unit_of_measurement": "°C", "device_class": "temperature", "state_class": "measurement"}),
        ("sensor", "humidity", {"name": "Humidity", "value_template": _vt("humidity"), "enabled_by_default": True,
                                "unit_of_measurement": "%", "device_class": "humidity", "state_class": "measurement"}),
        ("sensor", "pressure", {"name": "Pressure", "value_template": _vt("pressure"), "enabled_by_default": True,
                                "unit_of_measurement": "hPa", "device_class": "atmospheric_pressure", "state_class": "measurement"}),
        ("sensor", "voltage", {"name": "Voltage", "value_template": _vt("voltage"), "enabled_by_default": True,
                               "unit_of_measurement": "mV", "device_class": "voltage", "entity_category": "diagnostic",
                               "state_class": "measurement"}),
        LINKQUALITY,
    ]
    state = {"battery": 91, "temperature": 19.8, "humidity": 52.3, "pressure": 1008.4, "voltage": 2985, "linkquality": 76}
    configs = z2m_discovery(name, ieee, "Temperature and humidity sensor", "WSDCGQ11LM", "Aqara", entities, **kw)
    return Z2MDeviceSim(name, configs, state, lambda st, sub, cmd: None, sleepy=True)


def ikea_plug(name: str = "Coffee machine", ieee: str = "0x8c65a3fffe1b2c3d", **kw: Any) -> Z2MDeviceSim:
    """IKEA E2206, INSPELNING smart plug: onOff, child lock, LED enable, identify, electricityMeter."""
    entities = [
        ("switch", "switch", {"name": None, "payload_off": "OFF", "payload_on": "ON", "value_template": _vt("state"),
                              "command_topic": True}),
        ("switch", "child_lock", {"name": "Child lock", "value_template": _vt("child_lock"), "payload_on": "LOCK",
                                  "payload_off": "UNLOCK", "command_topic": True, "command_topic_postfix": "child_lock",
                                  "entity_category": "config", "icon": "mdi:account-lock"}),
        ("switch", "switch_led_enable", {"name": "Led enable", "value_template": "{% if value_json[\"led_enable\"] %}true{% else %}false{% endif %}",
                                         "payload_on": "true", "payload_off": "false", "command_topic": True,
                                         "command_topic_postfix": "led_enable", "entity_category": "config", "icon": "mdi:led-on"}),
        IDENTIFY,
        ("sensor", "power", {"name": "Power", "value_template": _vt("power"), "enabled_by_default": True, "unit_of_measurement": "W",
                             "device_class": "power", "state_class": "measurement"}),
        ("sensor", "current", {"name": "Current", "value_template": _vt("current"), "enabled_by_default": True,
                               "unit_of_measurement": "A", "device_class": "current", "state_class": "measurement"}),
        ("sensor", "voltage", {"name": "Voltage", "value_template": _vt("voltage"), "enabled_by_default": True,
                               "unit_of_measurement": "V", "device_class": "voltage", "state_class": "measurement"}),
        ("sensor", "energy", {"name": "Energy", "value_template": _vt("energy"), "enabled_by_default": True,
                              "unit_of_measurement": "kWh", "device_class": "energy", "state_class": "total_increasing"}),
        LINKQUALITY, _update(ieee),
    ]
    state = {"state": "OFF", "power": 0.0, "current": 0.0, "voltage": 231.0, "energy": 3.21, "child_lock": "UNLOCK",
             "led_enable": True, "linkquality": 160,
             "update": {"state": "idle", "installed_version": 33816612, "latest_version": 33816612}}

    def apply(st: dict[str, Any], sub: str, cmd: dict[str, Any]) -> None:
        if cmd.get("state") in ("ON", "OFF"):
            st["state"] = cmd["state"]
            st["power"], st["current"] = (1180.5, 5.11) if cmd["state"] == "ON" else (0.0, 0.0)

    configs = z2m_discovery(name, ieee, "INSPELNING smart plug (EU)", "E2206", "IKEA", entities, **kw)
    return Z2MDeviceSim(name, configs, state, apply)


def z2m_bridge(prefix: str = "homeassistant") -> list[tuple[str, dict[str, Any]]]:
    """The bridge's own entities (getBridgeEntity()): only bridge availability, mode 'all'."""
    bt = "zigbee2mqtt/bridge"
    entries: list[tuple[str, str, dict[str, Any]]] = [
        ("binary_sensor", "connection_state", {"name": "Connection state", "device_class": "connectivity",
                                               "entity_category": "diagnostic", "state_topic": f"{bt}/state",
                                               "value_template": "{{ value_json.state }}", "payload_on": "online",
                                               "payload_off": "offline"}),
        ("binary_sensor", "restart_required", {"name": "Restart required", "device_class": "problem",
                                               "entity_category": "diagnostic", "enabled_by_default": False,
                                               "state_topic": f"{bt}/info", "value_template": "{{ value_json.restart_required }}",
                                               "payload_on": True, "payload_off": False}),
        ("button", "restart", {"name": "Restart", "device_class": "restart", "command_topic": f"{bt}/request/restart",
                               "payload_press": ""}),
        ("select", "log_level", {"name": "Log level", "entity_category": "config", "state_topic": f"{bt}/info",
                                 "value_template": "{{ value_json.log_level | lower }}", "command_topic": f"{bt}/request/options",
                                 "command_template": '{"options": {"advanced": {"log_level": "{{ value }}" } } }',
                                 "options": ["error", "warning", "info", "debug"]}),
        ("sensor", "version", {"name": "Version", "icon": "mdi:zigbee", "entity_category": "diagnostic",
                               "state_topic": f"{bt}/info", "value_template": "{{ value_json.version }}"}),
        ("sensor", "coordinator_version", {"name": "Coordinator version", "icon": "mdi:chip", "entity_category": "diagnostic",
                                           "enabled_by_default": False, "state_topic": f"{bt}/info",
                                           "value_template": "{{ value_json.coordinator.meta.revision }}"}),
        ("sensor", "network_map", {"name": "Network map", "entity_category": "diagnostic", "enabled_by_default": False,
                                   "state_topic": f"{bt}/response/networkmap",
                                   "value_template": "{{ now().strftime('%Y-%m-%d %H:%M:%S') }}",
                                   "json_attributes_topic": f"{bt}/response/networkmap",
                                   "json_attributes_template": "{{ value_json.data.value | tojson }}"}),
        ("switch", "permit_join", {"name": "Permit join", "icon": "mdi:human-greeting-proximity", "state_topic": f"{bt}/info",
                                   "value_template": "{{ value_json.permit_join | lower }}", "command_topic": f"{bt}/request/permit_join",
                                   "state_on": "true", "state_off": "false", "payload_on": '{"time": 254}', "payload_off": '{"time": 0}'}),
    ]
    device = {"identifiers": [BRIDGE_IDENTIFIER], "name": "Zigbee2MQTT Bridge", "sw_version": Z2M_VERSION, "model": "Bridge",
              "manufacturer": "Zigbee2MQTT", "hw_version": "zStack3x0 20240710"}
    out = []
    for kind, object_id, entry in entries:
        payload = dict(entry)
        payload.update(object_id=f"zigbee2mqtt_bridge_{object_id}", default_entity_id=f"{kind}.zigbee2mqtt_bridge_{object_id}",
                       unique_id=f"bridge_{BRIDGE_IEEE}_{object_id}_zigbee2mqtt", device=device, origin=Z2M_ORIGIN)
        if object_id != "connection_state":  # `availability: false` on the connection state itself
            payload["availability"] = [{"topic": f"{bt}/state", "value_template": "{{ value_json.state }}"}]
            payload["availability_mode"] = "all"
        out.append((f"{prefix}/{kind}/{ENCODED_BASE}_{BRIDGE_IEEE}/{object_id}/config", payload))
    return out


class BridgeSim(SimDevice):
    """The Zigbee2MQTT bridge: its entities and its info/state topics; permit join answers on info."""

    def __init__(self, prefix: str = "homeassistant") -> None:
        super().__init__("Zigbee2MQTT Bridge")
        self.configs = z2m_bridge(prefix)
        self.info = {"version": Z2M_VERSION, "permit_join": False, "log_level": "info", "restart_required": False,
                     "coordinator": {"meta": {"revision": 20240710}}}

    def discovery_messages(self) -> list[tuple[str, dict[str, Any]]]:
        return self.configs

    def command_topics(self) -> list[str]:
        return ["zigbee2mqtt/bridge/request/permit_join", "zigbee2mqtt/bridge/request/restart"]

    def state_messages(self) -> list[Out]:
        return [("zigbee2mqtt/bridge/state", json.dumps({"state": "online"}), True),
                ("zigbee2mqtt/bridge/info", json.dumps(self.info), True)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        if topic.endswith("/permit_join"):
            self.info["permit_join"] = json.loads(payload).get("time", 0) > 0
            return [("zigbee2mqtt/bridge/info", json.dumps(self.info), True)]
        return []


# --------------------------------------------------------------------------- Tasmota (legacy discovery)


class TasmotaRelaySim(SimDevice):
    """A Sonoff Basic running Tasmota with SetOption19 1: one relay, the status sensor, the cleared light topic."""

    def __init__(self, device_name: str = "Desk plug", chip: str = "8A1B2C", prefix: str = "homeassistant") -> None:
        super().__init__(device_name)
        self.topic = f"tasmota_{chip}"
        self.power = "OFF"
        lwt = f"tele/{self.topic}/LWT"
        self.configs: list[tuple[str, dict[str, Any]]] = [
            # HassAnnounceRelayLight(): "Clear 'other' topic first", then the relay (FriendlyName1).
            (f"{prefix}/light/{chip}_LI_1/config", {}),
            (f"{prefix}/switch/{chip}_RL_1/config", {
                "name": device_name, "stat_t": f"tele/{self.topic}/STATE", "avty_t": lwt, "pl_avail": "Online",
                "pl_not_avail": "Offline", "cmd_t": f"cmnd/{self.topic}/POWER", "pl_off": "OFF", "pl_on": "ON",
                "val_tpl": "{{value_json.POWER}}", "uniq_id": f"{chip}_RL_1", "dev": {"ids": [chip]}}),
            # HAssAnnounceDeviceInfoAndStatusSensor(): the device's name, model and version.
            (f"{prefix}/sensor/{chip}_status/config", {
                "name": f"{device_name} status", "stat_t": f"tele/{self.topic}/HASS_STATE", "avty_t": lwt,
                "pl_avail": "Online", "pl_not_avail": "Offline", "json_attr_t": f"tele/{self.topic}/HASS_STATE",
                "unit_of_meas": "%", "val_tpl": "{{value_json['RSSI']}}", "ic": "mdi:information-outline",
                "uniq_id": f"{chip}_status",
                "dev": {"ids": [chip], "name": device_name, "mdl": "Sonoff Basic", "sw": "14.2.0(tasmota)", "mf": "Tasmota"}}),
        ]
        self.lwt = "Online"

    def discovery_messages(self) -> list[tuple[str, dict[str, Any]]]:
        return self.configs

    def command_topics(self) -> list[str]:
        return [f"cmnd/{self.topic}/POWER"]

    def _state(self) -> str:
        return json.dumps({"Time": "2026-11-27T01:50:00", "Uptime": "0T02:10:11", "Heap": 26, "POWER": self.power,
                           "Wifi": {"AP": 1, "SSId": "home", "RSSI": 78, "Signal": -61}})

    def state_messages(self) -> list[Out]:
        return [(f"tele/{self.topic}/LWT", self.lwt, True), (f"tele/{self.topic}/STATE", self._state(), False),
                (f"tele/{self.topic}/HASS_STATE", json.dumps({"Version": "14.2.0(tasmota)", "RSSI": "78"}), False)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        word = payload.strip().upper()
        if word in ("ON", "1"):
            self.power = "ON"
        elif word in ("OFF", "0"):
            self.power = "OFF"
        elif word in ("TOGGLE", "2"):
            self.power = "OFF" if self.power == "ON" else "ON"
        return [(f"stat/{self.topic}/RESULT", json.dumps({"POWER": self.power}), False),
                (f"stat/{self.topic}/POWER", self.power, False), (f"tele/{self.topic}/STATE", self._state(), False)]


# --------------------------------------------------------------------------- device-based discovery


class DeviceDiscoveryTrvSim(SimDevice):
    """A DIY radiator valve announcing itself with Home Assistant's device-based discovery."""

    def __init__(self, name: str = "Hallway radiator", node: str = "trv01", area: str = "Hall", prefix: str = "homeassistant") -> None:
        super().__init__(name)
        self.base = f"diy/{node}"
        self.state = {"mode": "heat", "target": 20.0, "current": 19.2, "battery": 78, "valve": 35, "window": "closed"}
        self.discovery_topic = f"{prefix}/device/{node}/config"
        self.discovery = {
            "~": self.base,
            "dev": {"ids": [node], "name": name, "mf": "DIY", "mdl": "ESP32 TRV", "sw": "1.4", "sa": area},
            "o": {"name": "diy-trv", "sw": "1.4", "url": "https://example.org/diy-trv"},
            "avty_t": "~/availability",
            "stat_t": "~/state",
            "qos": 1,
            "cmps": {
                "climate": {"p": "climate", "name": None, "uniq_id": f"{node}_climate", "mode_cmd_t": "~/mode/set",
                            "mode_stat_t": "~/state", "mode_stat_tpl": "{{ value_json.mode }}", "modes": ["off", "heat", "auto"],
                            "temp_cmd_t": "~/target/set", "temp_stat_t": "~/state", "temp_stat_tpl": "{{ value_json.target }}",
                            "curr_temp_t": "~/state", "curr_temp_tpl": "{{ value_json.current }}", "min_temp": 5,
                            "max_temp": 30, "temp_step": 0.5, "temp_unit": "C"},
                "battery": {"p": "sensor", "dev_cla": "battery", "unit_of_meas": "%", "val_tpl": "{{ value_json.battery }}",
                            "ent_cat": "diagnostic", "uniq_id": f"{node}_battery"},
                "valve": {"p": "sensor", "name": "Valve position", "unit_of_meas": "%", "val_tpl": "{{ value_json.valve }}",
                          "uniq_id": f"{node}_valve"},
                "window": {"p": "binary_sensor", "dev_cla": "window", "val_tpl": "{{ value_json.window }}", "pl_on": "open",
                           "pl_off": "closed", "uniq_id": f"{node}_window"},
            },
        }

    def command_topics(self) -> list[str]:
        return [f"{self.base}/mode/set", f"{self.base}/target/set"]

    def state_messages(self) -> list[Out]:
        return [(f"{self.base}/availability", "online", True), (f"{self.base}/state", json.dumps(self.state), True)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        if topic.endswith("/target/set"):
            self.state["target"] = float(payload)
        elif payload in ("off", "heat", "auto"):
            self.state["mode"] = payload
        return [(f"{self.base}/state", json.dumps(self.state), True)]


# --------------------------------------------------------------------------- ESPHome


class EsphomeLightSim(SimDevice):
    """An ESPHome node's JSON light with MQTT discovery (identifiers as a string, entity named)."""

    def __init__(self, node: str = "studio", friendly: str = "Studio", light: str = "Ceiling light", prefix: str = "homeassistant") -> None:
        super().__init__(f"{friendly} {light}")
        obj = light.lower().replace(" ", "_")
        self.state_topic = f"{node}/light/{obj}/state"
        self.command = f"{node}/light/{obj}/command"
        self.on = False
        self.brightness = 255
        self.discovery_topic = f"{prefix}/light/{node}/{obj}/config"
        self.discovery = {
            "name": light, "stat_t": self.state_topic, "cmd_t": self.command, "avty_t": f"{node}/status", "schema": "json",
            "brightness": True, "sup_clrm": ["brightness"], "uniq_id": f"ESPlight{obj}",
            "dev": {"ids": "a4cf12b3c4d5", "name": friendly, "sw": "esphome v2025.10.0 Nov 20 2026", "mdl": "esp32dev",
                    "mf": "espressif", "cns": [["mac", "a4cf12b3c4d5"]]},
        }

    def discovery_messages(self) -> list[tuple[str, dict[str, Any]]]:
        node = self.state_topic.split("/")[0]
        sensor = {  # an ESPHome sensor: named, with a device class, its state a plain number
            "dev_cla": "temperature", "unit_of_meas": "°C", "stat_cla": "measurement", "name": "Temperature",
            "stat_t": f"{node}/sensor/temperature/state", "avty_t": f"{node}/status", "uniq_id": "ESPsensortemperature",
            "dev": self.discovery["dev"] if self.discovery else {},
        }
        topic = self.discovery_topic.split("/", 1)[0] + f"/sensor/{node}/temperature/config"
        return [*super().discovery_messages(), (topic, sensor)]

    def command_topics(self) -> list[str]:
        return [self.command]

    def _state(self) -> str:
        return json.dumps({"state": "ON" if self.on else "OFF", "brightness": self.brightness, "color_mode": "brightness"})

    def state_messages(self) -> list[Out]:
        node = self.state_topic.split("/")[0]
        return [(f"{node}/status", "online", True), (self.state_topic, self._state(), True),
                (f"{node}/sensor/temperature/state", "22.4", True)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        cmd = json.loads(payload)
        if cmd.get("state") in ("ON", "OFF"):
            self.on = cmd["state"] == "ON"
        if "brightness" in cmd:
            self.brightness = int(cmd["brightness"])
        return [(self.state_topic, self._state(), True)]


def real_home() -> dict[str, SimDevice]:
    """One of each: the devices the issue names, as their real software announces them."""
    return {
        "hue": hue_color_light(),
        "blind": ikea_blind(device_options={"suggested_area": "Living room"}),
        "lock": yale_lock(device_options={"suggested_area": "Hall"}),
        "aqara": aqara_sensor(device_options={"suggested_area": "Bedroom"}),
        "plug": ikea_plug(device_options={"suggested_area": "Kitchen"}),
        "bridge": BridgeSim(),
        "tasmota": TasmotaRelaySim(),
        "trv": DeviceDiscoveryTrvSim(),
        "esphome": EsphomeLightSim(),
    }


BIG_HOME_ROOMS = ("Kitchen", "Living room", "Bedroom", "Hall", "Office", "Bathroom", "Kids room", "Dining room")


def big_home(rooms: tuple[str, ...] = BIG_HOME_ROOMS) -> list[SimDevice]:
    """Ten devices in each room (80 for the default eight rooms), the mix of a real Zigbee2MQTT
    home plus Tasmota relays and device-discovery valves: 300 entities the speaker keeps (of about
    500 announced)."""
    out: list[SimDevice] = []
    for r, room in enumerate(rooms):
        i = r * 10

        def ieee(k: int) -> str:
            return f"0x00158d00{i + k:08x}"

        area = {"device_options": {"suggested_area": room}}
        out += [
            hue_color_light(f"{room} ceiling light", ieee(0), **area),
            ikea_plug(f"{room} lamp", ieee(1), **area),  # a lamp on a smart plug
            ikea_blind(f"{room} blinds", ieee(2), **area),
            yale_lock(f"{room} door", ieee(3), **area),
            aqara_sensor(f"{room} climate sensor", ieee(4), **area),
            aqara_sensor(f"{room} thermometer", ieee(5), **area),
            ikea_plug(f"{room} plug", ieee(6), **area),
            ikea_plug(f"{room} heater plug", ieee(7), **area),
            # a radiator valve (device-based discovery) in every other room, an oil radiator on a plug elsewhere
            DeviceDiscoveryTrvSim(f"{room} radiator", f"trv{i + 8}", room) if r % 2 == 0 else ikea_plug(f"{room} radiator", ieee(8), **area),
            TasmotaRelaySim(f"{room} fan", f"{i + 9:06X}"),
        ]
    return out


__all__ = [
    "BIG_HOME_ROOMS", "BridgeSim", "DeviceDiscoveryTrvSim", "big_home", "EsphomeLightSim", "TasmotaRelaySim", "Z2MDeviceSim", "aqara_sensor", "hue_color_light",
    "ikea_blind", "ikea_plug", "real_home", "yale_lock", "z2m_bridge", "z2m_discovery",
]
