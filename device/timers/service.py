"""The timer service: owns the timers and reminders on the event loop, rings them on time.

One asyncio timer handle holds the next deadline (``loop.call_later``), never a fast poll. Timers
count down on the monotonic clock; each also has a wall-clock end, persisted, and re-derived when a
wall-clock jump is noticed (an NTP step at boot, a hand-set clock). Reminders are wall-clock: their
monotonic deadline is re-derived after a jump. While anything is pending the service also wakes every
``JUMP_CHECK_S`` to notice jumps; a DST change is no jump (Unix time is continuous across it).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

from device.config import Settings
from device.events import EventBus

from .clock import Clock, SystemClock, local_zone
from .model import (
    MAX_DURATION_S,
    MAX_ENTRIES,
    MAX_LABEL,
    MAX_REMINDER_AHEAD_S,
    MAX_TEXT,
    MIN_DURATION_S,
    MONOTONIC,
    REMINDER,
    TIMER,
    WALL,
    Entry,
    Ringer,
    TimerError,
    TimerEvent,
)
from .parse import ends_phrase, format_clock, format_duration, iso_utc
from .store import TimerStore

_LOG = logging.getLogger("speaker.timers")

JUMP_THRESHOLD_S = 2.0  # wall minus monotonic moving more than this is a clock step, not drift
JUMP_CHECK_S = 30.0
LATE_S = 5.0  # a ring later than this (restored after a restart) says how long ago it ended


class TimerService:
    """Timers and reminders of one speaker."""

    def __init__(
        self,
        *,
        store: TimerStore,
        bus: EventBus,
        ringer: Ringer,
        zone: tzinfo,
        missed_grace_s: float = 600.0,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.ringer = ringer
        self.zone = zone
        self.missed_grace_s = missed_grace_s
        self.clock: Clock = clock or SystemClock()
        self._entries: dict[str, Entry] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._offset = 0.0  # wall - monotonic when last looked
        self._up_since = 0.0  # wall time of start, moved with clock jumps: earlier ends were missed while down
        self._listeners: list[Callable[[], None]] = []
        self._started = False

    @classmethod
    def for_settings(cls, settings: Settings, *, bus: EventBus, ringer: Ringer, clock: Clock | None = None) -> TimerService:
        """The service with the state directory, time zone and grace period of ``settings``."""
        return cls(
            store=TimerStore(settings.state_dir),
            bus=bus,
            ringer=ringer,
            zone=local_zone(settings.device.timezone),
            missed_grace_s=float(settings.timers.missed_grace_s),
            clock=clock,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the saved entries and schedule them; ones that ended while the speaker was off
        ring now (if within the grace period) or are reported as missed."""
        self._loop = asyncio.get_running_loop()
        now_m, now_w = self.clock.monotonic(), self.clock.time()
        self._offset = now_w - now_m
        self._up_since = now_w
        for entry in self.store.load(lambda ends_at: now_m + (ends_at - now_w)):
            self._entries[entry.id] = entry
        self._started = True
        if self._entries:
            _LOG.info("restored %d timer(s)/reminder(s) from %s", len(self._entries), self.store.path)
        self.tick()

    async def stop(self) -> None:
        """Cancel the scheduled wake-up (entries stay on disk)."""
        self._started = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever the set of entries or their ends change."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ queries

    def entries(self) -> list[Entry]:
        """Every pending entry, soonest first."""
        return sorted(self._entries.values(), key=lambda e: (e.ends_at, e.id))

    def remaining(self, entry: Entry) -> float:
        """Seconds until ``entry`` ends."""
        if entry.anchor == MONOTONIC:
            return max(0.0, entry.deadline - self.clock.monotonic())
        return max(0.0, entry.ends_at - self.clock.time())

    def describe(self, entry: Entry) -> dict[str, Any]:
        """An entry as the model and MQTT see it."""
        now = self.clock.time()
        out: dict[str, Any] = {"id": entry.id, "kind": entry.kind}
        if entry.kind == TIMER:
            out["label"] = entry.label
            out["duration"] = format_duration(entry.duration_s)
            out["duration_s"] = round(entry.duration_s)
        else:
            out["text"] = entry.text
        out["remaining"] = format_duration(self.remaining(entry))
        out["ends_at"] = format_clock(entry.ends_at, self.zone, now)
        out["ends_at_iso"] = datetime.fromtimestamp(round(entry.ends_at), self.zone).isoformat()
        return out

    def _event_item(self, entry: Entry) -> dict[str, Any]:
        return {**self.describe(entry), "ends_at_ts": round(entry.ends_at, 3)}

    def published(self) -> list[dict[str, Any]]:
        """The retained MQTT list: stable fields only (no ticking 'remaining')."""
        out = []
        for e in self.entries():
            item: dict[str, Any] = {"id": e.id, "kind": e.kind, "label": e.label, "text": e.text or None,
                                    "duration_s": round(e.duration_s), "set_at": iso_utc(e.set_at),
                                    "ends_at": iso_utc(e.ends_at)}
            out.append(item)
        return out

    # ------------------------------------------------------------------ changes

    def set_timer(self, duration_s: float, label: str | None = None, *, source: str = "voice") -> Entry:
        """Start a timer of ``duration_s`` (1 s to 24 h) with an optional unique label."""
        if not MIN_DURATION_S <= duration_s <= MAX_DURATION_S:
            raise TimerError(f"a timer runs from 1 second to 24 hours, got {format_duration(duration_s)}")
        label = clean_label(label)
        if label is not None:
            for other in self._entries.values():
                if other.kind == TIMER and other.label and other.label.casefold() == label.casefold():
                    raise TimerError(
                        f"a timer called {label!r} is already running (ends "
                        f"{ends_phrase(other.ends_at, self.zone, self.clock.time())}); adjust it or choose another name"
                    )
        self._check_room()
        now_m, now_w = self.clock.monotonic(), self.clock.time()
        entry = Entry(id=_new_id(), kind=TIMER, label=label, text="", duration_s=float(duration_s),
                      set_at=now_w, ends_at=now_w + duration_s, deadline=now_m + duration_s, anchor=MONOTONIC)
        self._entries[entry.id] = entry
        self._changed("timer_set", entry, source)
        _LOG.info("timer set: %s, %s, ends %s (%s)", entry.name, format_duration(duration_s),
                  ends_phrase(entry.ends_at, self.zone, now_w), source)
        return entry

    def set_reminder(self, when: datetime, text: str, *, source: str = "voice") -> Entry:
        """Remind of ``text`` at the aware datetime ``when``."""
        if not isinstance(text, str) or not " ".join(text.split()):
            raise TimerError("a reminder needs the text to say, e.g. 'put the bins out'")
        text = " ".join(text.split())
        if len(text) > MAX_TEXT:
            raise TimerError(f"the reminder text is {len(text)} characters; keep it under {MAX_TEXT}")
        now_m, now_w = self.clock.monotonic(), self.clock.time()
        due = when.timestamp()
        if due <= now_w:
            raise TimerError(f"{when:%Y-%m-%d %H:%M} is in the past")
        if due - now_w > MAX_REMINDER_AHEAD_S:
            raise TimerError("a reminder can be at most a year ahead")
        self._check_room()
        entry = Entry(id=_new_id(), kind=REMINDER, label=None, text=text, duration_s=due - now_w,
                      set_at=now_w, ends_at=due, deadline=now_m + (due - now_w), anchor=WALL)
        self._entries[entry.id] = entry
        self._changed("reminder_set", entry, source)
        _LOG.info("reminder set %s: %s (%s)", ends_phrase(due, self.zone, now_w), text, source)
        return entry

    def cancel(self, label: str | None = None, *, all_timers: bool = False, source: str = "voice") -> list[Entry]:
        """Cancel the timer or reminder ``label`` names, or every timer with ``all_timers``."""
        if all_timers:
            gone = [e for e in self.entries() if e.kind == TIMER]
            if not gone:
                raise TimerError("no timer is running")
        else:
            gone = [self.find(label, kinds=(TIMER, REMINDER))]
        for entry in gone:
            del self._entries[entry.id]
            self._changed("timer_cancelled", entry, source, save=False)
            _LOG.info("%s cancelled (%s)", entry.name, source)
        self._save_and_reschedule()
        return gone

    def adjust(self, label: str | None, delta_s: float, *, source: str = "voice") -> Entry:
        """Add ``delta_s`` (negative: take away) to the timer ``label`` names."""
        entry = self.find(label, kinds=(TIMER,))
        if delta_s == 0:
            raise TimerError("the change is 0; say how much to add or take away, e.g. '+5m' or '-2m'")
        left = self.remaining(entry) + delta_s
        if left < MIN_DURATION_S:
            raise TimerError(
                f"the {entry.name} has {format_duration(self.remaining(entry))} left; taking away "
                f"{format_duration(-delta_s)} would end it: cancel it instead"
            )
        if left > MAX_DURATION_S:
            raise TimerError(f"that would leave {format_duration(left)}, more than the 24-hour limit")
        entry.deadline += delta_s
        entry.ends_at += delta_s
        entry.duration_s += delta_s
        self._changed("timer_adjusted", entry, source)
        _LOG.info("%s adjusted by %+.0f s: ends %s", entry.name, delta_s,
                  ends_phrase(entry.ends_at, self.zone, self.clock.time()))
        return entry

    def find(self, label: str | None, *, kinds: tuple[str, ...] = (TIMER,)) -> Entry:
        """The one entry ``label`` names (exact label, then id, then a unique partial match)."""
        cands = [e for e in self.entries() if e.kind in kinds]
        what = "timer" if kinds == (TIMER,) else "timer or reminder"
        if not cands:
            raise TimerError(f"no {what} is running")
        key = (clean_label(label) or "").casefold()
        if not key:
            if len(cands) == 1:
                return cands[0]
            raise TimerError(f"there are {len(cands)} timers and reminders ({_names(cands)}): say which one")
        for test in (
            lambda e: (e.label or "").casefold() == key or e.id == key,
            lambda e: e.text.casefold() == key,
            lambda e: key in e.name.casefold(),
        ):
            hits = [e for e in cands if test(e)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise TimerError(f"{label!r} could mean {_names(hits)}: say which one")
        raise TimerError(f"there is no {what} called {label!r}; running: {_names(cands)}")

    # ------------------------------------------------------------------ the clock

    def tick(self) -> None:
        """Ring whatever is due, notice wall-clock jumps, schedule the next wake-up.

        The scheduled call runs this; tests with a fake clock call it after moving the clock.
        """
        self._handle = None
        if not self._started:
            return
        now_m, now_w = self.clock.monotonic(), self.clock.time()
        self._check_jump(now_m, now_w)
        due = sorted((e for e in self._entries.values() if e.deadline <= now_m + 0.0005), key=lambda e: e.deadline)
        for entry in due:
            del self._entries[entry.id]
            late = now_w - entry.ends_at if entry.anchor == WALL else now_m - entry.deadline
            self._fire(entry, late)
        if due:
            self.store.save(self.entries())
            self._notify()
        self._reschedule()

    def _fire(self, entry: Entry, late: float) -> None:
        if entry.restored and entry.ends_at < self._up_since and late > self.missed_grace_s:
            _LOG.warning("%s ended %s ago while the speaker was off: missed", entry.name, format_duration(late))
            self.bus.publish(TimerEvent("timer_missed", {**self._event_item(entry), "late_s": round(late)}, "clock"))
            return
        if entry.kind == TIMER:
            name = entry.name
            text = f"The {name} is done." if late < LATE_S else f"The {name} ended {format_duration(late)} ago."
            event = "timer_finished"
        else:
            text = f"Reminder: {entry.text}"
            if late >= LATE_S:
                text += f" (this was due {format_duration(late)} ago)"
            event = "reminder_due"
        _LOG.info("%s: %s ringing (%s late)", event, entry.name, f"{late * 1000:.0f} ms")
        self.bus.publish(TimerEvent(event, {**self._event_item(entry), "text": text if entry.kind == TIMER else entry.text,
                                            "late_s": round(max(0.0, late), 3)}, "clock"))
        try:
            self.ringer.ring(entry.id, entry.kind, text)
        except Exception:
            _LOG.exception("ringing %s failed", entry.name)

    def _check_jump(self, now_m: float, now_w: float) -> None:
        offset = now_w - now_m
        jump = offset - self._offset
        self._offset = offset
        if abs(jump) < JUMP_THRESHOLD_S:
            return
        self._up_since += jump
        _LOG.warning("wall clock jumped by %+.1f s: timers keep counting down, wall-clock ends re-derived", jump)
        for entry in self._entries.values():
            if entry.anchor == MONOTONIC:
                entry.ends_at = now_w + (entry.deadline - now_m)
            else:
                entry.deadline = now_m + (entry.ends_at - now_w)
        if self._entries:
            self.store.save(self.entries())
            self._notify()

    def _reschedule(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._started or not self._entries or self._loop is None:
            return
        now_m = self.clock.monotonic()
        wait = min(e.deadline for e in self._entries.values()) - now_m
        self._handle = self._loop.call_later(max(0.0, min(wait, JUMP_CHECK_S)), self.tick)

    # ------------------------------------------------------------------ helpers

    def _check_room(self) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            raise TimerError(f"{MAX_ENTRIES} timers and reminders are running already; cancel one first")

    def _changed(self, event_type: str, entry: Entry, source: str, *, save: bool = True) -> None:
        self.bus.publish(TimerEvent(event_type, self._event_item(entry), source))
        if save:
            self._save_and_reschedule()

    def _save_and_reschedule(self) -> None:
        self.store.save(self.entries())
        self._reschedule()
        self._notify()

    def _notify(self) -> None:
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                _LOG.exception("timer listener failed")


def clean_label(label: object) -> str | None:
    """A label as stored: single spaces, without a leading "the" or a trailing "timer"; None if empty."""
    if label is None:
        return None
    if not isinstance(label, str):
        raise TimerError(f"a label must be text, got {label!r}")
    words = " ".join(label.split())
    if words.casefold().startswith("the "):
        words = words[4:]
    if words.casefold() == "timer":
        words = ""
    elif words.casefold().endswith(" timer"):
        words = words[:-6]
    if len(words) > MAX_LABEL:
        raise TimerError(f"a label can be at most {MAX_LABEL} characters")
    return words or None


def _names(entries: list[Entry]) -> str:
    return ", ".join(e.name for e in entries)


def _new_id() -> str:
    return uuid.uuid4().hex[:8]


__all__ = ["JUMP_CHECK_S", "TimerService", "clean_label"]
