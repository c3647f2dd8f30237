"""The two clocks timers need and the device's time zone.

Timers count down on the monotonic clock (an NTP step or a DST change cannot move them); their
wall-clock end is what survives a restart. Reminders are wall-clock by nature, in the device's
time zone (``[device] timezone`` or the system's), with zoneinfo's DST rules.
"""

from __future__ import annotations

import logging
import os
import time
import zoneinfo
from datetime import tzinfo
from pathlib import Path
from typing import Protocol

_LOG = logging.getLogger(__name__)


class Clock(Protocol):
    """Monotonic seconds and Unix wall-clock seconds (tests pass a fake)."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The real clocks: ``time.monotonic`` (what asyncio's loop uses) and ``time.time``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


def local_zone(name: str = "") -> tzinfo:
    """The zone called ``name``, else the system's (``TZ``, then /etc/localtime), else UTC.

    Always a zoneinfo zone with DST rules, never a fixed offset.
    """
    if name:
        return zoneinfo.ZoneInfo(name)
    tz_env = os.environ.get("TZ", "").lstrip(":")
    if tz_env:
        try:
            return zoneinfo.ZoneInfo(tz_env)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            _LOG.warning("TZ=%r is not a known time zone; using /etc/localtime", tz_env)
    localtime = Path("/etc/localtime")
    try:
        target = localtime.resolve()
        parts = target.parts
        if "zoneinfo" in parts:
            key = "/".join(parts[parts.index("zoneinfo") + 1 :])
            return zoneinfo.ZoneInfo(key)
        with localtime.open("rb") as fh:
            return zoneinfo.ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError, zoneinfo.ZoneInfoNotFoundError):
        _LOG.warning("cannot read the system time zone from /etc/localtime; using UTC")
        return zoneinfo.ZoneInfo("UTC")


__all__ = ["Clock", "SystemClock", "local_zone"]
