"""Alarm control panels: arm (away) and disarm, always confirmed by the person first."""

from __future__ import annotations

from typing import Any

from device.tools.platforms.base import Expect, Fields, Plan, Request, value

KINDS = ("alarm",)
COMPONENTS = ("alarm_control_panel",)
ACCEPTS: frozenset[str] = frozenset()
ARMED_STATES = frozenset({"armed_away", "armed_home", "armed_night", "armed_vacation", "armed_custom_bypass", "arming", "triggered"})


def read_discovery(f: Fields, kind: str) -> dict[str, Any]:
    return dict(payload_arm=f.s("payload_arm_away", "ARM_AWAY"), payload_disarm=f.s("payload_disarm", "DISARM"))


def parse(spec: Any, role: str, text: str) -> dict[str, Any] | None:
    if role != "state":
        return None
    raw = value(spec.value_template, text)
    return {"state": raw.strip().lower()} if raw and raw.strip() else None


def actions(spec: Any) -> tuple[str, ...]:
    return ("lock", "unlock", "turn_on", "turn_off")


def plan(dev: Any, action: str, req: Request) -> Plan:
    s = dev.spec
    arm = action in ("lock", "turn_on")
    return Plan(
        [(s.command_topic, s.payload_arm if arm else s.payload_disarm)],
        Expect(state=(ARMED_STATES if arm else frozenset({"disarmed"})) if s.state_topic else None),
    )


__all__ = ["ACCEPTS", "ARMED_STATES", "COMPONENTS", "KINDS", "actions", "parse", "plan", "read_discovery"]
