"""What the conversation machine asks the runner to do: effects as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..events import Event
from .inputs import Input


@dataclass(frozen=True, slots=True)
class Effect:
    """Base of every effect."""


@dataclass(frozen=True, slots=True)
class Publish(Effect):
    event: Event


@dataclass(frozen=True, slots=True)
class Log(Effect):
    level: int
    message: str


@dataclass(frozen=True, slots=True)
class Cue(Effect):
    name: str


@dataclass(frozen=True, slots=True)
class StopPlayback(Effect):
    """Silence now: queued audio and the device buffer are dropped."""


@dataclass(frozen=True, slots=True)
class BeginReply(Effect):
    item_id: str


@dataclass(frozen=True, slots=True)
class PlayAudio(Effect):
    pcm24k: bytes


@dataclass(frozen=True, slots=True)
class Truncate(Effect):
    """Barge-in: read what of ``item_id`` was heard, silence the speaker, tell the server."""

    cid: int
    item_id: str | None
    why: str


@dataclass(frozen=True, slots=True)
class Send(Effect):
    cid: int
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Configure(Effect):
    """Send session.update (instructions rendered now, current tools)."""

    cid: int
    manual_turns: bool = False


@dataclass(frozen=True, slots=True)
class Prompt(Effect):
    """response.create with the rendered instructions plus ``text`` (the assistant speaks first)."""

    cid: int
    text: str


@dataclass(frozen=True, slots=True)
class UpdateTools(Effect):
    cid: int


@dataclass(frozen=True, slots=True)
class Claim(Effect):
    cid: int
    score: float


@dataclass(frozen=True, slots=True)
class Open(Effect):
    cid: int


@dataclass(frozen=True, slots=True)
class Close(Effect):
    cid: int


@dataclass(frozen=True, slots=True)
class CallTool(Effect):
    cid: int
    call_id: str
    name: str
    arguments: str
    response_id: str


@dataclass(frozen=True, slots=True)
class AwaitDrain(Effect):
    """Feed ReplyHeard(cid, turn) once the speaker has played what it was given."""

    cid: int
    turn: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Arm(Effect):
    """Feed ``fire`` at monotonic time ``at``; replaces a deadline of the same name."""

    name: str
    at: float
    fire: Input


@dataclass(frozen=True, slots=True)
class Disarm(Effect):
    name: str


@dataclass(frozen=True, slots=True)
class SetCaptureMuted(Effect):
    muted: bool


@dataclass(frozen=True, slots=True)
class ClearPreroll(Effect):
    pass


@dataclass(frozen=True, slots=True)
class ResetWake(Effect):
    pass


@dataclass(frozen=True, slots=True)
class Persist(Effect):
    """Save the microphone mute (and volume) for the next start."""
