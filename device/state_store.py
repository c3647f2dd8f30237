"""What survives a restart: the mute state and the volume, as a small JSON file.

The file lives in :attr:`Settings.state_dir` (systemd's ``StateDirectory=``). Writes are atomic
(temporary file, fsync, rename), so a power cut leaves either the old or the new state, never a
torn file. A missing, unreadable or corrupt file is logged and the defaults are used: a bad state
file must never keep the speaker from starting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings

_LOG = logging.getLogger(__name__)

FILENAME = "state.json"


@dataclass(frozen=True, slots=True)
class SavedState:
    """The persisted device state."""

    muted: bool = False
    volume: int = 70  # 0-100
    enabled: bool = True  # the assistant switched on (off: no wake word)
    dnd: bool = False  # do not disturb


class StateStore:
    """Loads and atomically saves :class:`SavedState` as ``<directory>/state.json``."""

    def __init__(self, directory: str | os.PathLike[str], *, default_volume: int = 70) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILENAME
        self.defaults = SavedState(muted=False, volume=max(0, min(100, int(default_volume))))
        self._current: SavedState | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> StateStore:
        """The store in ``settings.state_dir``, defaulting the volume to ``[audio] volume``."""
        return cls(settings.state_dir, default_volume=settings.audio.volume)

    @property
    def current(self) -> SavedState:
        """The last state loaded or saved (loads on first use)."""
        if self._current is None:
            return self.load()
        return self._current

    def load(self) -> SavedState:
        """Read the file; fields that are missing or invalid fall back to the defaults (logged)."""
        self._remove_stale_temps()
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            _LOG.info("no saved state at %s yet; using defaults (unmuted, volume %d)", self.path, self.defaults.volume)
            self._current = self.defaults
            return self._current
        except (OSError, UnicodeDecodeError) as exc:
            _LOG.warning("cannot read saved state %s (%s: %s); using defaults", self.path, type(exc).__name__, exc)
            self._current = self.defaults
            return self._current
        self._current = self._parse(raw)
        return self._current

    def _parse(self, raw: str) -> SavedState:
        try:
            data: Any = json.loads(raw)
        except json.JSONDecodeError as exc:
            _LOG.warning("saved state %s is corrupt (%s); using defaults", self.path, exc)
            return self.defaults
        if not isinstance(data, dict):
            _LOG.warning("saved state %s holds %s, expected a JSON object; using defaults", self.path, type(data).__name__)
            return self.defaults
        state = self.defaults
        muted = data.get("muted", state.muted)
        if isinstance(muted, bool):
            state = dataclasses.replace(state, muted=muted)
        else:
            _LOG.warning("saved state %s: 'muted' must be true or false, got %r; using %s", self.path, muted, state.muted)
        for key in ("enabled", "dnd"):
            flag = data.get(key, getattr(state, key))
            if isinstance(flag, bool):
                state = dataclasses.replace(state, **{key: flag})
            else:
                _LOG.warning("saved state %s: %r must be true or false, got %r; using %s", self.path, key, flag, getattr(state, key))
        volume = data.get("volume", state.volume)
        if isinstance(volume, int) and not isinstance(volume, bool) and 0 <= volume <= 100:
            state = dataclasses.replace(state, volume=volume)
        else:
            _LOG.warning("saved state %s: 'volume' must be an integer 0-100, got %r; using %d", self.path, volume, state.volume)
        return state

    def save(self, state: SavedState) -> bool:
        """Write ``state`` atomically; returns False (and logs why) if it could not be written."""
        payload = json.dumps({"muted": bool(state.muted), "volume": int(state.volume), "enabled": bool(state.enabled),
                              "dnd": bool(state.dnd)}, indent=None) + "\n"
        try:
            write_atomic(self.path, payload)
        except OSError as exc:
            _LOG.warning("cannot save state to %s (%s: %s); the change holds until restart", self.path, type(exc).__name__, exc)
            return False
        self._current = state
        return True

    def update(self, *, muted: bool | None = None, volume: int | None = None, enabled: bool | None = None,
               dnd: bool | None = None) -> SavedState:
        """Change some fields of the current state and save; returns the new state."""
        state = self.current
        if muted is not None:
            state = dataclasses.replace(state, muted=bool(muted))
        if enabled is not None:
            state = dataclasses.replace(state, enabled=bool(enabled))
        if dnd is not None:
            state = dataclasses.replace(state, dnd=bool(dnd))
        if volume is not None:
            state = dataclasses.replace(state, volume=max(0, min(100, int(volume))))
        if state != self._current or not self.path.exists():
            self.save(state)
        self._current = state
        return state

    def _remove_stale_temps(self) -> None:
        remove_stale_temps(self.path)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temporary file, fsync, rename, fsync of the directory).

    A power cut leaves the old or the new content, never a torn file. Raises OSError.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files of :func:`write_atomic` left behind by a crash between write and rename."""
    with contextlib.suppress(OSError):
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


def _fsync_directory(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["FILENAME", "SavedState", "StateStore", "remove_stale_temps", "write_atomic"]
