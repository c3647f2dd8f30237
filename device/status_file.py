"""What the daemon is doing, for `speaker status`: a small JSON file in the state directory.

The daemon rewrites ``<state_dir>/status.json`` atomically (temporary file, rename) when its state
changes, an error happens or a conversation ends; `speaker status` reads it. Times are given on
both clocks: ``*_monotonic`` (CLOCK_MONOTONIC is system-wide on Linux, so a reader computes the
uptime and ages even after the wall clock jumped) and wall-clock seconds for people. No
transcripts and no secrets are written (error messages are secret-free by contract).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from . import events as ev

_LOG = logging.getLogger(__name__)

FILENAME = "status.json"


class StatusFile:
    """Subscribes to the event bus and keeps ``status.json`` up to date."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / FILENAME
        now_m, now_w = time.monotonic(), time.time()
        self.data: dict[str, Any] = {
            "pid": os.getpid(),
            "state": "starting",
            "state_since_monotonic": now_m,
            "started_monotonic": now_m,
            "started_wall": now_w,
            "conversations": 0,
            "errors": 0,
            "last_error": None,
            "last_conversation": None,
            "audio": None,
        }
        self._conv_start: float | None = None
        self._conv_wall: float | None = None
        self._tools = 0
        self._warned = False

    def attach(self, bus: ev.EventBus) -> None:
        bus.subscribe(self.on_event)
        self.write()

    def on_event(self, event: ev.Event) -> None:
        """Update the figures from one event; write the file when something a person sees changed."""
        d = self.data
        match event:
            case ev.StateChanged(old=old, new=new):
                if old is ev.State.IDLE and new is not ev.State.IDLE and new is not ev.State.MUTED and self._conv_start is None:
                    self._conv_start, self._conv_wall, self._tools = event.t, time.time(), 0
                if d["state"] == new.value:
                    return
                d["state"], d["state_since_monotonic"] = new.value, event.t
            case ev.ErrorEvent(where=where, message=message):
                d["errors"] += 1
                d["last_error"] = {"where": where, "message": message, "at_monotonic": event.t, "at_wall": time.time()}
            case ev.ToolCalled():
                self._tools += 1
                return
            case ev.AudioHealth(processing=processing, echo=echo, echo_delay_ms=delay, summary=summary):
                d["audio"] = {"processing": None if processing is None else round(processing, 3), "echo_canceller": echo,
                              "echo_delay_ms": None if delay is None else round(delay, 1), "summary": summary}
            case ev.ConversationEnded(reason=reason, usage=usage):
                start = self._conv_start if self._conv_start is not None else event.t
                d["conversations"] += 1
                d["last_conversation"] = {
                    "reason": reason,
                    "started_wall": self._conv_wall or time.time(),
                    "ended_monotonic": event.t,
                    "duration_s": round(max(0.0, event.t - start), 2),
                    "tool_calls": self._tools,
                    "tokens": _int(usage.get("total_tokens")),
                    "input_tokens": _int(usage.get("input_tokens")),
                    "output_tokens": _int(usage.get("output_tokens")),
                }
                self._conv_start = self._conv_wall = None
            case _:
                return
        self.write()

    def stopped(self) -> None:
        """The daemon is shutting down: say so, so a stale file is not read as running."""
        self.data["state"] = "stopped"
        self.data["state_since_monotonic"] = time.monotonic()
        self.write()

    def write(self) -> None:
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.data, fh)
            os.chmod(tmp, 0o640)
            os.replace(tmp, self.path)
            tmp = None
        except OSError as exc:
            if not self._warned:  # once: a read-only state directory must not flood the log
                _LOG.warning("cannot write %s (%s: %s); `speaker status` will not see this daemon", self.path, type(exc).__name__, exc)
                self._warned = True
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_status(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The status a daemon wrote to ``directory``; raises OSError or ValueError."""
    data = json.loads((Path(directory) / FILENAME).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{Path(directory) / FILENAME} does not hold a JSON object")
    return data


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs as another user (speaker): it exists
        return True
    return True


def describe(data: dict[str, Any], *, now: float | None = None) -> tuple[bool, list[str]]:
    """(running, lines for people) from a status dict."""
    now = time.monotonic() if now is None else now
    running = data.get("state") != "stopped" and pid_alive(data.get("pid"))
    state = str(data.get("state", "?")) if running else f"not running (last state: {data.get('state', '?')})"
    lines = [f"state:             {state}"]
    if running:
        lines.append(f"in this state for: {_ago(now - float(data.get('state_since_monotonic', now)))}")
        lines.append(f"uptime:            {_ago(now - float(data.get('started_monotonic', now)))} (pid {data.get('pid')})")
    lines.append(f"conversations:     {data.get('conversations', 0)}, errors: {data.get('errors', 0)}")
    err = data.get("last_error")
    if isinstance(err, dict):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(err.get("at_wall", 0))))
        lines.append(f"last error:        {err.get('where')}: {err.get('message')} ({when}, {_ago(now - float(err.get('at_monotonic', now)))} ago)")
    else:
        lines.append("last error:        none")
    conv = data.get("last_conversation")
    if isinstance(conv, dict):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(conv.get("started_wall", 0))))
        tokens = conv.get("tokens")
        lines.append(
            f"last conversation: {when}, {conv.get('duration_s')} s, ended: {conv.get('reason')}, "
            f"tool calls: {conv.get('tool_calls')}, tokens: {tokens if tokens is not None else '-'}"
        )
    else:
        lines.append("last conversation: none yet")
    audio = data.get("audio")
    if running and isinstance(audio, dict) and audio.get("summary"):
        lines.append(f"microphone:        {audio['summary']}")
    return running, lines


__all__ = ["FILENAME", "StatusFile", "describe", "read_status"]
