"""Home entities: how to talk to each (topics, payloads, templates) and what it last reported.

A :class:`DeviceSpec` says how to command one entity and read its state, and which device owns
it; it comes from the config file (``[[devices]]``, :func:`spec_from_config`) or from Home
Assistant MQTT discovery (:mod:`device.tools.discovery`). A :class:`Device` adds what the entity
last reported; how a message is read is its platform's job (:mod:`device.tools.platforms`). The
registry of devices and entities is :mod:`device.tools.device_registry`.

State as the model sees it (all keys optional): ``state`` ("on"/"off", "open"/"closed"/
"opening"/"closing"/"stopped", "locked"/"unlocked"/..., alarm states), ``brightness`` (0-100),
``color`` ("#rrggbb"), ``position`` (0-100), ``mode``, ``target_temperature``,
``current_temperature``, ``value`` and ``unit`` (sensors), ``available`` (false when offline).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from device.config import DeviceConfig
from device.tools.colors import COLOR_NAMES, colors_close, hex_to_rgb, parse_color, rgb_to_xy, xy_to_hex
from device.tools.platforms import platform
from device.tools.templates import Template, TemplateError
from device.tools.templates import template_or_none as _template

_LOG = logging.getLogger(__name__)

DEVICE_TYPES: tuple[str, ...] = (
    "light", "switch", "cover", "lock", "climate", "fan", "scene", "button", "sensor", "binary_sensor", "garage_door", "alarm",
)
# Types whose every change needs the person's explicit confirmation.
CONFIRM_TYPES = frozenset({"lock", "garage_door", "alarm"})
READ_ONLY_TYPES = frozenset({"sensor", "binary_sensor"})

# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Availability:
    topic: str
    payload_available: str = "online"
    payload_not_available: str = "offline"
    template: Template | None = None


@dataclass(frozen=True)
class DeviceSpec:
    """How to command one device and read its state. Empty topic = not supported."""

    key: str  # unique and stable: "config:<name>" or "discovery:<discovery topic>"
    name: str
    type: str
    area: str = ""
    source: Literal["config", "discovery"] = "config"
    # Home Assistant's device model: the device that owns this entity and the entity's own name
    # (None: the entity is the device itself, Home Assistant's ``name: null``).
    device_id: str = ""
    device_name: str = ""
    entity_name: str | None = None
    entity_category: str = ""
    model: str = ""
    manufacturer: str = ""
    via_device: str = ""
    schema: Literal["default", "json"] = "default"
    device_class: str = ""
    command_topic: str = ""
    command_template: Template | None = None
    state_topic: str = ""
    value_template: Template | None = None
    availability: tuple[Availability, ...] = ()
    availability_mode: Literal["latest", "all", "any"] = "latest"
    payload_on: str = "ON"
    payload_off: str = "OFF"
    state_on: str = ""
    state_off: str = ""
    # light (default schema)
    brightness_command_topic: str = ""
    brightness_command_template: Template | None = None
    brightness_state_topic: str = ""
    brightness_value_template: Template | None = None
    brightness_scale: int = 255
    rgb_command_topic: str = ""
    rgb_command_template: Template | None = None
    rgb_state_topic: str = ""
    rgb_value_template: Template | None = None
    # light (json schema)
    json_brightness: bool = True
    color_modes: tuple[str, ...] = ()
    # cover
    payload_open: str = "OPEN"
    payload_close: str = "CLOSE"
    payload_stop: str = "STOP"
    state_open: str = "open"
    state_closed: str = "closed"
    state_opening: str = "opening"
    state_closing: str = "closing"
    state_stopped: str = "stopped"
    position_topic: str = ""
    position_template: Template | None = None
    position_command_topic: str = ""
    position_command_template: Template | None = None
    position_open: int = 100
    position_closed: int = 0
    # lock
    payload_lock: str = "LOCK"
    payload_unlock: str = "UNLOCK"
    state_locked: str = "LOCKED"
    state_unlocked: str = "UNLOCKED"
    state_locking: str = "LOCKING"
    state_unlocking: str = "UNLOCKING"
    state_jammed: str = "JAMMED"
    # climate
    temperature_command_topic: str = ""
    temperature_command_template: Template | None = None
    temperature_state_topic: str = ""
    temperature_state_template: Template | None = None
    current_temperature_topic: str = ""
    current_temperature_template: Template | None = None
    mode_command_topic: str = ""
    mode_command_template: Template | None = None
    mode_state_topic: str = ""
    mode_state_template: Template | None = None
    modes: tuple[str, ...] = ("off", "heat")
    min_temp: float = 7.0  # in the device's unit
    max_temp: float = 35.0
    temperature_unit: str = "C"  # "F": the device speaks Fahrenheit; the model always gets °C
    power_command_topic: str = ""
    # button / scene / alarm
    payload_press: str = "PRESS"
    payload_arm: str = "ARM_AWAY"
    payload_disarm: str = "DISARM"
    # sensor
    unit: str = ""
    optimistic: bool = False
    confirm: bool = False
    # Settings of a platform that has no field of its own here: (key, value) pairs its module reads
    # with option(); its extra topics come from the module's command_topics()/state_topics().
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        return next((v for k, v in self.options if k == key), default)

    @property
    def controllable(self) -> bool:
        return self.type not in READ_ONLY_TYPES

    @property
    def needs_confirmation(self) -> bool:
        return self.confirm or self.type in CONFIRM_TYPES

    @property
    def on_state(self) -> str:
        return self.state_on or self.payload_on

    @property
    def off_state(self) -> str:
        return self.state_off or self.payload_off

    def command_topics(self) -> set[str]:
        """Every topic a command to this device may be published to."""
        return {
            t
            for t in (
                self.command_topic,
                self.brightness_command_topic,
                self.rgb_command_topic,
                self.position_command_topic,
                self.temperature_command_topic,
                self.mode_command_topic,
                self.power_command_topic,
                *getattr(platform(self.type), "command_topics", lambda spec: ())(self),
            )
            if t
        }

    def state_topics(self) -> dict[str, list[str]]:
        """topic -> the roles its messages play ('state', 'brightness', ...); topics may be shared."""
        roles: dict[str, list[str]] = {}
        for role, topic in (
            ("state", self.state_topic),
            ("brightness", self.brightness_state_topic),
            ("rgb", self.rgb_state_topic),
            ("position", self.position_topic),
            ("temperature", self.temperature_state_topic),
            ("current_temperature", self.current_temperature_topic),
            ("mode", self.mode_state_topic),
            *getattr(platform(self.type), "state_topics", lambda spec: ())(self),
        ):
            if topic:
                roles.setdefault(topic, []).append(role)
        for i, av in enumerate(self.availability):
            roles.setdefault(av.topic, []).append(f"availability:{i}")
        return roles

    def actions(self) -> tuple[str, ...]:
        """The control_device actions this device supports."""
        return tuple(platform(self.type).actions(self))


def _check_topic(topic: str, what: str) -> str:
    if not topic:
        return ""
    if "\x00" in topic or "#" in topic or "+" in topic:
        raise ValueError(f"{what} {topic!r} contains a wildcard or NUL")
    return topic


def spec_from_config(dev: DeviceConfig) -> DeviceSpec:
    """A device declared in the config file; raises ValueError naming the key on a bad template/topic."""
    where = f"[[devices]] {dev.name!r}"
    topics = {
        k: _check_topic(getattr(dev, k), f"{where} {k}")
        for k in (
            "command_topic", "state_topic", "availability_topic", "brightness_command_topic", "brightness_state_topic",
            "position_command_topic", "position_topic", "temperature_command_topic", "temperature_state_topic",
            "mode_command_topic", "mode_state_topic",
        )
    }
    tpl = dev.value_template
    if tpl and "{{" not in tpl:
        tpl = "{{ value_json.%s }}" % tpl.strip()  # a bare JSON key is accepted as a shorthand
    value_template = _template(tpl, f"{where} value_template")
    # Zigbee2MQTT-style JSON devices report everything in one JSON message on the state topic.
    json_state = dev.schema == "json"
    state_topic = topics["state_topic"]
    kind = dev.type
    base: dict[str, Any] = {}
    if json_state and kind != "light":
        # A JSON device of another type: read the usual keys from the one JSON state message.
        key = {"lock": "state", "cover": "state", "garage_door": "state", "sensor": "value"}.get(kind, "state")
        base["value_template"] = value_template or Template("{{ value_json.%s }}" % key)
        if kind in ("cover", "garage_door") and not topics["position_topic"]:
            base["position_topic"] = state_topic
            base["position_template"] = Template("{{ value_json.position }}")
        if kind == "climate":
            base["temperature_state_topic"] = topics["temperature_state_topic"] or state_topic
            base["temperature_state_template"] = Template("{{ value_json.occupied_heating_setpoint }}")
            base["current_temperature_topic"] = state_topic
            base["current_temperature_template"] = Template("{{ value_json.local_temperature }}")
            base["mode_state_topic"] = topics["mode_state_topic"] or state_topic
            base["mode_state_template"] = Template("{{ value_json.system_mode }}")
    spec = DeviceSpec(
        key=f"config:{dev.name.casefold()}",
        name=dev.name.strip(),
        device_id=f"config:{dev.name.casefold()}",
        device_name=dev.name.strip(),
        type=kind,
        area=dev.area,
        source="config",
        schema="json" if (json_state and kind == "light") else "default",
        command_topic=topics["command_topic"],
        state_topic=state_topic,
        value_template=value_template,
        availability=(
            (Availability(topics["availability_topic"], dev.payload_available, dev.payload_not_available),)
            if topics["availability_topic"]
            else ()
        ),
        command_template=_template(dev.command_template, f"{where} command_template"),
        brightness_command_template=_template(dev.brightness_command_template, f"{where} brightness_command_template"),
        payload_on=dev.payload_on,
        payload_off=dev.payload_off,
        state_on=dev.state_on,
        state_off=dev.state_off,
        payload_open=dev.payload_open,
        payload_close=dev.payload_close,
        payload_stop=dev.payload_stop,
        payload_lock=dev.payload_lock,
        payload_unlock=dev.payload_unlock,
        brightness_command_topic=topics["brightness_command_topic"],
        brightness_state_topic=topics["brightness_state_topic"],
        brightness_scale=dev.brightness_scale,
        position_command_topic=topics["position_command_topic"],
        position_topic=topics["position_topic"],
        temperature_command_topic=topics["temperature_command_topic"],
        temperature_state_topic=topics["temperature_state_topic"],
        mode_command_topic=topics["mode_command_topic"],
        mode_state_topic=topics["mode_state_topic"],
        payload_arm=dev.payload_on if kind == "alarm" and dev.payload_on != "ON" else "ARM_AWAY",
        payload_disarm=dev.payload_off if kind == "alarm" and dev.payload_off != "OFF" else "DISARM",
        confirm=dev.confirm,
        optimistic=not state_topic and kind not in ("scene", "button"),
    )
    if kind == "lock" and dev.state_on:
        spec = replace(spec, state_locked=dev.state_on, state_unlocked=dev.state_off or spec.state_unlocked)
    if json_state and kind != "light":
        # Zigbee2MQTT's <device>/set takes JSON commands and reports {"state": "ON"|"LOCK"|"OPEN"...}.
        def j(payload: str, key: str = "state") -> str:
            return json.dumps({key: payload})

        base.update(
            payload_on=j(dev.payload_on), payload_off=j(dev.payload_off),
            state_on=dev.state_on or dev.payload_on, state_off=dev.state_off or dev.payload_off,
            payload_open=j(dev.payload_open), payload_close=j(dev.payload_close), payload_stop=j(dev.payload_stop),
            payload_lock=j(dev.payload_lock), payload_unlock=j(dev.payload_unlock),
        )
        if kind == "lock" and not dev.state_on:
            base.update(state_locked=dev.payload_lock, state_unlocked=dev.payload_unlock)
        if kind in ("cover", "garage_door"):
            base.update(state_open=dev.payload_open, state_closed=dev.payload_close, state_stopped=dev.payload_stop)
        if kind in ("cover", "garage_door") and not topics["position_command_topic"]:
            base.update(position_command_topic=topics["command_topic"], position_command_template=Template('{"position": {{ position }}}'))
    if base:
        spec = replace(spec, **base)
    return spec


# --------------------------------------------------------------------------- runtime state


class Device:
    """A device and what it last reported. Lives on the event loop."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.given_name = spec.name  # the name before a clash renamed it (deny lists use both)
        self.state: dict[str, Any] = {}
        self._avail: dict[int, bool] = {}
        self._avail_latest: bool | None = None
        self.reports = 0  # fresh (non-retained) state reports applied so far
        self.last_report: float | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._bad_logged = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def replace_spec(self, spec: DeviceSpec) -> None:
        """A discovery update: new topics/payloads, keep what was reported."""
        if [a.topic for a in spec.availability] != [a.topic for a in self.spec.availability]:
            self._avail = {}  # availability comes from other topics now; the old answers do not hold
        self.spec = spec

    @property
    def available(self) -> bool | None:
        """False when its availability topic(s) say offline; None when unknown or not announced."""
        if not self.spec.availability:
            return None
        mode = self.spec.availability_mode
        if mode == "latest":
            return self._avail_latest
        known = [self._avail.get(i) for i in range(len(self.spec.availability))]
        if mode == "all":
            if any(v is False for v in known):
                return False
            return True if all(v is True for v in known) else None
        if any(v is True for v in known):
            return True
        return False if all(v is False for v in known) else None

    def snapshot(self) -> dict[str, Any]:
        """The state for the model."""
        out = dict(self.state)
        if self.spec.type == "sensor" and self.spec.unit and "value" in out:
            out["unit"] = self.spec.unit
        av = self.available
        if av is not None:
            out["available"] = av
        return out

    # ---- messages
    def apply(self, topic: str, payload: bytes, retained: bool, roles: Iterable[str]) -> bool:
        """Apply one message on one of this device's topics; True if it changed anything."""
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._bad(topic, "payload is not UTF-8")
            return False
        changed = False
        fresh = False
        for role in roles:
            if role.startswith("availability:"):
                changed |= self._apply_availability(int(role.split(":", 1)[1]), text)
                continue
            try:
                updates = self._parse(role, text)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self._bad(topic, f"{role} message {text[:80]!r} not understood ({exc})")
                continue
            if updates is None:
                continue
            self.state.update(updates)
            changed = True
            fresh = fresh or not retained
        if fresh:
            self.reports += 1
            self.last_report = time.monotonic()
        if changed or fresh:
            self._wake()
        return changed

    def _bad(self, topic: str, why: str) -> None:
        self._bad_logged += 1
        log = _LOG.warning if self._bad_logged <= 3 else _LOG.debug
        log("device %r: skipping a message on %s: %s", self.name, topic, why)

    def _apply_availability(self, i: int, text: str) -> bool:
        if i >= len(self.spec.availability):
            return False
        av = self.spec.availability[i]
        value = av.template.render_value(text) if av.template is not None else text
        if value == av.payload_available:
            ok = True
        elif value == av.payload_not_available:
            ok = False
        else:
            return False
        before = self.available
        self._avail[i] = ok
        self._avail_latest = ok
        return before != self.available

    def _parse(self, role: str, text: str) -> dict[str, Any] | None:
        return platform(self.spec.type).parse(self.spec, role, text)

    # ---- waiting for reports
    def next_report(self) -> asyncio.Future[None]:
        """A future resolved at the next applied message."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(fut)
        return fut

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


__all__ = [
    "Availability",
    "COLOR_NAMES",
    "CONFIRM_TYPES",
    "DEVICE_TYPES",
    "Device",
    "DeviceSpec",
    "READ_ONLY_TYPES",
    "Template",
    "TemplateError",
    "colors_close",
    "hex_to_rgb",
    "parse_color",
    "rgb_to_xy",
    "spec_from_config",
    "xy_to_hex",
]
