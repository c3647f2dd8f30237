"""Covers (blinds, shades, curtains) and garage doors: open, close, stop, set a position."""

from __future__ import annotations

from typing import Any

from device.tools.platforms.base import CommandError, Expect, Fields, Plan, Request, number, state_word, value

KINDS = ("cover", "garage_door")
COMPONENTS = ("cover",)
ACCEPTS = frozenset({"position"})
STATES = ("open", "closed", "opening", "closing", "stopped")


def kind_for(device_class: str) -> str:
    """Garage doors and gates need a confirmation: they are a kind of their own here."""
    return "garage_door" if device_class in ("garage", "gate", "door") else "cover"


def read_discovery(f: Fields, kind: str) -> dict[str, Any]:
    return dict(
        payload_open=f.s("payload_open", "OPEN"),
        payload_close=f.s("payload_close", "CLOSE"),
        payload_stop=f.s("payload_stop", "STOP"),
        state_open=f.s("state_open", "open"),
        state_closed=f.s("state_closed", "closed"),
        state_opening=f.s("state_opening", "opening"),
        state_closing=f.s("state_closing", "closing"),
        state_stopped=f.s("state_stopped", "stopped"),
        position_topic=f.topic("position_topic"),
        position_template=f.tpl("position_template"),
        position_command_topic=f.topic("set_position_topic"),
        position_command_template=f.tpl("set_position_template"),
        position_open=int(f.num("position_open", 100)),
        position_closed=int(f.num("position_closed", 0)),
    )


def parse(spec: Any, role: str, text: str) -> dict[str, Any] | None:
    if role == "position":
        v = number(value(spec.position_template, text))
        if v is None:
            if spec.position_topic == spec.state_topic:  # a shared JSON message without a position
                return None
            raise ValueError("not a number")
        span = spec.position_open - spec.position_closed or 100
        pct = (v - spec.position_closed) * 100.0 / span
        return {"position": int(round(max(0.0, min(100.0, pct))))}
    if role != "state":
        return None
    words = {
        spec.state_open: "open", spec.state_closed: "closed", spec.state_opening: "opening",
        spec.state_closing: "closing", spec.state_stopped: "stopped",
    }
    return state_word(spec.value_template, text, words, STATES, "cover")


def actions(spec: Any) -> tuple[str, ...]:
    return ("open", "close", "stop", "set") if spec.position_command_topic else ("open", "close", "stop")


def plan(dev: Any, action: str, req: Request) -> Plan:
    s = dev.spec
    has_state = bool(s.state_topic)
    position = req.position
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
            expect = Expect(state=frozenset(STATES))
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


__all__ = ["ACCEPTS", "COMPONENTS", "KINDS", "actions", "kind_for", "parse", "plan", "read_discovery"]
