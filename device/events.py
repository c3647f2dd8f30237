"""The assistant's states and the events that LEDs, cues, MQTT and logs subscribe to.

Everything here lives on the one asyncio event loop. Threads never publish directly: they use
:meth:`EventBus.publish_threadsafe`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_LOG = logging.getLogger(__name__)


class State(str, enum.Enum):
    """What the speaker is doing (DESIGN.md section 1)."""

    IDLE = "idle"  # listening for the wake word
    LISTENING = "listening"  # session open, the user's turn
    THINKING = "thinking"  # user turn ended, waiting for the reply
    SPEAKING = "speaking"  # reply audio playing
    FOLLOW_UP = "follow_up"  # session open, waiting for more without the wake word
    MUTED = "muted"  # no microphone audio leaves the capture layer
    ERROR = "error"  # something failed; back to idle shortly
    RINGING = "ringing"  # a timer or reminder is due: the alarm sounds until stopped
    DISABLED = "disabled"  # the assistant is switched off: no wake word, LEDs off (timers still ring)


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events; ``t`` is time.monotonic() when it was made."""

    t: float = field(default_factory=time.monotonic, kw_only=True)

    @property
    def kind(self) -> str:
        return _KINDS.get(type(self), type(self).__name__)


@dataclass(frozen=True, slots=True)
class StateChanged(Event):
    old: State
    new: State
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WakeDetected(Event):
    model: str
    score: float


@dataclass(frozen=True, slots=True)
class Transcript(Event):
    role: str  # "user" or "assistant"
    text: str


@dataclass(frozen=True, slots=True)
class ToolCalled(Event):
    name: str
    arguments: dict[str, Any]
    result: dict[str, Any]
    duration_s: float


@dataclass(frozen=True, slots=True)
class ConversationEnded(Event):
    reason: str
    usage: dict[str, Any]  # summed response.done usage of the conversation


@dataclass(frozen=True, slots=True)
class ErrorEvent(Event):
    where: str  # "token", "connect", "session", "audio", ...
    message: str


@dataclass(frozen=True, slots=True)
class MuteChanged(Event):
    muted: bool
    source: str  # "button", "mqtt", "startup", ...


@dataclass(frozen=True, slots=True)
class EnabledChanged(Event):
    enabled: bool
    source: str


@dataclass(frozen=True, slots=True)
class DndChanged(Event):
    """Do not disturb: the speaker's output is quiet (no cues; announcements held or dropped)."""

    on: bool
    source: str


@dataclass(frozen=True, slots=True)
class VolumeChanged(Event):
    volume: int  # 0-100
    source: str


@dataclass(frozen=True, slots=True)
class AnnouncementEvent(Event):
    text: str
    status: str  # "queued", "spoken", "dropped"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ResponseEvent(Event):
    """A model response was created, or is done (with its status and token usage)."""

    response_id: str
    status: str  # "created", or response.done's: completed, cancelled, failed, incomplete
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RingStarted(Event):
    """A timer or reminder rings (several due at once ring together)."""

    ring_id: str
    kind: str = field()  # "timer" or "reminder" (here ``kind`` is the ring's, not the event's)
    text: str = field()


@dataclass(frozen=True, slots=True)
class RingStopped(Event):
    ring_ids: tuple[str, ...]
    source: str  # "talk button", "mute button", "wake word", "mqtt", "timeout", ...


@dataclass(frozen=True, slots=True)
class AudioHealth(Event):
    """How the microphone's processing fares (:mod:`device.audio.health`)."""

    processing: float | None  # share of real time that processing the audio takes (None: not measured yet)
    stages: tuple[tuple[str, float], ...]  # (stage, its share) of those that cost anything
    echo: str  # the echo canceller: "off", "learning" or "settled"
    echo_delay_ms: float | None  # how long after the reference the echo arrives (None: not found yet)
    summary: str  # the whole, for people


_KINDS: dict[type, str] = {
    StateChanged: "state",
    WakeDetected: "wake_detected",
    Transcript: "transcript",
    ToolCalled: "tool_call",
    ConversationEnded: "conversation_ended",
    ErrorEvent: "error",
    MuteChanged: "mute",
    VolumeChanged: "volume",
    EnabledChanged: "enabled",
    DndChanged: "dnd",
    AnnouncementEvent: "announcement",
    ResponseEvent: "response",
    RingStarted: "ring_started",
    RingStopped: "ring_stopped",
    AudioHealth: "audio_health",
}

Subscriber = Callable[[Event], Any]


class EventBus:
    """Fan-out of events to subscribers on the event loop.

    A subscriber is a plain callable or a coroutine function; a failing subscriber is logged and
    never stops the others.
    """

    def __init__(self) -> None:
        self._subs: list[tuple[type[Event], Subscriber]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def subscribe(self, callback: Subscriber, kind: type[Event] = Event) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of type ``kind``; returns an unsubscribe."""
        entry = (kind, callback)
        self._subs.append(entry)
        return lambda: self._subs.remove(entry) if entry in self._subs else None

    def publish(self, event: Event) -> None:
        """Deliver ``event`` now (call on the loop)."""
        for kind, callback in list(self._subs):
            if not isinstance(event, kind):
                continue
            try:
                result = callback(event)
                if asyncio.iscoroutine(result):
                    task = asyncio.get_running_loop().create_task(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                _LOG.exception("event subscriber %r failed on %s", callback, _KINDS.get(type(event), type(event).__name__))

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOG.error("event subscriber task failed", exc_info=task.exception())

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the loop so threads can publish with :meth:`publish_threadsafe`."""
        self._loop = loop

    def publish_threadsafe(self, event: Event) -> None:
        """Hand ``event`` to the loop from another thread."""
        if self._loop is None:
            raise RuntimeError("EventBus.bind(loop) was not called")
        self._loop.call_soon_threadsafe(self.publish, event)
