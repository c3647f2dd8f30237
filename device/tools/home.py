"""Home devices as tools for the model: list_devices, get_device_state, control_device.

Commands go out with QoS 1 and the answer is what the device reported afterwards, within
``mqtt.command_timeout_s``: ``{"ok": true, "state": {...}}``, or ``{"ok": false, "error": ...,
"state": <what was seen>}`` on a timeout or a different state. Only the command topics of known,
exposed devices are ever published to; every topic is checked against that set right before the
publish, whatever the model sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from device.config import Settings
from device.mqtt import MqttConnection, MqttUnavailable, valid_publish_topic
from device.tools.devices import (
    COLOR_NAMES,
    READ_ONLY_TYPES,
    Device,
    DeviceRegistry,
    DeviceSpec,
    colors_close,
    hex_to_rgb,
    parse_color,
    rgb_to_xy,
    spec_from_config,
)
from device.tools.discovery import DiscoveryError, parse_message
from device.tools.registry import Tool, ToolRegistry

_LOG = logging.getLogger(__name__)

ACTIONS = ("turn_on", "turn_off", "toggle", "open", "close", "stop", "lock", "unlock", "activate", "set")
ARMED_STATES = frozenset({"armed_away", "armed_home", "armed_night", "armed_vacation", "armed_custom_bypass", "arming", "triggered"})
# After a report that does not (yet) match, how long to wait for a further one (a light reports
# state and brightness on two topics; a lock reports "locking" before "locked").
MISMATCH_GRACE_S = 1.0
# States on the way to the requested one: keep waiting for the device, up to the full timeout.
IN_PROGRESS = frozenset({"locking", "unlocking", "opening", "closing", "arming", "pending"})


class RefusedTopic(Exception):
    """A publish to a topic that is not a known device's command topic was attempted and refused."""


@dataclass
class Expect:
    """The state a command should lead to; None fields are not checked."""

    state: frozenset[str] | None = None
    brightness: int | None = None
    color: str | None = None
    position: int | None = None
    moving: str | None = None  # cover: "opening"/"closing" also counts for a position request
    target_temperature: float | None = None
    mode: str | None = None
    fail_states: frozenset[str] = field(default_factory=frozenset)

    def empty(self) -> bool:
        return all(v is None for v in (self.state, self.brightness, self.color, self.position, self.target_temperature, self.mode))

    def failed(self, st: dict[str, Any]) -> bool:
        return st.get("state") in self.fail_states

    def check(self, st: dict[str, Any]) -> bool:
        if self.position is not None:
            pos = st.get("position")
            at_target = isinstance(pos, (int, float)) and abs(pos - self.position) <= 2
            if not at_target and not (self.moving and st.get("state") == self.moving):
                return False
        if self.state is not None and st.get("state") not in self.state:
            return False
        if self.brightness is not None:
            b = st.get("brightness")
            if not isinstance(b, (int, float)) or abs(b - self.brightness) > 2:
                return False
        if self.color is not None:
            c = st.get("color")
            if not isinstance(c, str) or not colors_close(c, self.color):
                return False
        if self.target_temperature is not None:
            t = st.get("target_temperature")
            if not isinstance(t, (int, float)) or abs(t - self.target_temperature) > 0.26:
                return False
        if self.mode is not None and st.get("mode") != self.mode:
            return False
        return True

    def describe(self) -> str:
        parts: list[str] = []
        if self.state is not None:
            parts.append("state " + " or ".join(sorted(self.state)))
        if self.brightness is not None:
            parts.append(f"brightness {self.brightness}")
        if self.color is not None:
            parts.append(f"color {self.color}")
        if self.position is not None:
            parts.append(f"position {self.position}")
        if self.target_temperature is not None:
            parts.append(f"target temperature {self.target_temperature:g}")
        if self.mode is not None:
            parts.append(f"mode {self.mode}")
        return ", ".join(parts)


class CommandError(Exception):
    """A control request that cannot be turned into messages; the message is for the model."""


@dataclass
class Plan:
    messages: list[tuple[str, str]]
    expect: Expect


def _fail(error: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": error, **extra}


def _number(args: dict[str, Any], key: str, lo: float | None = None, hi: float | None = None) -> float | None:
    if key not in args or args[key] is None:
        return None
    v = args[key]
    if isinstance(v, bool):
        raise CommandError(f"'{key}' must be a number, got {v!r}")
    if isinstance(v, str):
        try:
            v = float(v.strip().rstrip("%°CcFf ").strip())
        except ValueError:
            raise CommandError(f"'{key}' must be a number, got {args[key]!r}") from None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise CommandError(f"'{key}' must be a number, got {args[key]!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise CommandError(f"'{key}' must be between {lo:g} and {hi:g}, got {v:g}")
    return float(v)


def _is_speaker(cfg: dict[str, Any]) -> bool:
    """Entities announced by a speaker (this one or another) are not home devices for the model."""
    try:
        from device.presence import is_speaker_discovery
    except ImportError:  # presence is optional for this module
        origin = cfg.get("origin")
        return isinstance(origin, dict) and origin.get("name") == "realtime-speaker"
    return bool(is_speaker_discovery(cfg))


def check_devices(settings: Settings) -> str:
    """For ``speaker check``: every [[devices]] entry must be usable; raises ValueError naming the bad ones."""
    problems = []
    for dev_cfg in settings.devices:
        try:
            spec_from_config(dev_cfg)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError(f"{settings.path}: " + "; ".join(problems))
    n = len(settings.devices)
    return f"{n} configured device{'s' if n != 1 else ''} OK" + (", plus Home Assistant discovery" if settings.mqtt.discovery else "")


class HomeDevices:
    """The home's devices (config + Home Assistant discovery) and the three tools that use them."""

    def __init__(self, settings: Settings, mqtt: MqttConnection, tools: ToolRegistry) -> None:
        self.settings = settings
        self.cfg = settings.mqtt
        self.mqtt = mqtt
        self.tools = tools
        self.registry = DeviceRegistry(self.cfg.allow, self.cfg.deny)
        # Answer within the tool's own time limit, so the model hears what the device did.
        self.command_timeout_s = min(self.cfg.command_timeout_s, max(0.1, settings.realtime.tool_timeout_s - 0.5))
        self.problems: list[str] = []  # config devices that could not be used, for `speaker check`
        self._dev_unsubs: dict[str, list[Callable[[], None]]] = {}
        self._discovery_keys: dict[str, set[str]] = {}
        self._unsubs: list[Callable[[], None]] = []
        self._tool_names: tuple[str, ...] | None = None
        self._update_handle: asyncio.TimerHandle | None = None
        self._started = False
        self.refused: list[str] = []  # topics refused by the command-topic guard (should stay empty)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load config devices, subscribe to their state and to discovery, register the tools."""
        if self._started:
            return
        self._started = True
        for dev_cfg in self.settings.devices:
            try:
                spec = spec_from_config(dev_cfg)
            except ValueError as exc:
                msg = f"{self.settings.path}: {exc}"
                self.problems.append(msg)
                _LOG.error("home devices: skipping a configured device: %s", msg)
                continue
            self._put(spec)
        if self.cfg.discovery:
            prefix = self.cfg.discovery_prefix
            for flt in (f"{prefix}/+/+/config", f"{prefix}/+/+/+/config"):
                self._unsubs.append(self.mqtt.subscribe(flt, self._on_discovery, qos=1))
        self.registry.on_change(self._schedule_tool_update)
        self._update_tools()

    async def stop(self) -> None:
        """Unsubscribe everything and remove the tools."""
        if self._update_handle is not None:
            self._update_handle.cancel()
        for unsub in self._unsubs:
            unsub()
        self._unsubs.clear()
        for key in list(self._dev_unsubs):
            self._unsubscribe_device(key)
        for name in ("list_devices", "get_device_state", "control_device"):
            self.tools.remove(name)
        self._started = False

    # ------------------------------------------------------------------ devices
    def _put(self, spec: DeviceSpec) -> Device:
        old = self.registry.get(spec.key)
        if old is not None and old.spec.state_topics() != spec.state_topics():
            self._unsubscribe_device(spec.key)
        dev = self.registry.put(spec)
        if spec.key not in self._dev_unsubs:
            self._subscribe_device(dev)
        return dev

    def _subscribe_device(self, dev: Device) -> None:
        unsubs: list[Callable[[], None]] = []
        key = dev.spec.key
        for topic, roles in dev.spec.state_topics().items():

            def on_msg(t: str, payload: bytes, retained: bool, roles: list[str] = roles) -> None:
                d = self.registry.get(key)
                if d is not None:
                    d.apply(t, payload, retained, roles)

            try:
                unsubs.append(self.mqtt.subscribe(topic, on_msg, qos=1))
            except ValueError as exc:
                _LOG.warning("device %r: cannot subscribe to %r: %s", dev.name, topic, exc)
        self._dev_unsubs[key] = unsubs

    def _unsubscribe_device(self, key: str) -> None:
        for unsub in self._dev_unsubs.pop(key, []):
            unsub()

    def _remove(self, key: str) -> None:
        self._unsubscribe_device(key)
        dev = self.registry.remove(key)
        if dev is not None:
            _LOG.info("home devices: %r was removed by its discovery config", dev.name)

    def _on_discovery(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            entries = parse_message(topic, payload, self.cfg.discovery_prefix, _is_speaker)
        except DiscoveryError as exc:
            _LOG.warning("discovery: skipping %s: %s", topic, exc)
            return
        keys_now: set[str] = set()
        for key, spec in entries:
            if spec is None:
                if key.endswith("#"):  # a whole device withdrawn (device-based discovery)
                    for k in list(self._discovery_keys.get(topic, ())):
                        self._remove(k)
                else:
                    self._remove(key)
                continue
            keys_now.add(key)
            is_new = self.registry.get(key) is None
            dev = self._put(spec)
            if is_new:
                _LOG.info("discovery: %s %r%s", spec.type, dev.name, f" in {spec.area}" if spec.area else "")
        for stale in self._discovery_keys.get(topic, set()) - keys_now:
            self._remove(stale)
        if keys_now:
            self._discovery_keys[topic] = keys_now
        else:
            self._discovery_keys.pop(topic, None)

    # ------------------------------------------------------------------ tools
    def _schedule_tool_update(self) -> None:
        # Discovery arrives in bursts (dozens of retained configs): update the schemas once after it.
        if self._update_handle is not None:
            self._update_handle.cancel()
        self._update_handle = asyncio.get_running_loop().call_later(0.2, self._update_tools)

    def _update_tools(self) -> None:
        self._update_handle = None
        names = tuple(self.registry.names())
        if names == self._tool_names and "control_device" in self.tools:
            return
        self._tool_names = names
        for tool in self.make_tools(list(names)):
            self.tools.add(tool)

    def make_tools(self, names: list[str]) -> list[Tool]:
        """The three tools, their schemas naming the current devices."""
        device_prop: dict[str, Any] = {"type": "string", "description": "the device's name (case does not matter)"}
        if names:
            device_prop["enum"] = names
        else:
            device_prop["description"] += "; no devices are known yet"
        control_params = {
            "type": "object",
            "properties": {
                "device": device_prop,
                "action": {
                    "type": "string",
                    "enum": list(ACTIONS),
                    "description": "lights/switches: turn_on, turn_off, toggle, set (brightness/color); covers and "
                    "garage doors: open, close, stop, set (position); locks: lock, unlock; climate: set "
                    "(temperature), turn_on, turn_off; scenes and buttons: activate; alarms: lock (arm), unlock (disarm)",
                },
                "brightness": {"type": "integer", "minimum": 0, "maximum": 100, "description": "light brightness in percent"},
                "color": {"type": "string", "description": "colour name (e.g. red, warm white) or #rrggbb"},
                "temperature": {"type": "number", "description": "climate set-point in °C"},
                "position": {"type": "integer", "minimum": 0, "maximum": 100, "description": "cover position in percent, 100 = open"},
                "confirmed": {
                    "type": "boolean",
                    "description": "required true for locks, garage doors and alarms: ask the person first and only "
                    "set it after they said yes",
                },
            },
            "required": ["device", "action"],
            "additionalProperties": False,
        }
        return [
            Tool(
                "list_devices",
                "List the home's devices with their name, type, area and current state.",
                {"type": "object", "properties": {}, "additionalProperties": False},
                self.list_devices,
            ),
            Tool(
                "get_device_state",
                "Get one home device's current state as it last reported it.",
                {"type": "object", "properties": {"device": device_prop}, "required": ["device"], "additionalProperties": False},
                self.get_device_state,
            ),
            Tool(
                "control_device",
                "Control a home device. Answers with the state the device reported afterwards; "
                "if ok is false, tell the person what really happened.",
                control_params,
                self.control_device,
            ),
        ]

    def summary(self) -> str:
        """Compact device list for the {{devices}} placeholder: 'kitchen light (light, Kitchen), ...'."""
        parts = []
        for d in self.registry.visible():
            label = d.spec.type.replace("_", " ")
            parts.append(f"{d.name} ({label}, {d.spec.area})" if d.spec.area else f"{d.name} ({label})")
        return ", ".join(parts) if parts else "none"

    def vocabulary(self) -> list[str]:
        """The device and area names people say, for the transcription prompt."""
        words: list[str] = []
        for d in self.registry.visible():
            words.append(d.name)
            if d.spec.area:
                words.append(d.spec.area)
        return words

    def _describe(self, dev: Device) -> dict[str, Any]:
        out: dict[str, Any] = {"name": dev.name, "type": dev.spec.type}
        if dev.spec.area:
            out["area"] = dev.spec.area
        out["state"] = dev.snapshot()
        acts = dev.spec.actions()
        if acts:
            out["actions"] = list(acts)
        if dev.spec.needs_confirmation:
            out["needs_confirmation"] = True
        return out

    def _stale_note(self) -> dict[str, Any]:
        if self.mqtt.connected:
            return {}
        return {"note": f"the home's MQTT broker ({self.mqtt.broker}) is not connected: states may be out of date"}

    async def list_devices(self, args: dict[str, Any]) -> dict[str, Any]:
        """Tool: every exposed device with type, area and state."""
        return {"ok": True, "devices": [self._describe(d) for d in self.registry.visible()], **self._stale_note()}

    def _lookup(self, args: dict[str, Any]) -> Device | dict[str, Any]:
        name = args.get("device")
        if not isinstance(name, str) or not name.strip():
            return _fail("'device' must be the name of a device (a string); call list_devices to see them")
        found = self.registry.find(name)
        if found.device is not None:
            return found.device
        shown = name if len(name) <= 60 else name[:57] + "..."
        if found.suggestions:
            return _fail(f"unknown device {shown!r}; did you mean {', '.join(repr(s) for s in found.suggestions)}?",
                         suggestions=found.suggestions)
        known = self.registry.names()
        listing = ", ".join(repr(n) for n in known[:12]) + (" ..." if len(known) > 12 else "")
        return _fail(f"unknown device {shown!r}; known devices: {listing or 'none'}")

    async def get_device_state(self, args: dict[str, Any]) -> dict[str, Any]:
        """Tool: one device's last reported state."""
        dev = self._lookup(args)
        if isinstance(dev, dict):
            return dev
        return {"ok": True, **self._describe(dev), **self._stale_note()}

    async def control_device(self, args: dict[str, Any]) -> dict[str, Any]:
        """Tool: command a device and report the state it reports back."""
        dev = self._lookup(args)
        if isinstance(dev, dict):
            return dev
        spec = dev.spec
        action = args.get("action")
        if not isinstance(action, str) or action not in ACTIONS:
            return _fail(f"'action' must be one of {', '.join(ACTIONS)}; got {action!r}")
        if spec.type in READ_ONLY_TYPES:
            return _fail(f"{dev.name} is a {spec.type.replace('_', ' ')}: it can only be read (use get_device_state)")
        supported = spec.actions()
        if action == "turn_on" and spec.type in ("scene", "button"):
            action = "activate"
        if action not in supported:
            return _fail(f"{dev.name} ({spec.type.replace('_', ' ')}) cannot {action}; it supports: {', '.join(supported)}")
        if spec.needs_confirmation and args.get("confirmed") is not True:
            what = "a " + spec.type.replace("_", " ") if not spec.confirm else "marked as needing confirmation"
            return _fail(
                f"{dev.name} is {what}: ask the person to confirm '{action}' first, then call again with confirmed=true",
                needs_confirmation=True,
            )
        if dev.available is False:
            return _fail(f"{dev.name} is offline (its availability topic says so); the command was not sent",
                         state=dev.snapshot())
        if not self.mqtt.connected:
            return _fail(f"cannot reach the home's MQTT broker ({self.mqtt.broker}); {dev.name} was not changed")
        try:
            plan = self._plan(dev, action, args)
        except CommandError as exc:
            return _fail(str(exc))
        return await self._execute(dev, plan)

    # ------------------------------------------------------------------ planning
    def _plan(self, dev: Device, action: str, args: dict[str, Any]) -> Plan:
        s = dev.spec
        brightness = _number(args, "brightness", 0, 100)
        position = _number(args, "position", 0, 100)
        temperature = _number(args, "temperature")
        color_arg = args.get("color")
        color: str | None = None
        if color_arg is not None:
            if not isinstance(color_arg, str) or parse_color(color_arg) is None:
                raise CommandError(f"'color' must be a colour name ({', '.join(sorted(COLOR_NAMES))}) or #rrggbb; got {color_arg!r}")
            color = parse_color(color_arg)
        if s.type != "light" and (brightness is not None or color is not None):
            raise CommandError(f"{s.name} is a {s.type.replace('_', ' ')}: it has no brightness or colour")
        if s.type not in ("cover", "garage_door") and position is not None:
            raise CommandError(f"{s.name} is a {s.type.replace('_', ' ')}: it has no position")
        if s.type != "climate" and temperature is not None:
            raise CommandError(f"{s.name} is a {s.type.replace('_', ' ')}: it has no temperature")

        if action == "toggle":
            action = "turn_off" if dev.state.get("state") == "on" else "turn_on"
        t = s.type
        if t == "light":
            if action == "set" and brightness is None and color is None:
                raise CommandError("'set' on a light needs 'brightness' or 'color'")
            if action == "turn_off" or (brightness == 0 and color is None):
                return self._light_off(s)
            return self._light_on(s, brightness, color)
        if t in ("switch", "fan"):
            on = action == "turn_on"
            return Plan([(s.command_topic, s.payload_on if on else s.payload_off)], self._expect_state(s, "on" if on else "off"))
        if t in ("cover", "garage_door"):
            return self._cover(dev, action, position)
        if t == "lock":
            return Plan(
                [(s.command_topic, s.payload_lock if action == "lock" else s.payload_unlock)],
                Expect(
                    state=(frozenset({"locked"}) if action == "lock" else frozenset({"unlocked", "open"})) if s.state_topic else None,
                    fail_states=frozenset({"jammed"}),
                ),
            )
        if t == "alarm":
            arm = action in ("lock", "turn_on")
            return Plan(
                [(s.command_topic, s.payload_arm if arm else s.payload_disarm)],
                Expect(state=(ARMED_STATES if arm else frozenset({"disarmed"})) if s.state_topic else None),
            )
        if t == "climate":
            return self._climate(s, action, temperature)
        if t == "scene":
            return Plan([(s.command_topic, s.payload_on)], Expect())
        if t == "button":
            return Plan([(s.command_topic, s.payload_press)], Expect())
        raise CommandError(f"{s.name}: {t} devices cannot be controlled")

    @staticmethod
    def _expect_state(s: DeviceSpec, word: str) -> Expect:
        return Expect(state=frozenset({word})) if s.state_topic else Expect()

    def _light_off(self, s: DeviceSpec) -> Plan:
        if s.schema == "json":
            return Plan([(s.command_topic, json.dumps({"state": "OFF"}))], self._expect_state(s, "off"))
        return Plan([(s.command_topic, s.payload_off)], self._expect_state(s, "off"))

    def _light_on(self, s: DeviceSpec, brightness: float | None, color: str | None) -> Plan:
        expect = self._expect_state(s, "on")
        if s.schema == "json":
            cmd: dict[str, Any] = {"state": "ON"}
            if brightness is not None:
                if not s.json_brightness or s.color_modes == ("onoff",):
                    raise CommandError(f"{s.name} cannot be dimmed")
                cmd["brightness"] = max(1, int(round(brightness * s.brightness_scale / 100)))
                if s.state_topic:
                    expect.brightness = int(round(brightness))
            if color is not None:
                cmd["color"] = self._json_color(s, color)
                if s.state_topic:
                    expect.color = color
            return Plan([(s.command_topic, json.dumps(cmd))], expect)
        msgs: list[tuple[str, str]] = [(s.command_topic, s.payload_on)] if s.command_topic else []
        if brightness is not None:
            if not s.brightness_command_topic:
                raise CommandError(f"{s.name} cannot be dimmed")
            value = max(1, int(round(brightness * s.brightness_scale / 100)))
            payload = s.brightness_command_template.render({"value": value}) if s.brightness_command_template else str(value)
            msgs.append((s.brightness_command_topic, payload or str(value)))
            if s.brightness_state_topic or (s.state_topic and s.brightness_value_template):
                expect.brightness = int(round(brightness))
        if color is not None:
            if not s.rgb_command_topic:
                raise CommandError(f"{s.name} has no colour")
            r, g, b = hex_to_rgb(color)
            payload = (
                s.rgb_command_template.render({"red": r, "green": g, "blue": b, "value": f"{r},{g},{b}"})
                if s.rgb_command_template
                else f"{r},{g},{b}"
            )
            msgs.append((s.rgb_command_topic, payload or f"{r},{g},{b}"))
            if s.rgb_state_topic:
                expect.color = color
        return Plan(msgs, expect)

    @staticmethod
    def _json_color(s: DeviceSpec, color: str) -> dict[str, Any]:
        modes = set(s.color_modes)
        r, g, b = hex_to_rgb(color)
        if not modes or modes & {"rgb", "rgbw", "rgbww"}:
            return {"r": r, "g": g, "b": b}
        if "xy" in modes:
            x, y = rgb_to_xy((r, g, b))
            return {"x": x, "y": y}
        if "hs" in modes:
            import colorsys

            h, sat, _ = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
            return {"h": round(h * 360, 1), "s": round(sat * 100, 1)}
        raise CommandError(f"{s.name} has no colour (it supports {', '.join(sorted(modes))})")

    def _cover(self, dev: Device, action: str, position: float | None) -> Plan:
        s = dev.spec
        has_state = bool(s.state_topic)
        if action == "set" or (position is not None and action not in ("stop",)):
            if position is None:
                raise CommandError("'set' on a cover needs 'position' (0-100)")
            if not s.position_command_topic:
                raise CommandError(f"{s.name} cannot be set to a position; use open or close")
            target = int(round(position))
            raw = int(round(s.position_closed + (s.position_open - s.position_closed) * target / 100))
            payload = s.position_command_template.render({"position": raw, "value": raw}) if s.position_command_template else str(raw)
            current = dev.state.get("position")
            moving = None
            if isinstance(current, (int, float)) and has_state:
                moving = "opening" if target > current else "closing" if target < current else None
            expect = Expect(position=target if s.position_topic else None, moving=moving)
            if expect.position is None and has_state:
                expect = Expect(state=frozenset({"open", "opening", "closing", "closed", "stopped"}))
            return Plan([(s.position_command_topic, payload or str(raw))], expect)
        if not s.command_topic:
            raise CommandError(f"{s.name} has no command topic for {action}")
        if action == "open":
            expect = Expect(state=frozenset({"open", "opening"})) if has_state else Expect(position=100 if s.position_topic else None)
            return Plan([(s.command_topic, s.payload_open)], expect)
        if action == "close":
            expect = Expect(state=frozenset({"closed", "closing"})) if has_state else Expect(position=0 if s.position_topic else None)
            return Plan([(s.command_topic, s.payload_close)], expect)
        expect = Expect(state=frozenset({"stopped", "open", "closed"})) if has_state else Expect()
        return Plan([(s.command_topic, s.payload_stop)], expect)

    def _climate(self, s: DeviceSpec, action: str, temperature: float | None) -> Plan:
        if action == "set":
            if temperature is None:
                raise CommandError("'set' on a thermostat needs 'temperature' (°C)")
            if not s.temperature_command_topic:
                raise CommandError(f"{s.name} has no set-point")
            fahrenheit = s.temperature_unit == "F"
            lo, hi = ((s.min_temp - 32) * 5 / 9, (s.max_temp - 32) * 5 / 9) if fahrenheit else (s.min_temp, s.max_temp)
            if not lo - 1e-9 <= temperature <= hi + 1e-9:
                raise CommandError(f"{s.name} accepts set-points from {lo:.3g} to {hi:.3g} °C, not {temperature:g}")
            if fahrenheit:  # the device speaks °F, in whole degrees
                value: float = min(s.max_temp, max(s.min_temp, round(temperature * 9 / 5 + 32)))
                celsius = (value - 32) * 5 / 9
            else:
                value = round(temperature * 2) / 2 if abs(temperature * 2 - round(temperature * 2)) < 1e-9 else round(temperature, 1)
                celsius = value
            payload = s.temperature_command_template.render({"value": value}) if s.temperature_command_template else str(float(value))
            expect = Expect(target_temperature=float(celsius)) if s.temperature_state_topic else Expect()
            return Plan([(s.temperature_command_topic, payload or str(float(value)))], expect)
        on = action == "turn_on"
        if s.mode_command_topic:
            if on:
                preferred = [m for m in ("heat", "auto", "heat_cool", "cool") if m in s.modes]
                mode = preferred[0] if preferred else next((m for m in s.modes if m != "off"), "heat")
            else:
                mode = "off"
            payload = s.mode_command_template.render({"value": mode}) if s.mode_command_template else mode
            expect = Expect(mode=mode) if s.mode_state_topic else Expect()
            return Plan([(s.mode_command_topic, payload or mode)], expect)
        if s.power_command_topic:
            return Plan([(s.power_command_topic, s.payload_on if on else s.payload_off)], Expect())
        raise CommandError(f"{s.name} cannot be switched on or off")

    # ------------------------------------------------------------------ execution
    def _guard(self, dev: Device, topic: str) -> None:
        if not valid_publish_topic(topic) or topic not in dev.spec.command_topics() or topic not in self.registry.command_topics():
            self.refused.append(topic)
            _LOG.error("home devices: refused to publish to %r: not a command topic of a known device", topic)
            raise RefusedTopic(topic)

    async def _execute(self, dev: Device, plan: Plan) -> dict[str, Any]:
        name = dev.name
        if not plan.messages:
            return _fail(f"{name}: nothing to send for this request")
        try:
            for topic, _ in plan.messages:
                self._guard(dev, topic)
        except RefusedTopic as exc:
            return _fail(f"refused: {exc} is not a command topic of {name}")
        start_reports = dev.reports
        expect = plan.expect
        optimistic = expect.empty()
        try:
            spec = dev.spec
            for topic, payload in plan.messages:
                if topic == spec.command_topic and spec.command_template is not None and spec.schema != "json":
                    rendered = spec.command_template.render({"value": payload})  # HA's command_template
                    payload = payload if rendered is None else rendered
                await self.mqtt.publish(topic, payload, qos=1, wait_ack=optimistic)
        except MqttUnavailable as exc:
            return _fail(f"{exc}; {name} may not have been changed")
        except ValueError as exc:
            return _fail(f"could not send the command to {name}: {exc}")
        if optimistic:
            st = dev.snapshot()
            result: dict[str, Any] = {"ok": True, "device": name, "state": st}
            if dev.spec.type in ("scene", "button"):
                result["note"] = f"{name} was activated"
            else:
                result["note"] = f"{name} does not report its state: the command was delivered but not confirmed"
            return result

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.command_timeout_s
        grace_end: float | None = None
        while True:
            st = dev.snapshot()
            fresh = dev.reports > start_reports
            if fresh:
                if expect.failed(st):
                    return _fail(f"{name} reported {st.get('state')!r}", device=name, state=st)
                if expect.check(st):
                    return {"ok": True, "device": name, "state": st}
                if grace_end is None and str(st.get("state", "")).lower() not in IN_PROGRESS:
                    grace_end = min(deadline, loop.time() + MISMATCH_GRACE_S)
            if dev.available is False:
                return _fail(f"{name} went offline after the command", device=name, state=st)
            if not self.mqtt.connected:
                return _fail(f"lost the connection to the MQTT broker ({self.mqtt.broker}) while waiting for {name}",
                             device=name, state=st)
            end = grace_end if grace_end is not None else deadline
            remaining = end - loop.time()
            if remaining <= 0:
                break
            waiter = dev.next_report()
            try:
                # Also wake now and then to notice a lost broker connection.
                await asyncio.wait_for(waiter, min(remaining, 0.25))
            except asyncio.TimeoutError:
                pass
        st = dev.snapshot()
        if dev.reports > start_reports:
            return _fail(f"{name} reported {self._words(st)} instead of {expect.describe()}", device=name, state=st)
        return _fail(
            f"{name} did not report a new state within {self.command_timeout_s:g} s; it may be out of reach",
            device=name,
            state=st,
        )

    @staticmethod
    def _words(st: dict[str, Any]) -> str:
        shown = {k: v for k, v in st.items() if k != "available"}
        return ", ".join(f"{k} {v}" for k, v in shown.items()) or "nothing usable"


__all__ = ["ACTIONS", "HomeDevices", "RefusedTopic", "check_devices"]
