"""The conversation state machine, pure: ``step(model, input, now) -> (model, effects)``.

Nothing here touches a socket, a sound card, a thread or the clock: the runner feeds inputs
(inputs.py) and executes the effects (effects.py). :data:`TABLE` lists every transition; read it
first. ``step`` never changes the model it is given.

The model has two levels. The speaker's public :class:`State` (idle, listening, ..., ringing) is
what LEDs and MQTT show. A conversation (:class:`Conv`, one realtime session) has its own
``phase``: it is the public state, except while the speaker rings (the ring's text is spoken by a
conversation under the ringing state) and before the wake-word arbitration is won (nothing shown).
Device inputs are matched against the public state, conversation inputs against the phase.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..events import (
    AnnouncementEvent,
    ConversationEnded,
    ErrorEvent,
    Event,
    MuteChanged,
    ResponseEvent,
    RingStarted,
    RingStopped,
    State,
    StateChanged,
    ToolCalled,
    Transcript,
    WakeDetected,
)
from ..realtime import protocol
from ..realtime import server_events as se
from . import effects as fx
from . import inputs as ip
from .inputs import Announcement

IDLE, LISTENING, THINKING, SPEAKING = State.IDLE, State.LISTENING, State.THINKING, State.SPEAKING
FOLLOW_UP, MUTED, ERROR, RINGING = State.FOLLOW_UP, State.MUTED, State.ERROR, State.RINGING
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
    pending: list[bytes] | None = field(default_factory=list)  # audio held until the socket is open
    active_response: str | None = None
    cancelled: set[str] = field(default_factory=set)  # responses whose remaining audio is dropped
    item: str | None = None  # reply item going to the speaker
    item_response: str | None = None
    calls: dict[str, set[str]] = field(default_factory=dict)  # response -> its running tool calls
    awaiting: dict[str, int] = field(default_factory=dict)  # response done, tools still running -> turn
    end_reason: str | None = None  # end after the current reply (tool, session age)
    turn: int = 0  # bumped by new speech or an interruption; stale drain waits see it
    expecting: bool = False  # a reply is due from the server
    listen_at: float | None = None
    follow_at: float | None = None
    opened_at: float | None = None
    spoke: bool = False
    reply_ms: int = 0
    last_error_t: float = -1e9
    announced: bool = False
    question: str | None = None  # a text question that opens the conversation
    manual: bool = False  # push-to-talk: no server turn detection; the device commits each turn
    holding: bool = False  # push-to-talk: the button is down, the person's turn goes on
    turn_ms: int = 0  # audio sent (or held) in this push-to-talk turn
    commit_on_open: bool = False  # released before the socket was open
    out_of_band: set[str] = field(default_factory=set)  # responses outside the conversation (not truncatable)
    oob_pending: bool = False  # an out-of-band response.create was sent; its response.created is next
    usage: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> Conv:
        return replace(
            self, pending=None if self.pending is None else list(self.pending), cancelled=set(self.cancelled),
            calls={k: set(v) for k, v in self.calls.items()}, awaiting=dict(self.awaiting), usage=_deep(self.usage),
            out_of_band=set(self.out_of_band),
        )


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
    muted: bool = False
    started: bool = False
    conv: Conv | None = None
    next_cid: int = 1
    queue: tuple[Announcement, ...] = ()
    ring: Ringing | None = None
    due_rings: tuple[ip.Ring, ...] = ()  # rang during a conversation: ring once it is over

    def copy(self) -> Model:
        return replace(
            self, conv=None if self.conv is None else self.conv.copy(),
            ring=None if self.ring is None else replace(self.ring),
        )


def _deep(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep(v) if isinstance(v, dict) else v for k, v in d.items()}


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
        self.effects.extend(effects)

    def publish(self, event: Event) -> None:
        self.effects.append(fx.Publish(event))

    def log(self, level: int, message: str) -> None:
        self.effects.append(fx.Log(level, message))

    def send(self, event: dict[str, Any]) -> None:
        self.effects.append(fx.Send(self.conv.cid, event))

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


# ==== device inputs ==============================================================================

def start(c: Ctx, ev: ip.Start) -> None:
    c.m.started = True
    c.m.muted = ev.muted
    if ev.muted:
        c.do(fx.SetCaptureMuted(True))
        c.publish(MuteChanged(muted=True, source="startup", t=c.now))
        c.set_state(MUTED, "saved state")
    else:
        c.publish(MuteChanged(muted=False, source="startup", t=c.now))
        c.publish(StateChanged(old=IDLE, new=IDLE, reason="startup", t=c.now))


def shutdown(c: Ctx, ev: ip.Shutdown) -> None:
    c.m.started = False
    drop_announcements(c, "shutting down")
    if c.m.ring is not None:
        stop_ring(c, "shutdown", then_settle=False)
    if c.m.conv is not None:
        c.do(fx.StopPlayback())
        end(c, "shutdown")


def frame(c: Ctx, ev: ip.Frame) -> None:
    conv = c.m.conv
    if conv is None or not conv.mic_open or not ev.pcm24k:
        return
    if conv.manual:
        if not conv.holding:
            return
        conv.turn_ms += protocol.pcm_ms(len(ev.pcm24k))
    if conv.pending is not None:
        conv.pending.append(ev.pcm24k)
    elif conv.phase in (LISTENING, THINKING, FOLLOW_UP) or (conv.phase is SPEAKING and c.p.barge_in == "voice"):
        c.send(protocol.audio_append(ev.pcm24k))


def wake_begin(c: Ctx, ev: ip.Wake) -> None:
    if c.m.conv is not None:
        c.log(logging.DEBUG, "wake word ignored: a conversation is opening")
        return
    c.publish(WakeDetected(model=ev.model, score=ev.score, t=c.now))
    begin(c, "wake", frames=ev.frames, score=ev.claim_score)


def wake_barge(c: Ctx, ev: ip.Wake) -> None:
    """The wake word while the assistant speaks: it stops and listens (no echo cancellation)."""
    if c.p.barge_in != "wake_word" or c.m.conv is None:
        wake_ignored(c, ev)
        return
    conv = c.conv
    c.publish(WakeDetected(model=ev.model, score=ev.score, t=c.now))
    interrupt(c, "wake word")
    if conv.announcement is not None and not conv.announced:
        conv.announced = True  # cut short by the person, who now talks: a conversation
        c.publish(AnnouncementEvent(text=conv.announcement.text, status="spoken", reason="interrupted by the wake word", t=c.now))
    listen(c)
    c.phase(LISTENING, "wake word")
    c.do(fx.Cue("wake"))
    conv.mic_open = True
    for pcm in ev.frames:
        frame(c, ip.Frame(pcm))


def wake_stops_ring(c: Ctx, ev: ip.Wake) -> None:
    c.publish(WakeDetected(model=ev.model, score=ev.score, t=c.now))
    stop_ring(c, "wake word")


def wake_ignored(c: Ctx, ev: ip.Wake) -> None:
    c.log(logging.DEBUG, f"wake word ignored while {c.m.state.value}")


def talk_start(c: Ctx, ev: ip.TalkPressed) -> None:
    start_conversation(c, ip.StartConversation("button", None, ev.frames))


def talk_stop(c: Ctx, ev: ip.TalkPressed) -> None:
    stop_speaking(c, ip.StopSpeaking("button"))


def talk_end(c: Ctx, ev: ip.TalkPressed) -> None:
    if c.m.conv is not None:
        end(c, "talk button")


def talk_stops_ring(c: Ctx, ev: ip.TalkPressed) -> None:
    stop_ring(c, "talk button")


def ignored(c: Ctx, ev: ip.Input) -> None:
    c.log(logging.INFO, f"{type(ev).__name__} ignored while {c.m.state.value}")


def hold_begin(c: Ctx, ev: ip.TalkDown) -> None:
    """Push-to-talk from idle: a conversation whose turns the button delimits."""
    if c.m.conv is not None:
        return
    begin(c, "button", frames=ev.frames, manual=True)
    c.conv.holding = True
    c.conv.turn_ms = sum(protocol.pcm_ms(len(f)) for f in ev.frames)


def hold_turn(c: Ctx, ev: ip.TalkDown) -> None:
    """Push-to-talk in a conversation: the person's next turn (over the reply, if one plays)."""
    conv = c.m.conv
    if conv is None or not conv.manual:
        talk_pressed(c, ip.TalkPressed(ev.frames))  # a wake-word conversation: the button as usual
        return
    if conv.phase is SPEAKING:
        interrupt(c, "talk button")
    elif conv.active_response is not None:
        conv.cancelled.add(conv.active_response)
        c.send(protocol.response_cancel())
    conv.turn += 1
    conv.holding = conv.mic_open = True
    conv.turn_ms = 0
    clear_turn_deadlines(c)
    expect(c, False)
    c.phase(LISTENING, "talk button")
    c.do(fx.Cue("wake"))


def hold_release(c: Ctx, ev: ip.TalkUp) -> None:
    """Push-to-talk: the turn is complete; commit it and ask for the answer."""
    conv = c.m.conv
    if conv is None or not conv.holding:
        return
    conv.holding = conv.mic_open = False
    if conv.turn_ms < MIN_TURN_MS:  # a tap: nothing was said
        end(c, "talk button")
    elif conv.stage != "open":
        conv.commit_on_open = True
        c.phase(THINKING, "turn committed")
    else:
        commit_turn(c)


def commit_turn(c: Ctx) -> None:
    c.send(protocol.audio_commit())
    c.send(protocol.response_create())
    expect(c)
    c.phase(THINKING, "turn committed")


def talk_pressed(c: Ctx, ev: ip.TalkPressed) -> None:
    r = match(c.m, ev)
    if r is not None:
        r.do(c, ev)


def start_conversation(c: Ctx, ev: ip.StartConversation) -> None:
    if c.m.conv is not None:
        c.log(logging.INFO, f"start conversation ({ev.source}) ignored: already {c.m.state.value}")
    elif ev.prompt:
        begin(c, ev.source, prompt=ev.prompt)
    else:
        begin(c, ev.source, frames=ev.frames)


def stop_speaking(c: Ctx, ev: ip.StopSpeaking) -> None:
    """Stop the reply now (the barge-in path) and wait for the person to answer."""
    if c.m.conv is None:
        return
    conv = c.conv
    interrupt(c, ev.source)
    if conv.announcement is not None and not conv.announced:
        conv.announced = True  # heard, if not to its end
        c.publish(AnnouncementEvent(text=conv.announcement.text, status="spoken", reason=f"stopped by {ev.source}", t=c.now))
        if not conv.announcement.then_listen:
            end(c, "stopped")
            return
    follow_up(c)


def stop_conversation(c: Ctx, ev: ip.StopConversation) -> None:
    """From automations: silence a reply and end the conversation at once."""
    if c.m.conv is None:
        return
    if c.conv.phase is SPEAKING:
        interrupt(c, ev.source)
    c.do(fx.StopPlayback())
    end(c, "stopped")


def request_end(c: Ctx, ev: ip.RequestEnd) -> None:
    if c.m.conv is not None:
        c.conv.end_reason = ev.reason


def mute(c: Ctx, ev: ip.Mute) -> None:
    m = c.m
    if ev.muted == m.muted:
        return
    m.muted = ev.muted
    if ev.muted:
        c.do(fx.SetCaptureMuted(True), fx.ClearPreroll())
        drop_announcements(c, "muted")
        if m.conv is not None and not m.conv.ring:
            c.do(fx.StopPlayback())
            end(c, "muted", then_settle=False)
        elif m.conv is not None:
            m.conv.mic_open = False  # the ring's text goes on: mute is the microphone's
        if m.ring is None:
            c.set_state(MUTED, ev.source)
        c.publish(MuteChanged(muted=True, source=ev.source, t=c.now))
        c.do(fx.Persist())
        if m.ring is None:
            c.do(fx.Cue("mute_on"))
    else:
        c.do(fx.ClearPreroll(), fx.ResetWake(), fx.SetCaptureMuted(False))
        if m.ring is None:
            c.set_state(IDLE, ev.source)
        c.publish(MuteChanged(muted=False, source=ev.source, t=c.now))
        c.do(fx.Persist())
        if m.ring is None:
            c.do(fx.Cue("mute_off"))
            settle(c, ev.source)


def announce(c: Ctx, ev: ip.Announce) -> None:
    a = ev.announcement
    if c.m.muted:
        c.publish(AnnouncementEvent(text=a.text, status="dropped", reason="muted", t=c.now))
        return
    c.m.queue += (a,)
    c.publish(AnnouncementEvent(text=a.text, status="queued", t=c.now))
    next_announcement(c)


def ask_new(c: Ctx, ev: ip.Ask) -> None:
    """A text question while idle: a conversation that starts with it."""
    if c.m.conv is not None or c.m.muted:
        c.log(logging.INFO, f"question ({ev.source}) ignored while {c.m.state.value}")
        return
    begin(c, ev.source, question=ev.text)


def ask_in_conversation(c: Ctx, ev: ip.Ask) -> None:
    """A text question into the open conversation: answered like a spoken turn."""
    conv = c.m.conv
    if conv is None or conv.stage != "open" or conv.ring:
        c.log(logging.INFO, f"question ({ev.source}) ignored while {c.m.state.value}")
        return
    if conv.phase is SPEAKING:
        interrupt(c, ev.source)
    elif conv.active_response is not None:
        conv.cancelled.add(conv.active_response)
        c.send(protocol.response_cancel())
    conv.turn += 1
    c.send(protocol.user_text(ev.text))
    c.send(protocol.response_create())
    c.publish(Transcript(role="user", text=ev.text, t=c.now))
    clear_turn_deadlines(c)
    expect(c)
    c.phase(THINKING, ev.source)


# ---- ringing --------------------------------------------------------------------------------------

def ring_now(c: Ctx, ev: ip.Ring) -> None:
    """A timer is due while nothing else happens: ring at once (muted too: mute is the mic's)."""
    if c.m.conv is not None:  # a conversation is opening (arbitration): it goes first
        ring_later(c, ev)
        return
    c.do(fx.Disarm("error"))
    c.m.ring = Ringing(ids=(ev.ring_id,), texts=(ev.text,) if ev.text else ())
    c.publish(RingStarted(ring_id=ev.ring_id, kind=ev.kind, text=ev.text, t=c.now))
    c.set_state(RINGING, ev.kind)
    c.do(fx.StopPlayback(), fx.Cue("alarm"))
    c.arm("ring", c.now + c.p.alarm_period_s, ip.AlarmDue())
    c.arm("ring_max", c.now + c.p.ring_max_s, ip.RingTimeout())


def ring_merge(c: Ctx, ev: ip.Ring) -> None:
    """Another ring while ringing: the same alarm; one stop stops them all."""
    ring = c.m.ring
    assert ring is not None
    if ev.ring_id not in ring.ids:
        ring.ids += (ev.ring_id,)
        if ev.text and not ring.spoken:
            ring.texts += (ev.text,)
        c.publish(RingStarted(ring_id=ev.ring_id, kind=ev.kind, text=ev.text, t=c.now))


def ring_later(c: Ctx, ev: ip.Ring) -> None:
    # A ring due during a conversation waits until the reply is over and the conversation has
    # ended: cutting a reply off in the middle loses what was being said, a ring a few seconds
    # late loses nothing.
    if all(r.ring_id != ev.ring_id for r in c.m.due_rings):
        c.m.due_rings += (ev,)


def alarm_due(c: Ctx, ev: ip.AlarmDue) -> None:
    ring = c.m.ring
    if ring is None or ring.speaking:
        return
    if not ring.spoken and ring.texts and c.m.conv is None:
        # After the first burst, the text once, through the announcement path; the alarm pauses.
        ring.speaking = True
        begin(c, "ring", announcement=Announcement(". ".join(ring.texts), chime=False), ring=True)
        return
    c.do(fx.Cue("alarm"))
    c.arm("ring", c.now + c.p.alarm_period_s, ip.AlarmDue())


def stop_ringing(c: Ctx, ev: ip.StopRinging) -> None:
    stop_ring(c, ev.source)


def ring_timeout(c: Ctx, ev: ip.RingTimeout) -> None:
    stop_ring(c, "timeout")


def stop_ring(c: Ctx, source: str, *, then_settle: bool = True) -> None:
    ring = c.m.ring
    if ring is None:
        return
    c.m.ring = None
    c.do(fx.StopPlayback(), fx.Disarm("ring"), fx.Disarm("ring_max"))
    if c.m.conv is not None and c.m.conv.ring:
        end(c, "ring stopped", then_settle=False)
    c.publish(RingStopped(ring_ids=ring.ids, source=source, t=c.now))
    if then_settle:
        settle(c, f"ring stopped by {source}")


def tools_changed(c: Ctx, ev: ip.ToolsChanged) -> None:
    # Devices discovered mid-conversation become usable at once.
    if c.m.conv is not None and c.m.conv.stage == "open":
        c.do(fx.UpdateTools(c.m.conv.cid))


def error_shown(c: Ctx, ev: ip.ErrorShown) -> None:
    settle(c, "error shown")


# ==== conversation inputs =========================================================================

def claimed(c: Ctx, ev: ip.Claimed) -> None:
    if not ev.won:
        end(c, "another speaker answers", stood_down=True)
        return
    conv = c.conv
    conv.stage = "connect"
    # Only now: a speaker that loses the arbitration shows and plays nothing.
    c.phase(LISTENING if conv.mic_open else THINKING, conv.trigger)
    if conv.announcement is None or conv.announcement.chime:
        c.do(fx.Cue("wake"))  # not waited for: the cue must not delay streaming
    c.do(fx.Open(conv.cid))


def opened(c: Ctx, ev: ip.Opened) -> None:
    conv = c.conv
    conv.stage = "open"
    conv.opened_at = c.now
    c.do(fx.Configure(conv.cid, manual_turns=conv.manual))
    pending, conv.pending = conv.pending or [], None
    for pcm in pending if conv.mic_open or conv.commit_on_open else ():
        c.send(protocol.audio_append(pcm))
    if conv.commit_on_open:
        conv.commit_on_open = False
        commit_turn(c)
    elif conv.mic_open and not conv.manual:
        listen(c)
    c.arm("age", c.now + c.p.max_session_s, ip.SessionAged(conv.cid))
    if conv.announcement is not None:
        text = conv.announcement.text
        # Out of band ("none"): the announcement does not become part of the conversation, unless
        # the person is to answer it (then_listen), when the model must know what was said.
        oob = not conv.announcement.then_listen
        c.send(protocol.response_create_with(
            "Read this announcement aloud exactly as written, word for word, adding nothing before "
            f'or after it: "{text}"', tool_choice="none", conversation="none" if oob else None))
        conv.oob_pending = oob
        expect(c)
    elif conv.question:
        c.send(protocol.user_text(conv.question))
        c.send(protocol.response_create())
        c.publish(Transcript(role="user", text=conv.question, t=c.now))
        expect(c)
    elif conv.prompt:
        c.do(fx.Prompt(conv.cid, conv.prompt))
        expect(c)


def open_failed(c: Ctx, ev: ip.OpenFailed) -> None:
    fail(c, ev.where, ev.message)


def connection_lost(c: Ctx, ev: ip.ConnectionLost) -> None:
    conv = c.conv
    if conv.phase is FOLLOW_UP and conv.active_response is None:
        c.log(logging.INFO, f"the server closed the session during the follow-up window ({ev.why})")
        end(c, "closed by the server")
    else:
        fail(c, "session", f"connection lost while {conv.phase.value}: {ev.why}")


def no_speech(c: Ctx, ev: ip.Input) -> None:
    if c.conv.listen_at is not None or isinstance(ev, ip.Server):
        end(c, "no speech")


def no_follow_up(c: Ctx, ev: ip.FollowUpTimeout) -> None:
    if c.conv.follow_at is not None:
        end(c, "no follow-up")


def reply_overdue(c: Ctx, ev: ip.ReplyOverdue) -> None:
    if c.conv.expecting:
        fail(c, "session", f"the server sent nothing for {c.p.response_timeout_s:.1f} s while a reply was due")


def session_aged(c: Ctx, ev: ip.SessionAged) -> None:
    conv = c.conv
    if conv.phase is FOLLOW_UP or (conv.phase is LISTENING and conv.listen_at is not None):
        end(c, "session limit")
    else:
        c.log(logging.INFO, f"session is {c.p.max_session_s:.0f} s old: ending it after this reply")
        conv.end_reason = conv.end_reason or "session limit"
        c.arm("grace", c.now + c.p.session_grace_s, ip.SessionGraceOver(conv.cid))


def session_grace_over(c: Ctx, ev: ip.SessionGraceOver) -> None:
    end(c, "session limit")


def tool_done(c: Ctx, ev: ip.ToolDone) -> None:
    conv = c.conv
    publish_tool(c, ev)
    c.send(protocol.function_call_output(ev.call_id, ev.output_json))
    running = conv.calls.get(ev.response_id)
    if running is not None:
        running.discard(ev.call_id)
    turn = conv.awaiting.get(ev.response_id)
    if turn is not None and not running:
        del conv.awaiting[ev.response_id]
        conv.calls.pop(ev.response_id, None)
        if turn == conv.turn:
            # Also after end_conversation: the model says its goodbye, then the conversation ends.
            c.send(protocol.response_create())
            expect(c)


def reply_heard(c: Ctx, ev: ip.ReplyHeard) -> None:
    """The reply is complete and has been heard: end, or open the follow-up window."""
    conv = c.conv
    if ev.turn != conv.turn or conv.active_response is not None or conv.phase not in (SPEAKING, THINKING):
        return  # the person is talking again, or another reply is on its way
    if conv.announcement is not None and not conv.announced:
        conv.announced = True
        if not conv.ring:
            c.publish(AnnouncementEvent(text=conv.announcement.text, status="spoken", t=c.now))
        if not conv.announcement.then_listen:
            end(c, "announcement")
            return
    if conv.end_reason is not None:
        end(c, conv.end_reason)
        return
    follow_up(c)


# ---- server events ------------------------------------------------------------------------------

def server_error(c: Ctx, ev: ip.Server) -> None:
    err: se.ServerError = ev.event
    if err.code in BENIGN_ERRORS:
        c.log(logging.DEBUG, f"server: {err.code}: {err.message}")
        return
    c.log(logging.WARNING, f"server error {err.code}: {err.message}" + (f" (in reply to {ev.culprit})" if ev.culprit else ""))
    c.conv.last_error_t = c.now
    if ev.culprit == "session.update":
        # The server rejects a whole update: going on would mean no instructions, no tools,
        # and the server's default turn detection. Say so instead of a worse assistant.
        fail(c, "session", f"the server rejected the session configuration: {err.code}: {err.message}")
        return
    c.publish(ErrorEvent(where="session", message=f"{err.code}: {err.message}", t=c.now))


def speech_while_speaking(c: Ctx, ev: ip.Server) -> None:
    if c.p.barge_in != "voice":
        # Speech in audio streamed before the reply began; only the wake word interrupts.
        c.log(logging.DEBUG, "speech started while speaking (wake_word barge-in): not an interruption")
        return
    speech_started(c, ev)


def speech_started(c: Ctx, ev: ip.Server) -> None:
    conv = c.conv
    if conv.active_response is not None:
        # The person goes on talking: drop whatever of the reply still arrives. With barge_in =
        # "voice" the server cancels it itself (interrupt_response is on; a response.cancel would
        # only race it); with "wake_word" nothing has played yet, so cancelling cannot be the
        # speaker hearing itself.
        conv.cancelled.add(conv.active_response)
        if c.p.barge_in != "voice":
            c.send(protocol.response_cancel())
    if conv.phase is SPEAKING or conv.item is not None:
        interrupt(c, "voice", cancel=False)
    conv.turn += 1
    clear_turn_deadlines(c)
    c.phase(LISTENING, "speech")


def speech_stopped(c: Ctx, ev: ip.Server) -> None:
    expect(c)
    c.phase(THINKING, "speech ended")


def committed(c: Ctx, ev: ip.Server) -> None:
    expect(c)
    c.phase(THINKING, "turn committed")


def user_transcript(c: Ctx, ev: ip.Server) -> None:
    e: se.TranscriptionCompleted = ev.event
    if e.transcript:
        c.publish(Transcript(role="user", text=e.transcript, t=c.now))


def transcription_failed(c: Ctx, ev: ip.Server) -> None:
    c.log(logging.INFO, f"input transcription failed: {ev.event.message}")


def response_created(c: Ctx, ev: ip.Server) -> None:
    conv = c.conv
    conv.active_response = ev.event.response_id or None
    if conv.oob_pending:
        conv.oob_pending = False
        conv.out_of_band.add(ev.event.response_id)
    c.publish(ResponseEvent(response_id=ev.event.response_id, status="created", t=c.now))
    expect(c)
    if conv.phase in (LISTENING, FOLLOW_UP):
        clear_turn_deadlines(c)
        c.phase(THINKING, "reply")


def audio_delta(c: Ctx, ev: ip.Server) -> None:
    conv = c.conv
    e: se.AudioDelta = ev.event
    if e.response_id in conv.cancelled:
        return
    if e.item_id != conv.item:
        c.do(fx.BeginReply(e.item_id))
        conv.item, conv.item_response = e.item_id, e.response_id
    c.do(fx.PlayAudio(e.pcm))
    conv.reply_ms += protocol.pcm_ms(len(e.pcm))
    conv.spoke = True
    c.phase(SPEAKING, "reply")


def assistant_transcript(c: Ctx, ev: ip.Server) -> None:
    if ev.event.text:
        c.publish(Transcript(role="assistant", text=ev.event.text, t=c.now))


def function_call(c: Ctx, ev: ip.Server) -> None:
    e: se.FunctionCallDone = ev.event
    c.conv.calls.setdefault(e.response_id, set()).add(e.call_id)
    c.do(fx.CallTool(c.conv.cid, e.call_id, e.name, e.arguments, e.response_id))


def response_done(c: Ctx, ev: ip.Server) -> None:
    conv = c.conv
    e: se.ResponseDone = ev.event
    if e.usage:
        add_usage(conv.usage, e.usage)
        c.log(logging.INFO, f"response {e.response_id}: {e.status}; usage {e.usage}")
    c.publish(ResponseEvent(response_id=e.response_id, status=e.status, usage=e.usage, t=c.now))
    if e.response_id == conv.active_response:
        conv.active_response = None
    expect(c, False)
    running = conv.calls.get(e.response_id)
    if e.response_id in conv.cancelled or e.status == "cancelled":
        # Interrupted (by us or by the server's VAD): the person's new turn decides what follows.
        conv.calls.pop(e.response_id, None)
        return
    if e.status == "failed":
        message = e.error or "no details"
        c.log(logging.WARNING, f"response {e.response_id} failed: {message}")
        if c.now - conv.last_error_t > 1.0:  # else the error event said it already
            c.publish(ErrorEvent(where="session", message=f"response failed: {message}", t=c.now))
        c.do(fx.Cue("error"))  # the person hears that this turn failed; they may try again
    if running is not None:
        if running:
            conv.awaiting[e.response_id] = conv.turn
        else:
            conv.calls.pop(e.response_id, None)
            c.send(protocol.response_create())
            expect(c)
    elif conv.spoke:
        c.do(fx.AwaitDrain(conv.cid, conv.turn, conv.reply_ms / 1000 + c.p.drain_slack_s))
    else:
        reply_heard(c, ip.ReplyHeard(conv.cid, conv.turn))


def server_ignored(c: Ctx, ev: ip.Server) -> None:
    pass


# ==== shared steps ================================================================================

def begin(
    c: Ctx, trigger: str, *, frames: tuple[bytes, ...] | None = None, score: float = 0.0, prompt: str | None = None,
    announcement: Announcement | None = None, ring: bool = False, question: str | None = None, manual: bool = False,
) -> None:
    m = c.m
    conv = Conv(cid=m.next_cid, trigger=trigger, prompt=prompt, announcement=announcement, ring=ring, manual=manual)
    m.next_cid += 1
    conv.mic_open = frames is not None
    conv.pending = [f for f in frames or () if f]
    conv.question = question
    m.conv = conv
    if trigger == "wake" and c.p.arbitration:
        c.do(fx.Claim(conv.cid, score))
        return
    claimed(c, ip.Claimed(conv.cid, True))


def listen(c: Ctx) -> None:
    conv = c.conv
    conv.follow_at = None
    conv.listen_at = c.now + max(c.p.follow_up_s, c.p.first_turn_min_s)
    c.do(fx.Disarm("follow"))
    c.arm("listen", conv.listen_at, ip.ListenTimeout(conv.cid))


def clear_turn_deadlines(c: Ctx) -> None:
    c.conv.listen_at = c.conv.follow_at = None
    c.do(fx.Disarm("listen"), fx.Disarm("follow"))


def expect(c: Ctx, on: bool = True) -> None:
    """A reply is due (or no longer): the server must send something within response_timeout_s."""
    c.conv.expecting = on
    if on:
        c.arm("due", c.now + c.p.response_timeout_s, ip.ReplyOverdue(c.conv.cid))
    else:
        c.do(fx.Disarm("due"))


def follow_up(c: Ctx) -> None:
    conv = c.conv
    if c.p.follow_up_s <= 0 or conv.ring:
        end(c, "no follow-up")
        return
    conv.item = None
    conv.mic_open = not c.m.muted and not conv.manual  # push-to-talk: the next turn is the button's
    conv.listen_at = None
    conv.follow_at = c.now + c.p.follow_up_s
    c.do(fx.Disarm("listen"))
    c.arm("follow", conv.follow_at, ip.FollowUpTimeout(conv.cid))
    c.phase(FOLLOW_UP, "reply heard")


def interrupt(c: Ctx, why: str, *, cancel: bool = True) -> None:
    """Silence the speaker now, drop the rest of the reply, tell the server what was heard."""
    conv = c.conv
    for rid in (conv.active_response, conv.item_response):
        if rid:
            conv.cancelled.add(rid)
    if conv.active_response is not None and cancel:
        c.send(protocol.response_cancel())
    # An out-of-band reply is no item of the conversation: nothing to truncate at the server.
    c.do(fx.Truncate(conv.cid, None if conv.item_response in conv.out_of_band else conv.item, why))
    conv.item = conv.item_response = None
    conv.turn += 1
    expect(c, False)


def fail(c: Ctx, where: str, message: str) -> None:
    end(c, "error", failure=(where, message))


def end(
    c: Ctx, reason: str, *, failure: tuple[str, str] | None = None, stood_down: bool = False, then_settle: bool = True,
) -> None:
    """Close the conversation, tell what happened, and (``then_settle``) go back to idle or muted."""
    m = c.m
    conv = m.conv
    if conv is None:
        return
    m.conv = None
    c.do(fx.Close(conv.cid), *(fx.Disarm(n) for n in CONV_DEADLINES))
    if conv.ring:
        if failure is not None:
            c.log(logging.WARNING, f"the ring's text was not spoken: {failure[0]}: {failure[1]}")
        if m.ring is not None:  # the alarm goes on
            m.ring.speaking, m.ring.spoken = False, True
            c.do(fx.Cue("alarm"))
            c.arm("ring", c.now + c.p.alarm_period_s, ip.AlarmDue())
        return
    if conv.announcement is not None and not conv.announced:
        c.publish(AnnouncementEvent(text=conv.announcement.text, status="dropped", reason=reason, t=c.now))
    if stood_down:
        c.log(logging.INFO, "wake word: another speaker answers")
    else:
        if failure is not None:
            c.log(logging.ERROR, f"conversation failed: {failure[0]}: {failure[1]}")
            c.publish(ErrorEvent(where=failure[0], message=failure[1], t=c.now))
        ended = f"error: {failure[0]}" if failure else reason
        c.publish(ConversationEnded(reason=ended, usage=conv.usage, t=c.now))
    if not then_settle:
        return
    if failure is not None and not m.muted:
        # The error state stays visible (LED) while its cue plays, then idle; < 2 s in total.
        c.do(fx.StopPlayback())
        c.set_state(ERROR, f"{failure[0]} failed")
        c.do(fx.Cue("error"))
        c.arm("error", c.now + c.p.error_hold_s, ip.ErrorShown())
        return
    if reason in NORMAL_ENDS and not m.muted:
        c.do(fx.Cue("done"))
    settle(c, reason)


def settle(c: Ctx, reason: str) -> None:
    """Nothing is going on: ring what became due, else idle (or muted) and the next announcement."""
    m = c.m
    if m.conv is not None or m.ring is not None:
        return
    if m.due_rings:
        due, m.due_rings = m.due_rings, ()
        ring_now(c, due[0])
        for r in due[1:]:
            ring_merge(c, r)
        return
    c.set_state(MUTED if m.muted else IDLE, reason)
    if m.started:
        next_announcement(c)


def next_announcement(c: Ctx) -> None:
    m = c.m
    if m.muted or m.conv is not None or m.state is not IDLE or not m.queue:
        return
    ann, m.queue = m.queue[0], m.queue[1:]
    begin(c, "announce", announcement=ann)


def drop_announcements(c: Ctx, reason: str) -> None:
    queue, c.m.queue = c.m.queue, ()
    for ann in queue:
        c.publish(AnnouncementEvent(text=ann.text, status="dropped", reason=reason, t=c.now))


# ==== the table ===================================================================================

@dataclass(frozen=True)
class Row:
    states: frozenset[State]  # public state (device inputs) or conversation phase (conversation inputs)
    on: type  # an input class, or a server event class (inside inputs.Server)
    do: Handler


def row(states: State | frozenset[State], on: type, do: Handler) -> Row:
    return Row(frozenset({states}) if isinstance(states, State) else states, on, do)


NOT_RINGING = ANY - {RINGING}

TABLE: tuple[Row, ...] = (
    # -- the device --------------------------------------------------------------------------------
    row(ANY, ip.Start, start),
    row(ANY, ip.Shutdown, shutdown),
    row(ANY, ip.Frame, frame),
    row(IDLE, ip.Wake, wake_begin),
    row(SPEAKING, ip.Wake, wake_barge),
    row(RINGING, ip.Wake, wake_stops_ring),
    row(ANY, ip.Wake, wake_ignored),
    row(IDLE, ip.TalkPressed, talk_start),
    row(SPEAKING, ip.TalkPressed, talk_stop),
    row(frozenset({LISTENING, THINKING, FOLLOW_UP}), ip.TalkPressed, talk_end),
    row(RINGING, ip.TalkPressed, talk_stops_ring),
    row(ANY, ip.TalkPressed, ignored),
    row(IDLE, ip.TalkDown, hold_begin),
    row(TALKING, ip.TalkDown, hold_turn),
    row(RINGING, ip.TalkDown, talk_stops_ring),
    row(ANY, ip.TalkDown, ignored),
    row(LISTENING, ip.TalkUp, hold_release),
    row(IDLE, ip.StartConversation, start_conversation),
    row(ANY, ip.StartConversation, ignored),
    row(SPEAKING, ip.StopSpeaking, stop_speaking),
    row(ANY, ip.StopSpeaking, ignored),
    row(TALKING, ip.StopConversation, stop_conversation),
    row(RINGING, ip.StopConversation, stop_ringing),
    row(ANY, ip.StopConversation, ignored),
    row(ANY, ip.RequestEnd, request_end),
    row(ANY, ip.Mute, mute),
    row(ANY, ip.Announce, announce),
    row(IDLE, ip.Ask, ask_new),
    row(TALKING, ip.Ask, ask_in_conversation),
    row(ANY, ip.Ask, ignored),
    row(frozenset({IDLE, MUTED, ERROR}), ip.Ring, ring_now),
    row(RINGING, ip.Ring, ring_merge),
    row(TALKING, ip.Ring, ring_later),
    row(RINGING, ip.StopRinging, stop_ringing),
    row(RINGING, ip.AlarmDue, alarm_due),
    row(RINGING, ip.RingTimeout, ring_timeout),
    row(ANY, ip.ToolsChanged, tools_changed),
    row(ERROR, ip.ErrorShown, error_shown),
    # -- a conversation: opening, its deadlines, its tools, its replies ----------------------------
    row(IDLE, ip.Claimed, claimed),
    row(OPEN, ip.Opened, opened),
    row(OPEN, ip.OpenFailed, open_failed),
    row(OPEN, ip.ConnectionLost, connection_lost),
    row(LISTENING, ip.ListenTimeout, no_speech),
    row(FOLLOW_UP, ip.FollowUpTimeout, no_follow_up),
    row(OPEN, ip.ReplyOverdue, reply_overdue),
    row(OPEN, ip.SessionAged, session_aged),
    row(OPEN, ip.SessionGraceOver, session_grace_over),
    row(OPEN, ip.ToolDone, tool_done),
    row(OPEN, ip.ReplyHeard, reply_heard),
    # -- a conversation: server events ----------------------------------------------------------------
    row(OPEN, se.ServerError, server_error),
    row(SPEAKING, se.SpeechStarted, speech_while_speaking),
    row(OPEN, se.SpeechStarted, speech_started),
    row(frozenset({LISTENING, FOLLOW_UP}), se.SpeechStopped, speech_stopped),
    row(frozenset({LISTENING, FOLLOW_UP}), se.InputCommitted, committed),
    row(LISTENING, se.InputTimeout, no_speech),
    row(OPEN, se.TranscriptionCompleted, user_transcript),
    row(OPEN, se.TranscriptionFailed, transcription_failed),
    row(OPEN, se.ResponseCreated, response_created),
    row(OPEN, se.AudioDelta, audio_delta),
    row(OPEN, se.AssistantTranscript, assistant_transcript),
    row(OPEN, se.FunctionCallDone, function_call),
    row(OPEN, se.ResponseDone, response_done),
)

_INDEX: dict[type, tuple[Row, ...]] = {}
for _row in TABLE:
    _INDEX[_row.on] = _INDEX.get(_row.on, ()) + (_row,)


def step(model: Model, event: ip.Input, now: float) -> tuple[Model, list[fx.Effect]]:
    """Apply ``event`` at monotonic time ``now``: the new model and what to do. Pure."""
    c = Ctx(model.copy(), now)
    if isinstance(event, ip.ConvInput):
        conv = c.m.conv
        if conv is None or conv.cid != event.cid:
            stale(c, event)
            return c.m, c.effects
        if isinstance(event, ip.Server) and conv.expecting:
            expect(c)  # anything from the server pushes the reply deadline on
    r = match(c.m, event)
    if r is not None:
        r.do(c, event)
    return c.m, c.effects


def match(model: Model, event: ip.Input) -> Row | None:
    """The row of :data:`TABLE` that handles ``event`` in ``model`` (None: nothing to do)."""
    if isinstance(event, ip.ConvInput):
        if model.conv is None or model.conv.cid != event.cid:
            return None
        state, key = model.conv.phase, type(event.event) if isinstance(event, ip.Server) else type(event)
    else:
        state, key = model.state, type(event)
    for r in _INDEX.get(key, ()):
        if state in r.states:
            return r
    return None


def stale(c: Ctx, event: ip.ConvInput) -> None:
    """An input of a conversation that has ended: only a tool's result still matters (it acted)."""
    if isinstance(event, ip.ToolDone):
        publish_tool(c, event)


def publish_tool(c: Ctx, ev: ip.ToolDone) -> None:
    c.publish(ToolCalled(name=ev.name, arguments=ev.arguments, result=ev.result, duration_s=ev.duration_s, t=c.now))
