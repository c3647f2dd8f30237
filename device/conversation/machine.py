"""The conversation state machine, pure: ``step(model, input, now) -> (model, effects)``.

Nothing here touches a socket, a sound card, a thread or the clock: the runner feeds inputs
(inputs.py) and executes the effects (effects.py). :data:`TABLE` lists every transition; read it
first. ``step`` never changes the model it is given.

The model has two levels. The speaker's public :class:`State` (idle, listening, ..., ringing) is
what LEDs and MQTT show. A conversation (:class:`Conv`, one realtime session) has its own
``phase``: it is the public state, except while the speaker rings (the ring's text is spoken by a
conversation under the ringing state) and before the wake-word arbitration is won (nothing shown).
Device inputs are matched against the public state, conversation inputs against the phase.

Here: the device's transitions and the table. model.py: the model and the step context;
replies.py: an open conversation's transitions (socket, deadlines, tools, server events);
steps.py: what transitions share (open, end, interrupt, ring, what comes next).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..events import (
    AnnouncementEvent,
    DndChanged,
    EnabledChanged,
    MuteChanged,
    State,
    StateChanged,
    Transcript,
    WakeDetected,
)
from ..realtime import protocol
from ..realtime import server_events as se
from . import effects as fx
from . import inputs as ip
from .inputs import Announcement
from .model import (
    ANY,
    DISABLED,
    ERROR,
    FOLLOW_UP,
    IDLE,
    LISTENING,
    MIN_TURN_MS,
    MUTED,
    OPEN,
    RINGING,
    SPEAKING,
    TALKING,
    THINKING,
    Conv,
    Ctx,
    Handler,
    Model,
    Params,
)
from .replies import (
    assistant_transcript,
    audio_delta,
    committed,
    connection_lost,
    function_call,
    mcp_approval,
    no_follow_up,
    no_speech,
    open_failed,
    opened,
    reply_heard,
    reply_overdue,
    response_created,
    response_done,
    server_error,
    session_aged,
    session_grace_over,
    speech_started,
    speech_stopped,
    speech_while_speaking,
    tool_done,
    transcription_failed,
    user_transcript,
)
from .steps import (
    begin,
    cancel_response,
    claimed,
    clear_turn_deadlines,
    commit_turn,
    drop_announcements,
    end,
    expect,
    follow_up,
    interrupt,
    listen,
    next_announcement,
    publish_tool,
    ring_later,
    ring_merge,
    ring_now,
    settle,
    stop_ring,
)

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


def wants_audio(model: Model) -> bool:
    """Whether a microphone frame would go anywhere now (the facade skips the step otherwise)."""
    conv = model.conv
    if conv is None or not conv.mic_open or (conv.manual and not conv.holding):
        return False
    return conv.pending is not None or conv.phase in (LISTENING, THINKING, FOLLOW_UP) or (
        conv.phase is SPEAKING and model.params.barge_in == "voice")


def frame(c: Ctx, ev: ip.Frame) -> None:
    conv = c.m.conv
    if not ev.pcm24k or not wants_audio(c.m):
        return
    assert conv is not None
    if conv.phase is SPEAKING and not ev.echo_settled:
        # An echo canceller that is cold, or learning a changed echo path, leaks bursts of the
        # reply's echo, and the server would take them for the person: while it settles, the
        # wake word interrupts.
        conv.held = True
        if not conv.settling_told:
            conv.settling_told = True
            c.log(logging.INFO, "the echo canceller is still settling: until it has heard enough of the speaker, "
                                "only the wake word interrupts a reply")
        return
    conv.held = False
    if conv.manual:
        conv.turn_ms += protocol.pcm_ms(len(ev.pcm24k))
    if conv.pending is not None:
        conv.pending += (ev.pcm24k,)
    else:
        c.send(protocol.audio_append(ev.pcm24k))


def wake_begin(c: Ctx, ev: ip.Wake) -> None:
    if c.m.conv is not None:
        c.log(logging.DEBUG, "wake word ignored: a conversation is opening")
        return
    c.publish(WakeDetected(model=ev.model, score=ev.score, t=c.now))
    begin(c, "wake", frames=ev.frames, score=ev.claim_score)


def wake_barge(c: Ctx, ev: ip.Wake) -> None:
    """The wake word while the assistant speaks: it stops and listens (no echo cancellation, or
    one still settling; with voice barge-in the server hears the person and stops the reply)."""
    if c.m.conv is None or (c.p.barge_in != "wake_word" and not c.m.conv.held):
        wake_ignored(c, ev)
        return
    conv = c.conv
    c.publish(WakeDetected(model=ev.model, score=ev.score, t=c.now))
    if conv.manual:  # push-to-talk: the reply stops; the next turn is the button's
        stop_speaking(c, ip.StopSpeaking("wake word"))
        return
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
    else:
        cancel_response(c)
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
            c.set_state(c.rest_state(), ev.source)
        c.publish(MuteChanged(muted=True, source=ev.source, t=c.now))
        c.do(fx.Persist())
        if m.ring is None:
            c.do(fx.Cue("mute_on"))
    else:
        c.do(fx.ClearPreroll(), fx.ResetWake(), fx.SetCaptureMuted(not m.enabled))
        if m.ring is None:
            c.set_state(c.rest_state(), ev.source)
        c.publish(MuteChanged(muted=False, source=ev.source, t=c.now))
        c.do(fx.Persist())
        if m.ring is None:
            c.do(fx.Cue("mute_off"))
            settle(c, ev.source)


def announce(c: Ctx, ev: ip.Announce) -> None:
    a = ev.announcement
    drop = "muted" if c.m.muted else "disabled" if not c.m.enabled else ""
    if not drop and c.m.dnd and c.p.dnd_announcements == "drop":
        drop = "do not disturb"
    if drop:
        c.publish(AnnouncementEvent(text=a.text, status="dropped", reason=drop, t=c.now))
        return
    c.m.queue += (a,)
    c.publish(AnnouncementEvent(text=a.text, status="queued", t=c.now))
    next_announcement(c)


def enable(c: Ctx, ev: ip.Enable) -> None:
    """On/off for the whole assistant; the microphone's mute stays as it is."""
    m = c.m
    if ev.enabled == m.enabled:
        return
    m.enabled = ev.enabled
    if not ev.enabled:
        drop_announcements(c, "disabled")
        if m.conv is not None and not m.conv.ring:
            c.do(fx.StopPlayback())
            end(c, "disabled", then_settle=False)
        c.do(fx.SetCaptureMuted(True), fx.ClearPreroll())  # nothing to listen for
    else:
        c.do(fx.ClearPreroll(), fx.ResetWake(), fx.SetCaptureMuted(m.muted))
    c.publish(EnabledChanged(enabled=ev.enabled, source=ev.source, t=c.now))
    c.do(fx.Persist())
    if m.ring is None and m.conv is None:
        c.set_state(c.rest_state(), ev.source)


def dnd(c: Ctx, ev: ip.Dnd) -> None:
    if ev.on == c.m.dnd:
        return
    c.m.dnd = ev.on
    c.publish(DndChanged(on=ev.on, source=ev.source, t=c.now))
    c.do(fx.Persist())
    if not ev.on:
        next_announcement(c)  # what waited for the quiet to end


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
    else:
        cancel_response(c)
    conv.turn += 1
    c.send(protocol.user_text(ev.text))
    c.send(protocol.response_create())
    c.publish(Transcript(role="user", text=ev.text, t=c.now))
    clear_turn_deadlines(c)
    expect(c)
    c.phase(THINKING, ev.source)


# ---- ringing --------------------------------------------------------------------------------------


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


def tools_changed(c: Ctx, ev: ip.ToolsChanged) -> None:
    # Devices discovered mid-conversation become usable at once.
    if c.m.conv is not None and c.m.conv.stage == "open":
        c.do(fx.UpdateTools(c.m.conv.cid))


def error_shown(c: Ctx, ev: ip.ErrorShown) -> None:
    settle(c, "error shown")


# ==== the table ===================================================================================

@dataclass(frozen=True)
class Row:
    states: frozenset[State]  # public state (device inputs) or conversation phase (conversation inputs)
    on: type  # an input class, or a server event class (inside inputs.Server)
    do: Handler


def row(states: State | frozenset[State], on: type, do: Handler) -> Row:
    return Row(frozenset({states}) if isinstance(states, State) else states, on, do)



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
    row(ANY, ip.Enable, enable),
    row(ANY, ip.Dnd, dnd),
    row(ANY, ip.Announce, announce),
    row(IDLE, ip.Ask, ask_new),
    row(TALKING, ip.Ask, ask_in_conversation),
    row(ANY, ip.Ask, ignored),
    row(frozenset({IDLE, MUTED, ERROR, DISABLED}), ip.Ring, ring_now),
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
    row(OPEN, se.McpApprovalRequest, mcp_approval),
    row(OPEN, se.ResponseDone, response_done),
)

_INDEX: dict[type, tuple[Row, ...]] = {}
for _row in TABLE:
    _INDEX[_row.on] = _INDEX.get(_row.on, ()) + (_row,)


DUE_SLACK_S = 0.25


def step(model: Model, event: ip.Input, now: float) -> tuple[Model, list[fx.Effect]]:
    """Apply ``event`` at monotonic time ``now``: the new model and what to do. Pure."""
    c = Ctx(model.copy(), now)
    if isinstance(event, ip.ConvInput):
        conv = c.m.conv
        if conv is None or conv.cid != event.cid:
            stale(c, event)
            return c.m, c.effects
        if isinstance(event, ip.Server) and conv.expecting and c.now + c.p.response_timeout_s - conv.due_at > DUE_SLACK_S:
            expect(c)  # anything from the server pushes the reply deadline on (re-armed in steps, not per event)
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


__all__ = ["TABLE", "Conv", "Model", "Params", "Row", "match", "step", "wants_audio"]
