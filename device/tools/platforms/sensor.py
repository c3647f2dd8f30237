"""Sensors and binary sensors: read only; a sensor's value is a number when it is one."""

from __future__ import annotations

from typing import Any

from device.tools.platforms.base import CommandError, Fields, Plan, Request, number, value
from device.tools.platforms.switch import on_off

KINDS = ("sensor", "binary_sensor")
COMPONENTS = ("sensor", "binary_sensor")
ACCEPTS: frozenset[str] = frozenset()


def read_discovery(f: Fields, kind: str) -> dict[str, Any]:
    if kind == "binary_sensor":
        return dict(payload_on=f.s("payload_on", "ON"), payload_off=f.s("payload_off", "OFF"))
    return dict(unit=f.s("unit_of_measurement"))


def parse(spec: Any, role: str, text: str) -> dict[str, Any] | None:
    if role != "state":
        return None
    if spec.type == "binary_sensor":
        return on_off(spec, text)
    raw = value(spec.value_template, text)
    if raw is None:
        return None
    raw = raw.strip()
    v = number(raw)
    return {"value": v if v is not None else raw}


def actions(spec: Any) -> tuple[str, ...]:
    return ()


def plan(dev: Any, action: str, req: Request) -> Plan:
    raise CommandError(f"{dev.name} is a {dev.spec.type.replace('_', ' ')}: it can only be read")


__all__ = ["ACCEPTS", "COMPONENTS", "KINDS", "actions", "parse", "plan", "read_discovery"]
