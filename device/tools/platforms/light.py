"""Lights: default schema (separate state/brightness/rgb topics) and JSON schema (Zigbee2MQTT, ESPHome)."""

from __future__ import annotations

import colorsys
import json
import math
from typing import Any

from device.tools.colors import color_from_json, hex_to_rgb, rgb_to_hex, rgb_to_xy
from device.tools.platforms.base import CommandError, DiscoveryError, Expect, Fields, Plan, Request, expect_state, number, value
from device.tools.platforms.switch import on_off

KINDS = ("light",)
COMPONENTS = ("light",)
ACCEPTS = frozenset({"brightness", "color"})


def read_discovery(f: Fields, kind: str) -> dict[str, Any]:
    schema = "json" if f.s("schema", "default") == "json" else "default"
    color_modes = f.get("supported_color_modes")
    modes = tuple(str(m) for m in color_modes) if isinstance(color_modes, list) else ()
    if schema == "json" and not modes and f.get("rgb") is True:
        modes = ("rgb",)
    if schema == "json" and not modes and f.get("xy") is True:
        modes = ("xy",)
    if schema == "json" and not f.topic("command_topic"):
        raise DiscoveryError("a JSON light needs a command_topic")
    return dict(
        schema=schema,
        payload_on=f.s("payload_on", "ON"),
        payload_off=f.s("payload_off", "OFF"),
        brightness_command_topic=f.topic("brightness_command_topic"),
        brightness_command_template=f.tpl("brightness_command_template"),
        brightness_state_topic=f.topic("brightness_state_topic"),
        brightness_value_template=f.tpl("brightness_value_template"),
        brightness_scale=max(1, int(f.num("brightness_scale", 255))),
        rgb_command_topic=f.topic("rgb_command_topic"),
        rgb_command_template=f.tpl("rgb_command_template"),
        rgb_state_topic=f.topic("rgb_state_topic"),
        rgb_value_template=f.tpl("rgb_value_template"),
        json_brightness=f.get("brightness", True) is not False,
        color_modes=modes,
    )


def parse(spec: Any, role: str, text: str) -> dict[str, Any] | None:
    if role == "state":
        if spec.schema == "json":
            return _parse_json(spec, text)
        return on_off(spec, text)
    if role == "brightness":
        v = number(value(spec.brightness_value_template, text))
        if v is None:
            raise ValueError("not a number")
        return {"brightness": int(round(max(0.0, min(100.0, v * 100.0 / spec.brightness_scale))))}
    if role == "rgb":
        raw = value(spec.rgb_value_template, text)
        if raw is None:
            return None
        r, g, b = (float(p) for p in raw.split(","))
        return {"color": rgb_to_hex(r, g, b)}
    return None


def _parse_json(spec: Any, text: str) -> dict[str, Any] | None:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    out: dict[str, Any] = {}
    st = data.get("state")
    if isinstance(st, str):
        if st.upper() == "ON":
            out["state"] = "on"
        elif st.upper() == "OFF":
            out["state"] = "off"
    b = data.get("brightness")
    if isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b):
        out["brightness"] = int(round(max(0.0, min(100.0, b * 100.0 / spec.brightness_scale))))
    color = color_from_json(data.get("color"))
    if color:
        out["color"] = color
    return out or None


def actions(spec: Any) -> tuple[str, ...]:
    return ("turn_on", "turn_off", "toggle", "set")


def plan(dev: Any, action: str, req: Request) -> Plan:
    s = dev.spec
    if action == "set" and req.brightness is None and req.color is None:
        raise CommandError("'set' on a light needs 'brightness' or 'color'")
    if action == "turn_off" or (req.brightness == 0 and req.color is None):
        if s.schema == "json":
            return Plan([(s.command_topic, json.dumps({"state": "OFF"}))], expect_state(s, "off"))
        return Plan([(s.command_topic, s.payload_off)], expect_state(s, "off"))
    return _on(s, req.brightness, req.color)


def _on(s: Any, brightness: float | None, color: str | None) -> Plan:
    expect = expect_state(s, "on")
    if s.schema == "json":
        cmd: dict[str, Any] = {"state": "ON"}
        if brightness is not None:
            if not s.json_brightness or s.color_modes == ("onoff",):
                raise CommandError(f"{s.name} cannot be dimmed")
            cmd["brightness"] = max(1, int(round(brightness * s.brightness_scale / 100)))
            if s.state_topic:
                expect.brightness = int(round(brightness))
        if color is not None:
            cmd["color"] = _json_color(s, color)
            if s.state_topic:
                expect.color = color
        return Plan([(s.command_topic, json.dumps(cmd))], expect)
    msgs: list[tuple[str, str]] = [(s.command_topic, s.payload_on)] if s.command_topic else []
    if brightness is not None:
        if not s.brightness_command_topic:
            raise CommandError(f"{s.name} cannot be dimmed")
        level = max(1, int(round(brightness * s.brightness_scale / 100)))
        payload = s.brightness_command_template.render({"value": level}) if s.brightness_command_template else str(level)
        msgs.append((s.brightness_command_topic, payload or str(level)))
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


def _json_color(s: Any, color: str) -> dict[str, Any]:
    """The colour in the form the light takes: rgb, else CIE xy, else hue/saturation."""
    modes = set(s.color_modes)
    r, g, b = hex_to_rgb(color)
    if not modes or modes & {"rgb", "rgbw", "rgbww"}:
        return {"r": r, "g": g, "b": b}
    if "xy" in modes:
        x, y = rgb_to_xy((r, g, b))
        return {"x": x, "y": y}
    if "hs" in modes:
        h, sat, _ = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        return {"h": round(h * 360, 1), "s": round(sat * 100, 1)}
    raise CommandError(f"{s.name} has no colour (it supports {', '.join(sorted(modes))})")


__all__ = ["ACCEPTS", "COMPONENTS", "Expect", "KINDS", "actions", "parse", "plan", "read_discovery"]
