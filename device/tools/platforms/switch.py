"""Switches (plugs, relays): on/off with optional separate state words."""

from __future__ import annotations

from typing import Any

from device.tools.platforms.base import Fields, Plan, Request, expect_state, value

KINDS = ("switch",)
COMPONENTS = ("switch",)
ACCEPTS: frozenset[str] = frozenset()


def read_discovery(f: Fields, kind: str) -> dict[str, Any]:
    return dict(payload_on=f.s("payload_on", "ON"), payload_off=f.s("payload_off", "OFF"),
                state_on=f.s("state_on"), state_off=f.s("state_off"))


def on_off(spec: Any, text: str) -> dict[str, Any] | None:
    """A state message -> {"state": "on"/"off"} by the entity's state words."""
    raw = value(spec.value_template, text)
    if raw is None:
        return None
    raw = raw.strip()
    if raw == spec.on_state:
        return {"state": "on"}
    if raw == spec.off_state:
        return {"state": "off"}
    if raw in ("", "None"):
        return None
    raise ValueError(f"expected {spec.on_state!r} or {spec.off_state!r}")


def parse(spec: Any, role: str, text: str) -> dict[str, Any] | None:
    return on_off(spec, text) if role == "state" else None


def actions(spec: Any) -> tuple[str, ...]:
    return ("turn_on", "turn_off", "toggle")


def plan(dev: Any, action: str, req: Request) -> Plan:
    s = dev.spec
    on = action == "turn_on"
    return Plan([(s.command_topic, s.payload_on if on else s.payload_off)], expect_state(s, "on" if on else "off"))


__all__ = ["ACCEPTS", "COMPONENTS", "KINDS", "actions", "on_off", "parse", "plan", "read_discovery"]
