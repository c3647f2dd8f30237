"""The conversation machine's model: what it knows (:class:`Model`, :class:`Conv`), the settings it
decides with (:class:`Params`), and :class:`Ctx`, one step in progress (the model being changed and
the effects asked for so far).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..events import (
    Event,
    State,
    StateChanged,
)
from . import effects as fx
from . import inputs as ip
from .inputs import Announcement

IDLE, LISTENING, THINKING, SPEAKING = State.IDLE, State.LISTENING, State.THINKING, State.SPEAKING
FOLLOW_UP, MUTED, ERROR, RINGING = State.FOLLOW_UP, State.MUTED, State.ERROR, State.RINGING
DISABLED = State.DISABLED
ANY = frozenset(State)
TALKING = frozenset({LISTENING, THINKING, SPEAKING, FOLLOW_UP})
OPEN = TALKING | {IDLE}  # a conversation's phases (idle: not shown yet, arbitration or ringing)

# Races with the server's own turn handling (it interrupted or answered first): nothing to tell anyone.
MIN_TURN_MS = 200  # a push-to-talk turn shorter than this is a tap, not speech (the server needs 100 ms)
BENIGN_ERRORS = frozenset({"response_cancel_not_active", "conversation_already_has_active_response"})
NORMAL_ENDS = frozenset({"no speech", "no follow-up", "end_conversation", "talk button", "session limit"})
CONV_DEADLINES = ("listen", "follow", "due", "age", "grace")


@dataclass(frozen=True)
class Params:
    """Settings the machine decides with (from [realtime] and the cue lengths)."""

    barge_in: str = "wake_word"  # or "voice"
    follow_up_s: float = 8.0
    response_timeout_s: float = 15.0
    max_session_s: float = 3300.0
    arbitration: bool = False
    first_turn_min_s: float = 6.0  # after the wake word, wait at least this long for speech
    session_grace_s: float = 60.0  # a session past max_session_s mid-turn gets this long to finish
    drain_slack_s: float = 5.0
    error_hold_s: float = 0.6  # how long the error state is shown (its cue plays meanwhile); < 2 s
    ring_max_s: float = 300.0
    alarm_period_s: float = 2.0  # one alarm burst plus the gap before the next
    dnd_announcements: str = "queue"  # or "drop"


@dataclass
class Conv:
    """One conversation (one realtime session) as the machine sees it."""

    cid: int
    trigger: str
    phase: State = IDLE
    stage: str = "claim"  # claim -> connect -> open
    prompt: str | None = None
    announcement: Announcement | None = None
    ring: bool = False  # speaks the text of a ringing timer
    mic_open: bool = False  # the person's turn: microphone audio goes to the server
    pending: tuple[bytes, ...] | None = ()  # audio held until the socket is open
    active_response: str | None = None
    cancelled: frozenset[str] = frozenset()  # responses whose remaining audio is dropped
    item: str | None = None  # reply item going to the speaker
    item_response: str | None = None
    calls: dict[str, frozenset[str]] = field(default_factory=dict)  # response -> its running tool calls
    awaiting: dict[str, int] = field(default_factory=dict)  # response done, tools still running -> turn
    end_reason: str | None = None  # end after the current reply (tool, session age)
    turn: int = 0  # bumped by new speech or an interruption; stale drain waits see it
    expecting: bool = False  # a reply is due from the server
    due_at: float = 0.0  # ... by then (the "due" deadline)
    listen_at: float | None = None
    follow_at: float | None = None
    opened_at: float | None = None
    spoke: bool = False
    reply_ms: int = 0
    last_error_t: float = -1e9
    errors_told: int = 0  # server errors logged and published in this conversation (then at debug)
    held: bool = False  # the reply's microphone audio is held back (the echo canceller is settling)
    settling_told: bool = False  # ... and that was logged
    announced: bool = False
    question: str | None = None  # a text question that opens the conversation
    manual: bool = False  # push-to-talk: no server turn detection; the device commits each turn
    holding: bool = False  # push-to-talk: the button is down, the person's turn goes on
    turn_ms: int = 0  # audio sent (or held) in this push-to-talk turn
    commit_on_open: bool = False  # released before the socket was open
    out_of_band: frozenset[str] = frozenset()  # responses outside the conversation (not truncatable)
    oob_pending: bool = False  # an out-of-band response.create was sent; its response.created is next
    usage: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> Conv:
        """A shallow copy, one per step: the fields are immutable values (tuples, frozensets) or
        dicts that handlers replace rather than change, so nothing is shared that changes."""
        new = object.__new__(Conv)
        new.__dict__.update(self.__dict__)
        return new


@dataclass
class Ringing:
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    spoken: bool = False  # the text was spoken (or tried)
    speaking: bool = False  # a conversation is speaking it now


@dataclass
class Model:
    """Everything the machine knows."""

    params: Params = field(default_factory=Params)
    state: State = IDLE
    muted: bool = False  # the microphone
    enabled: bool = True  # the assistant (off: no wake word, no conversations; timers still ring)
    dnd: bool = False  # do not disturb: no cues, announcements held or dropped
    started: bool = False
    conv: Conv | None = None
    next_cid: int = 1
    queue: tuple[Announcement, ...] = ()
    ring: Ringing | None = None
    due_rings: tuple[ip.Ring, ...] = ()  # rang during a conversation: ring once it is over

    def copy(self) -> Model:
        new = object.__new__(Model)
        new.__dict__.update(self.__dict__)
        if self.conv is not None:
            new.conv = self.conv.copy()
        if self.ring is not None:
            new.ring = copy.copy(self.ring)
        return new


def _deep(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep(v) if isinstance(v, dict) else v for k, v in d.items()}


def summed_usage(total: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``total`` plus one response.done's usage (``total`` is left as it is)."""
    out = _deep(total)
    add_usage(out, usage)
    return out


def add_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    """Sum response.done usage into ``total`` (numbers added, nested details merged)."""
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            sub = total.setdefault(key, {})
            if isinstance(sub, dict):
                add_usage(sub, value)


class Ctx:
    """One step in progress: the model being changed and the effects so far."""

    def __init__(self, model: Model, now: float) -> None:
        self.m = model
        self.now = now
        self.p = model.params
        self.effects: list[fx.Effect] = []

    @property
    def conv(self) -> Conv:
        assert self.m.conv is not None
        return self.m.conv

    def do(self, *effects: fx.Effect) -> None:
        for e in effects:
            if self.m.dnd and isinstance(e, fx.Cue) and e.name != "alarm":
                continue  # do not disturb: no courtesy cues (a timer's alarm still sounds)
            self.effects.append(e)

    def publish(self, event: Event) -> None:
        self.effects.append(fx.Publish(event))

    def log(self, level: int, message: str) -> None:
        self.effects.append(fx.Log(level, message))

    def send(self, event: dict[str, Any]) -> None:
        self.effects.append(fx.Send(self.conv.cid, event))

    def rest_state(self) -> State:
        """The state when nothing is going on."""
        return DISABLED if not self.m.enabled else MUTED if self.m.muted else IDLE

    def arm(self, name: str, at: float, fire: ip.Input) -> None:
        self.effects.append(fx.Arm(name, at, fire))

    def set_state(self, new: State, reason: str) -> None:
        old = self.m.state
        if new is not old:
            self.m.state = new
            self.publish(StateChanged(old=old, new=new, reason=reason, t=self.now))

    def phase(self, new: State, reason: str) -> None:
        """The conversation's phase; shown unless the speaker rings."""
        self.conv.phase = new
        if self.m.ring is None:
            self.set_state(new, reason)


Handler = Callable[[Ctx, Any], None]
