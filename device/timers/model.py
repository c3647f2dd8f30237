"""Timers and reminders as data: one :class:`Entry` each, the ringer interface and the bus event."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from device.events import Event

TIMER = "timer"
REMINDER = "reminder"
MIN_DURATION_S = 1.0
MAX_DURATION_S = 24 * 3600.0
MAX_REMINDER_AHEAD_S = 366 * 24 * 3600.0
MAX_ENTRIES = 50
MAX_LABEL = 40
MAX_TEXT = 200

# How an entry's two ends relate after a wall-clock jump: a timer set in this run trusts the
# monotonic clock (its wall end moves with the jump); a reminder, or a timer restored from disk
# (its only reference is the wall end written before the restart), trusts the wall end.
MONOTONIC = "monotonic"
WALL = "wall"


class TimerError(ValueError):
    """A request that cannot be done; the message says why in words the model can repeat."""


@runtime_checkable
class Ringer(Protocol):
    """What rings (the Assistant's RINGING state implements it)."""

    def ring(self, ring_id: str, kind: str, text: str) -> None:
        """Start ringing for ``ring_id`` (kind "timer" or "reminder"); ``text`` is said once."""

    def stop_ringing(self, source: str) -> bool:
        """Stop every ring; True if something was ringing."""


@dataclass(slots=True)
class Entry:
    """One timer or reminder. ``ends_at`` is Unix time (persisted), ``deadline`` monotonic (not)."""

    id: str
    kind: str
    label: str | None
    text: str
    duration_s: float
    set_at: float
    ends_at: float
    deadline: float
    anchor: str
    restored: bool = False  # loaded from disk at start (may have ended while the speaker was off)

    @property
    def name(self) -> str:
        """How it is spoken: "pasta timer", "10 minute timer", "reminder to put the bins out"."""
        if self.kind == REMINDER:
            return f"reminder: {self.text}"
        if self.label:
            return f"{self.label} timer"
        from .parse import format_duration

        return f"{format_duration(self.duration_s, adjective=True)} timer"

    def to_json(self) -> dict[str, Any]:
        """The persisted form (no monotonic deadline: it means nothing after a restart)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "text": self.text,
            "duration_s": round(self.duration_s, 3),
            "set_at": round(self.set_at, 3),
            "ends_at": round(self.ends_at, 3),
        }

    @classmethod
    def from_json(cls, data: Any, *, deadline: float) -> Entry:
        """Rebuild a persisted entry; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")

        def text(key: str, optional: bool = False) -> Any:
            value = data.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                raise ValueError(f"'{key}' must be a string, got {value!r}")
            return value

        def number(key: str) -> float:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"'{key}' must be a number, got {value!r}")
            return float(value)

        kind = text("kind")
        if kind not in (TIMER, REMINDER):
            raise ValueError(f"'kind' must be 'timer' or 'reminder', got {kind!r}")
        entry_id = text("id")
        if not entry_id:
            raise ValueError("'id' is empty")
        return cls(
            id=entry_id,
            kind=kind,
            label=text("label", optional=True) or None,
            text=text("text", optional=True) or "",
            duration_s=number("duration_s"),
            set_at=number("set_at"),
            ends_at=number("ends_at"),
            deadline=deadline,
            anchor=WALL,
            restored=True,
        )


@dataclass(frozen=True, slots=True)
class TimerEvent(Event):
    """Something happened to a timer or reminder.

    ``event_type``: timer_set, reminder_set, timer_adjusted, timer_cancelled, timer_finished,
    reminder_due or timer_missed; ``item`` is the entry as published (see TimerService.describe).
    """

    event_type: str
    item: dict[str, Any]
    source: str = ""


__all__ = [
    "MAX_DURATION_S",
    "MAX_ENTRIES",
    "MIN_DURATION_S",
    "MONOTONIC",
    "REMINDER",
    "TIMER",
    "WALL",
    "Entry",
    "Ringer",
    "TimerError",
    "TimerEvent",
]
