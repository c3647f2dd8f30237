"""Test doubles for the timer service: a clock the test moves, and a ringer that records rings."""

from __future__ import annotations

from datetime import datetime


class FakeClock:
    """Monotonic and wall clocks that move only when the test says so."""

    def __init__(self, wall: datetime | float, mono: float = 1000.0) -> None:
        self.wall = wall.timestamp() if isinstance(wall, datetime) else float(wall)
        self.mono = mono

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        """Time passes: both clocks move."""
        self.mono += seconds
        self.wall += seconds

    def step_wall(self, seconds: float) -> None:
        """The wall clock is set (NTP step, a person): only it moves."""
        self.wall += seconds


class FakeRinger:
    """Records ring() and stop_ringing() calls as the Assistant's RINGING state would receive them."""

    def __init__(self) -> None:
        self.rings: list[tuple[str, str, str]] = []
        self.stops: list[str] = []
        self.ringing: set[str] = set()

    def ring(self, ring_id: str, kind: str, text: str) -> None:
        self.rings.append((ring_id, kind, text))
        self.ringing.add(ring_id)

    def stop_ringing(self, source: str) -> bool:
        self.stops.append(source)
        was = bool(self.ringing)
        self.ringing.clear()
        return was
