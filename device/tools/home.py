"""Home devices as tools for the model: list_devices, get_device_state, control_device.

Commands go out with QoS 1 and the answer is what the device reported afterwards, within
``mqtt.command_timeout_s``: ``{"ok": true, "state": {...}}``, or ``{"ok": false, "error": ...,
"state": <what was seen>}`` on a timeout or a different state. Only the command topics of known,
exposed devices are ever published to; every topic is checked against that set right before the
publish, whatever the model sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from device.config import Settings
from device.mqtt import MqttConnection, MqttUnavailable, valid_publish_topic
from device.tools.device_registry import DeviceRegistry
from device.tools.devices import (
    COLOR_NAMES,
    DEVICE_TYPES,
    READ_ONLY_TYPES,
    Device,
    DeviceSpec,
    parse_color,
    spec_from_config,
)
from device.tools.discovery import DiscoveryError, parse_message
from device.tools.listing import areas, device_lines, state_words
from device.tools.platforms import platform
from device.tools.platforms.base import CommandError, Expect, Plan, Request
from device.tools.registry import Tool, ToolRegistry

_LOG = logging.getLogger(__name__)

ACTIONS = ("turn_on", "turn_off", "toggle", "open", "close", "stop", "lock", "unlock", "activate", "set")
# After a report that does not (yet) match, how long to wait for a further one (a light reports
# state and brightness on two topics; a lock reports "locking" before "locked").
MISMATCH_GRACE_S = 1.0
# States on the way to the requested one: keep waiting for the device, up to the full timeout.
IN_PROGRESS = frozenset({"locking", "unlocking", "opening", "closing", "arming", "pending"})
# Above this many names the tool schema does not list them (the model reads list_devices instead).
MAX_ENUM_NAMES = 40


class RefusedTopic(Exception):
    """A publish to a topic that is not a known device's command topic was attempted and refused."""


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
        self._dev_topics: dict[str, list[str]] = {}  # entity key -> the state topics it listens on
        self._listeners: dict[str, dict[str, list[str]]] = {}  # state topic -> {entity key: roles}
        self._topic_unsubs: dict[str, Callable[[], None]] = {}
        self._last_message: dict[str, bytes] = {}  # state topic -> its last message
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
        for key in list(self._dev_topics):
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
        if spec.key not in self._dev_topics:
            self._subscribe_device(dev)
        return dev

    def _subscribe_device(self, dev: Device) -> None:
        """Listen on the entity's state topics. One subscription per topic serves every entity on it
        (a Zigbee2MQTT device's entities share its topic, and all share the bridge's state): an
        entity that joins later gets the topic's last message at once instead of a resubscription
        that would make the broker resend it to all of them."""
        key = dev.spec.key
        topics: list[str] = []
        for topic, roles in dev.spec.state_topics().items():
            listeners = self._listeners.get(topic)
            if listeners is None:
                try:
                    unsub = self.mqtt.subscribe(topic, lambda t, p, r, topic=topic: self._on_state(topic, t, p, r), qos=1)
                except ValueError as exc:
                    _LOG.warning("device %r: cannot subscribe to %r: %s", dev.name, topic, exc)
                    continue
                listeners = self._listeners[topic] = {}
                self._topic_unsubs[topic] = unsub
            listeners[key] = roles
            topics.append(topic)
            last = self._last_message.get(topic)
            if last is not None:
                dev.apply(topic, last, True, roles)
        self._dev_topics[key] = topics

    def _on_state(self, topic: str, t: str, payload: bytes, retained: bool) -> None:
        self._last_message[topic] = payload
        for key, roles in list(self._listeners.get(topic, {}).items()):
            d = self.registry.get(key)
            if d is not None:
                d.apply(t, payload, retained, roles)

    def _unsubscribe_device(self, key: str) -> None:
        for topic in self._dev_topics.pop(key, []):
            listeners = self._listeners.get(topic)
            if listeners is None:
                continue
            listeners.pop(key, None)
            if not listeners:
                del self._listeners[topic]
                self._last_message.pop(topic, None)
                self._topic_unsubs.pop(topic)()

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
        device_prop: dict[str, Any] = {
            "type": "string",
            "description": "the device as the person named it, e.g. 'front door', 'front door battery', "
            "'blinds in the living room' (case does not matter)",
        }
        if names and len(names) <= MAX_ENUM_NAMES:
            device_prop["enum"] = names
        elif not names:
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
                "List the home's devices, one line each: name (type, area): state; other parts; readings. "
                "Optionally only one area or one type.",
                {
                    "type": "object",
                    "properties": {
                        "area": {"type": "string", "description": "only devices in this area, e.g. 'kitchen'"},
                        "type": {"type": "string", "enum": list(DEVICE_TYPES),
                                 "description": "only devices with a part of this type"},
                    },
                    "additionalProperties": False,
                },
                self.list_devices,
            ),
            Tool(
                "get_device_state",
                "Get one home device's current state as it last reported it, with its other readings (battery, power ...).",
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
        """The device list for the {{devices}} placeholder: one line per device."""
        lines = device_lines(self.registry)
        return "\n".join(lines) if lines else "none"

    def vocabulary(self) -> list[str]:
        """The names people say, for the transcription prompt: devices and the parts they control, then areas."""
        words: list[str] = []
        areas: list[str] = []
        for info, ents in self.registry.devices():
            words += [info.name, *(e.name for e in ents if e.spec.controllable)]
            areas += [info.area, *(e.spec.area for e in ents)]
        return [w for w in words + areas if w]  # household_prompt drops repeats

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
        if self.registry.is_main(dev):
            readings = self._readings(dev.spec.device_id, exclude=dev)
            if readings:
                out["readings"] = readings
        return out

    def _readings(self, device_id: str, exclude: Device | None = None) -> dict[str, str]:
        """The other entities of a device by name, each in a few words ('Front door Battery': '87 %')."""
        return {e.name: state_words(e) for e in self.registry.visible()
                if e.spec.device_id == device_id and e is not exclude and e.spec.device_id}

    def _stale_note(self) -> dict[str, Any]:
        if self.mqtt.connected:
            return {}
        return {"note": f"the home's MQTT broker ({self.mqtt.broker}) is not connected: states may be out of date"}

    async def list_devices(self, args: dict[str, Any]) -> dict[str, Any]:
        """Tool: every exposed device, one line each; optionally one area or one type."""
        area = args.get("area") or ""
        kind = args.get("type") or ""
        if not isinstance(area, str) or not isinstance(kind, str):
            return _fail("'area' and 'type' must be strings")
        if kind and kind.strip().lower().replace(" ", "_") not in DEVICE_TYPES + ("alarm_control_panel",):
            return _fail(f"unknown type {kind!r}; types: {', '.join(DEVICE_TYPES)}")
        lines = device_lines(self.registry, area, kind)
        out: dict[str, Any] = {"ok": True, "devices": lines}
        if not lines and (area or kind):
            out["note"] = "no device matches" + (f"; areas: {', '.join(areas(self.registry)) or 'none'}" if area else "")
        return {**out, **self._stale_note()}

    def _lookup(self, args: dict[str, Any], control: bool = False) -> Device | dict[str, Any]:
        name = args.get("device")
        if not isinstance(name, str) or not name.strip():
            return _fail("'device' must be the name of a device (a string); call list_devices to see them")
        found = self.registry.find(name)
        if found.device is not None:
            return found.device
        shown = name if len(name) <= 60 else name[:57] + "..."
        if found.candidates:
            return _fail(f"{shown!r} could be any of {', '.join(repr(c) for c in found.candidates)}: "
                         "ask the person which one they mean", candidates=found.candidates)
        if found.group is not None:
            readings = self._readings(found.group.id)
            if control:
                return _fail(f"{found.group.name} has nothing to control; it reports: "
                             + (", ".join(f"{k} {v}" for k, v in readings.items()) or "nothing yet"))
            return {"ok": True, "name": found.group.name, "type": "device", **({"area": found.group.area} if found.group.area else {}),
                    "readings": readings, **self._stale_note()}
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
        dev = self._lookup(args, control=True)
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
        """Check the optional arguments, then let the entity's platform build the messages."""
        s = dev.spec
        color_arg = args.get("color")
        color: str | None = None
        if color_arg is not None:
            if not isinstance(color_arg, str) or parse_color(color_arg) is None:
                raise CommandError(f"'color' must be a colour name ({', '.join(sorted(COLOR_NAMES))}) or #rrggbb; got {color_arg!r}")
            color = parse_color(color_arg)
        req = Request(brightness=_number(args, "brightness", 0, 100), color=color,
                      position=_number(args, "position", 0, 100), temperature=_number(args, "temperature"))
        p = platform(s.type)
        kind = s.type.replace("_", " ")
        if "brightness" not in p.ACCEPTS and (req.brightness is not None or req.color is not None):
            raise CommandError(f"{s.name} is a {kind}: it has no brightness or colour")
        if "position" not in p.ACCEPTS and req.position is not None:
            raise CommandError(f"{s.name} is a {kind}: it has no position")
        if "temperature" not in p.ACCEPTS and req.temperature is not None:
            raise CommandError(f"{s.name} is a {kind}: it has no temperature")
        if action == "toggle":
            action = "turn_off" if dev.state.get("state") == "on" else "turn_on"
        return p.plan(dev, action, req)

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


__all__ = ["ACTIONS", "CommandError", "Expect", "HomeDevices", "Plan", "RefusedTopic", "check_devices"]
