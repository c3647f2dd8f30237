"""What people and models say -> seconds and instants, and back into words.

Durations: a number of seconds, or a string: "90", "90 seconds", "10m", "1h30m", "1 hour 30 minutes",
"1.5 h", ISO 8601 "PT10M"; a leading sign for adjustments ("-2m", "+5 minutes").
Times of day: "7" (the next 07:00), "07:00", "7:30 pm", "19:15", "noon", "midnight", or an ISO
date-time ("2026-11-28T07:00", with or without an offset).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone, tzinfo

from .model import MAX_DURATION_S, MIN_DURATION_S, TimerError

_UNITS = {
    "d": 86400, "day": 86400, "days": 86400,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
}
_NUM = r"\d+(?:\.\d+)?|\.\d+"
_PART = re.compile(rf"\s*({_NUM})\s*([a-z]+)\s*(?:,|and)?", re.IGNORECASE)
_ISO = re.compile(
    rf"P(?:({_NUM})D)?(?:T(?:({_NUM})H)?(?:({_NUM})M)?(?:({_NUM})S)?)?", re.IGNORECASE
)
_CLOCK = re.compile(r"(\d{1,2})(?:[:.h](\d{2}))?(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?", re.IGNORECASE)

DURATION_HELP = 'seconds as a number, or a string like "10m", "1h30m", "90 seconds" or "PT10M"'


def parse_signed_duration(value: object) -> float:
    """Seconds (may be negative) from a number or a duration string; TimerError if unreadable."""
    if isinstance(value, bool) or value is None:
        raise TimerError(f"duration must be {DURATION_HELP}, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise TimerError(f"duration must be a finite number of seconds, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise TimerError(f"duration must be {DURATION_HELP}, got {value!r}")
    text = value.strip().lower()
    sign = 1.0
    if text[:1] in "+-" and text:
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:].strip()
    if not text:
        raise TimerError(f"duration is empty; give {DURATION_HELP}")
    if re.fullmatch(_NUM, text):
        return sign * float(text)
    iso = _ISO.fullmatch(text)
    if iso and any(iso.groups()):
        d, h, m, s = (float(g) if g else 0.0 for g in iso.groups())
        return sign * (d * 86400 + h * 3600 + m * 60 + s)
    total, pos, parts = 0.0, 0, 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        unit = _UNITS.get(match.group(2).lower())
        if unit is None:
            raise TimerError(f"unknown unit {match.group(2)!r} in duration {value!r}; use hours, minutes or seconds")
        total += float(match.group(1)) * unit
        pos = match.end()
        parts += 1
    if parts == 0 or text[pos:].strip():
        raise TimerError(f"cannot read the duration {value!r}; give {DURATION_HELP}")
    return sign * total


def parse_duration(value: object) -> float:
    """A timer length in seconds, 1 s to 24 h; TimerError naming what is wrong."""
    seconds = parse_signed_duration(value)
    if seconds < 0:
        raise TimerError(f"a timer cannot run for a negative time ({value!r})")
    if seconds == 0:
        raise TimerError("a timer needs a duration of at least 1 second, got 0")
    if seconds < MIN_DURATION_S:
        raise TimerError(f"a timer must run at least 1 second, got {format_duration(seconds)}")
    if seconds > MAX_DURATION_S:
        raise TimerError(f"{format_duration(seconds)} is longer than the 24-hour limit for a timer; use a reminder instead")
    return seconds


def parse_time_of_day(value: object, now: datetime, zone: tzinfo) -> datetime:
    """The next moment matching ``value`` after ``now`` (aware), in ``zone``; TimerError if unreadable.

    "7" and "07:00" are 07:00 (24-hour clock unless "am"/"pm" is given); a time already past today
    is tomorrow's. An ISO date-time without an offset is read in ``zone``. A wall time that does not
    exist on a DST spring-forward day (02:30 in Europe) is the same moment an hour later on the clock.
    """
    if not isinstance(value, str) or not value.strip():
        raise TimerError(f'at must be a time of day like "07:00", "7:30 pm" or an ISO date-time, got {value!r}')
    text = value.strip().lower()
    now = now.astimezone(zone)
    if re.match(r"\d{4}-\d{2}-\d{2}", text):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise TimerError(f"cannot read the date-time {value!r}; use ISO 8601 like 2026-11-28T07:00") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone)
        when = when.astimezone(zone)
        if when <= now:
            raise TimerError(f"{value} is in the past (it is now {now:%Y-%m-%d %H:%M} here)")
        return when
    words = {"noon": (12, 0, 0), "midday": (12, 0, 0), "midnight": (0, 0, 0)}
    if text in words:
        hour, minute, second = words[text]
    else:
        text = text.removeprefix("at ").strip()
        match = _CLOCK.fullmatch(text)
        if not match:
            raise TimerError(f'cannot read the time {value!r}; use a time of day like "07:00", "7:30 pm" or "19:15"')
        hour = int(match.group(1))
        minute = int(match.group(2) or 0)
        second = int(match.group(3) or 0)
        meridiem = (match.group(4) or "").replace(".", "")
        if meridiem:
            if not 1 <= hour <= 12:
                raise TimerError(f"{value!r}: with am/pm the hour must be 1-12")
            hour = hour % 12 + (12 if meridiem == "pm" else 0)
        if hour > 23 or minute > 59 or second > 59:
            raise TimerError(f"{value!r} is not a time of day")
    day = now.date()
    for _ in range(3):
        candidate = datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=zone)
        # Normalise a time in a DST gap to the moment it denotes, as the clock on the wall shows it.
        candidate = candidate.astimezone(timezone.utc).astimezone(zone)
        if candidate > now:
            return candidate
        day += timedelta(days=1)
    raise TimerError(f"cannot find the next {value!r}")  # pragma: no cover - a day always has the time


def format_duration(seconds: float, *, adjective: bool = False) -> str:
    """ "10 minutes", "1 hour 30 minutes", "45 seconds"; ``adjective``: "10 minute" (as in "10 minute timer")."""
    if 0 < seconds < 1:
        return f"{seconds:g} seconds"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    for amount, unit in ((hours, "hour"), (minutes, "minute"), (secs, "second")):
        if amount:
            plural = "s" if amount != 1 and not adjective else ""
            parts.append(f"{amount} {unit}{plural}")
    if not parts:
        return "0 seconds" if not adjective else "0 second"
    return " ".join(parts)


def format_clock(ts: float, zone: tzinfo, now: float) -> str:
    """When ``ts`` is, as said in ``zone``: "18:42", "tomorrow at 07:00", or "Sat 28 Nov at 07:00"."""
    when = datetime.fromtimestamp(ts, zone)
    today = datetime.fromtimestamp(now, zone).date()
    if when.date() == today:
        return f"{when:%H:%M}"
    if when.date() == today + timedelta(days=1):
        return f"tomorrow at {when:%H:%M}"
    return f"{when:%a %d %b} at {when:%H:%M}"


def ends_phrase(ts: float, zone: tzinfo, now: float) -> str:
    """``format_clock`` as a phrase after a verb: "at 18:42", "tomorrow at 07:00", "on Sat 28 Nov at 07:00"."""
    text = format_clock(ts, zone, now)
    if text[0].isdigit():
        return f"at {text}"
    return text if text.startswith("tomorrow") else f"on {text}"


def iso_utc(ts: float) -> str:
    """Unix time as ISO 8601 UTC with an explicit offset (what HA's timestamp sensors need)."""
    return datetime.fromtimestamp(round(ts), timezone.utc).isoformat()


__all__ = [
    "DURATION_HELP",
    "ends_phrase",
    "format_clock",
    "format_duration",
    "iso_utc",
    "parse_duration",
    "parse_signed_duration",
    "parse_time_of_day",
]
