"""Timers and reminders on disk: ``<state dir>/timers.json``, written atomically.

The file holds each entry's wall-clock end (Unix time). A corrupt file is kept as
``timers.json.bad`` (nothing is lost) and the speaker starts without timers; a bad entry is
logged and skipped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from device.state_store import remove_stale_temps, write_atomic

from .model import Entry

_LOG = logging.getLogger(__name__)

FILENAME = "timers.json"
VERSION = 1


class TimerStore:
    """Loads and saves the entries as JSON in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / FILENAME

    def load(self, deadline_of: Any) -> list[Entry]:
        """The saved entries; ``deadline_of(ends_at)`` gives each its monotonic deadline."""
        remove_stale_temps(self.path)
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            _LOG.error("cannot read saved timers %s (%s: %s); starting without them", self.path, type(exc).__name__, exc)
            return []
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise ValueError("expected an object with an 'items' list")
        except ValueError as exc:
            bad = self.path.with_name(FILENAME + ".bad")
            try:
                os.replace(self.path, bad)
            except OSError:
                bad = self.path
            _LOG.error("saved timers %s are corrupt (%s); kept as %s, starting without them", self.path, exc, bad)
            return []
        entries: list[Entry] = []
        seen: set[str] = set()
        for i, item in enumerate(data["items"]):
            try:
                ends_at = item.get("ends_at") if isinstance(item, dict) else None
                entry = Entry.from_json(item, deadline=deadline_of(ends_at) if isinstance(ends_at, (int, float)) else 0.0)
            except ValueError as exc:
                _LOG.error("saved timers %s: item %d skipped: %s", self.path, i, exc)
                continue
            if entry.id in seen:
                _LOG.error("saved timers %s: item %d skipped: id %r is used twice", self.path, i, entry.id)
                continue
            seen.add(entry.id)
            entries.append(entry)
        return entries

    def save(self, entries: list[Entry]) -> bool:
        """Write all entries atomically; False (logged) if the disk refused."""
        payload = json.dumps({"version": VERSION, "items": [e.to_json() for e in entries]}, ensure_ascii=False) + "\n"
        try:
            write_atomic(self.path, payload)
        except OSError as exc:
            _LOG.error("cannot save timers to %s (%s: %s); they hold until restart", self.path, type(exc).__name__, exc)
            return False
        return True


__all__ = ["FILENAME", "TimerStore"]
