"""Locks: lock and unlock (always confirmed by the person first); a jam is a failure."""

from __future__ import annotations

from typing import Any

from device.tools.platforms.base import Expect, Fields, Plan, Request, state_word

KINDS = ("lock",)
COMPONENTS = ("lock",)
ACCEPTS: frozenset[str] = frozenset()
STATES = ("locked", "unlocked", "locking", "unlocking", "jammed", "open")


def read_discovery(f: Fields, kind: str) -> dict[str, Any]:
    return dict(
        payload_lock=f.s("payload_lock", "LOCK"),
        payload_unlock=f.s("payload_unlock", "UNLOCK"),
        state_locked=f.s("state_locked", "LOCKED"),
        state_unlocked=f.s("state_unlocked", "UNLOCKED"),
        state_locking=f.s("state_locking", "LOCKING"),
        state_unlocking=f.s("state_unlocking", "UNLOCKING"),
        state_jammed=f.s("state_jammed", "JAMMED"),
    )


def parse(spec: Any, role: str, text: str) -> dict[str, Any] | None:
    if role != "state":
        return None
    words = {
        spec.state_locked: "locked", spec.state_unlocked: "unlocked", spec.state_locking: "locking",
        spec.state_unlocking: "unlocking", spec.state_jammed: "jammed",
    }
    return state_word(spec.value_template, text, words, STATES, "lock")


def actions(spec: Any) -> tuple[str, ...]:
    return ("lock", "unlock")


def plan(dev: Any, action: str, req: Request) -> Plan:
    s = dev.spec
    lock = action == "lock"
    return Plan(
        [(s.command_topic, s.payload_lock if lock else s.payload_unlock)],
        Expect(
            state=(frozenset({"locked"}) if lock else frozenset({"unlocked", "open"})) if s.state_topic else None,
            fail_states=frozenset({"jammed"}),
        ),
    )


__all__ = ["ACCEPTS", "COMPONENTS", "KINDS", "actions", "parse", "plan", "read_discovery"]
