"""What the conversation machine reacts to: people, the device, the server and its own deadlines.

Device inputs apply to the speaker as a whole. Conversation inputs carry the ``cid`` of the
conversation they belong to; one that arrives after that conversation ended is stale and is
dropped by the machine (a reply after a barge-in, a tool result after the session closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..realtime.server_events import ServerEvent


@dataclass(frozen=True, slots=True)
class Input:
    """Base of every machine input."""


@dataclass(frozen=True, slots=True)
class Announcement:
    """A text to be spoken verbatim, queued behind any running conversation."""

    text: str
    chime: bool = True
    then_listen: bool = False


# ---- device inputs ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Start(Input):
    """The daemon starts; ``muted`` is the saved microphone mute."""

    muted: bool = False


@dataclass(frozen=True, slots=True)
class Shutdown(Input):
    pass


@dataclass(frozen=True, slots=True)
class Frame(Input):
    """A live microphone frame (24 kHz PCM16) for an open conversation. ``echo_settled`` is False
    while the echo canceller has heard too little of the speaker (since boot, or since the echo
    path changed) to be trusted with its echo."""

    pcm24k: bytes
    echo_settled: bool = True


@dataclass(frozen=True, slots=True)
class Wake(Input):
    """The wake word was detected; ``frames`` is the pre-roll from just before it (24 kHz)."""

    model: str
    score: float
    frames: tuple[bytes, ...] = ()
    claim_score: float = 0.0  # loudness score for the arbitration between speakers


@dataclass(frozen=True, slots=True)
class TalkPressed(Input):
    frames: tuple[bytes, ...] = ()  # pre-roll: people start talking while pressing


@dataclass(frozen=True, slots=True)
class TalkDown(Input):
    """Push-to-talk: the talk button went down (the person's turn starts)."""

    frames: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class TalkUp(Input):
    """Push-to-talk: the talk button was released (the turn is complete)."""


@dataclass(frozen=True, slots=True)
class StartConversation(Input):
    source: str
    prompt: str | None = None
    frames: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class StopSpeaking(Input):
    source: str


@dataclass(frozen=True, slots=True)
class StopConversation(Input):
    """Automations: stop a reply, or end the conversation, at once."""

    source: str


@dataclass(frozen=True, slots=True)
class RequestEnd(Input):
    """End after the current reply (the end_conversation tool)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Mute(Input):
    muted: bool
    source: str


@dataclass(frozen=True, slots=True)
class Enable(Input):
    """Switch the assistant on or off (distinct from the microphone's mute)."""

    enabled: bool
    source: str


@dataclass(frozen=True, slots=True)
class Dnd(Input):
    """Do not disturb: the speaker's output mute (cues, announcements)."""

    on: bool
    source: str


@dataclass(frozen=True, slots=True)
class Announce(Input):
    announcement: Announcement


@dataclass(frozen=True, slots=True)
class Ask(Input):
    """A text question: answered aloud (in the open conversation, or a new one)."""

    text: str
    source: str


@dataclass(frozen=True, slots=True)
class Ring(Input):
    ring_id: str
    kind: str  # "timer" or "reminder"
    text: str


@dataclass(frozen=True, slots=True)
class StopRinging(Input):
    source: str


@dataclass(frozen=True, slots=True)
class ToolsChanged(Input):
    pass


@dataclass(frozen=True, slots=True)
class ErrorShown(Input):
    """Deadline: the error state has been shown long enough."""


@dataclass(frozen=True, slots=True)
class AlarmDue(Input):
    """Deadline: time for the next alarm burst."""


@dataclass(frozen=True, slots=True)
class RingTimeout(Input):
    """Deadline: nobody stopped the ringing within ring_max_s."""


# ---- conversation inputs ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConvInput(Input):
    cid: int


@dataclass(frozen=True, slots=True)
class Claimed(ConvInput):
    """The wake-word arbitration between speakers decided."""

    won: bool


@dataclass(frozen=True, slots=True)
class Opened(ConvInput):
    """The session's socket is open."""


@dataclass(frozen=True, slots=True)
class OpenFailed(ConvInput):
    where: str  # "token", "connect", ...
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionLost(ConvInput):
    why: str


@dataclass(frozen=True, slots=True)
class Server(ConvInput):
    """A server event; ``culprit`` is the type of the client event an error refers to."""

    event: ServerEvent
    culprit: str | None = None


@dataclass(frozen=True, slots=True)
class ToolDone(ConvInput):
    call_id: str
    response_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    output_json: str = "{}"


@dataclass(frozen=True, slots=True)
class ReplyHeard(ConvInput):
    """Everything written to the speaker for ``turn`` has been played (or the wait timed out)."""

    turn: int


@dataclass(frozen=True, slots=True)
class ListenTimeout(ConvInput):
    pass


@dataclass(frozen=True, slots=True)
class FollowUpTimeout(ConvInput):
    pass


@dataclass(frozen=True, slots=True)
class ReplyOverdue(ConvInput):
    pass


@dataclass(frozen=True, slots=True)
class SessionAged(ConvInput):
    pass


@dataclass(frozen=True, slots=True)
class SessionGraceOver(ConvInput):
    pass
