"""Scenes and buttons: activated, never confirmed by a state (they have none)."""

from __future__ import annotations

from typing import Any

from device.tools.platforms.base import Expect, Fields, Plan, Request

KINDS = ("scene", "button")
COMPONENTS = ("scene", "button")
ACCEPTS: frozenset[str] = frozenset()


def read_discovery(f: Fields, kind: str) -> dict[str, Any]:
    if kind == "button":
        return dict(payload_press=f.s("payload_press", "PRESS"))
    return dict(payload_on=f.s("payload_on", "ON"))


def parse(spec: Any, role: str, text: str) -> dict[str, Any] | None:
    return None


def actions(spec: Any) -> tuple[str, ...]:
    return ("activate",)


def plan(dev: Any, action: str, req: Request) -> Plan:
    s = dev.spec
    return Plan([(s.command_topic, s.payload_press if s.type == "button" else s.payload_on)], Expect())


__all__ = ["ACCEPTS", "COMPONENTS", "KINDS", "actions", "parse", "plan", "read_discovery"]
