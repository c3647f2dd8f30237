"""Transitions of an open conversation: its socket, its deadlines, its tools, and the server's
events (typed, from device/realtime/server_events.py)."""

from __future__ import annotations

import logging

from ..events import (
    AnnouncementEvent,
    ErrorEvent,
    ResponseEvent,
    Transcript,
)
from ..realtime import protocol
from ..realtime import server_events as se
from . import effects as fx
from . import inputs as ip
from .model import (
    BENIGN_ERRORS,
    FOLLOW_UP,
    LISTENING,
    SPEAKING,
    THINKING,
    Ctx,
    summed_usage,
)
from .steps import (
    cancel_response,
    clear_turn_deadlines,
    commit_turn,
    end,
    expect,
    fail,
    follow_up,
    interrupt,
    listen,
    publish_tool,
)


def opened(c: Ctx, ev: ip.Opened) -> None:
    conv = c.conv
    conv.stage = "open"
    conv.opened_at = c.now
    c.do(fx.Configure(conv.cid, manual_turns=conv.manual))
    pending, conv.pending = conv.pending or (), None
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
        running = running - {ev.call_id}
        conv.calls = {**conv.calls, ev.response_id: running}
    turn = conv.awaiting.get(ev.response_id)
    if turn is not None and not running:
        conv.awaiting = {k: v for k, v in conv.awaiting.items() if k != ev.response_id}
        conv.calls = {k: v for k, v in conv.calls.items() if k != ev.response_id}
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

MAX_ERRORS_TOLD = 3  # per conversation; the rest at debug level


def server_error(c: Ctx, ev: ip.Server) -> None:
    err: se.ServerError = ev.event
    if err.code in BENIGN_ERRORS:
        c.log(logging.DEBUG, f"server: {err.code}: {err.message}")
        return
    text = f"server error {err.code}: {err.message}" + (f" (in reply to {ev.culprit})" if ev.culprit else "")
    if ev.culprit == "session.update":
        # The server rejects a whole update: going on would mean no instructions, no tools,
        # and the server's default turn detection. Say so instead of a worse assistant.
        c.log(logging.WARNING, text)
        fail(c, "session", f"the server rejected the session configuration: {err.code}: {err.message}")
        return
    if err.code == "session_expired":
        # The server closes the socket next; that close is the failure, logged once there.
        c.log(logging.INFO, text)
        return
    c.conv.last_error_t = c.now
    tell_error(c, text, f"{err.code}: {err.message}")


def tell_error(c: Ctx, text: str, message: str) -> bool:
    """Log a server-side error and publish it, for the first few of a conversation; a server gone
    haywire then goes on at debug level, so the journal stays readable. True if it was told."""
    conv = c.conv
    if conv.errors_told >= MAX_ERRORS_TOLD:
        c.log(logging.DEBUG, text)
        return False
    conv.errors_told += 1
    more = " (further server errors in this conversation are logged at debug level)" if conv.errors_told == MAX_ERRORS_TOLD else ""
    c.log(logging.WARNING, text + more)
    c.publish(ErrorEvent(where="session", message=message, t=c.now))
    return True


def speech_while_speaking(c: Ctx, ev: ip.Server) -> None:
    if c.p.barge_in != "voice":
        # Speech in audio streamed before the reply began; only the wake word interrupts.
        c.log(logging.DEBUG, "speech started while speaking (wake_word barge-in): not an interruption")
        return
    speech_started(c, ev)


def speech_started(c: Ctx, ev: ip.Server) -> None:
    conv = c.conv
    # The person goes on talking: drop whatever of the reply still arrives. With barge_in = "voice"
    # the server cancels it itself (interrupt_response is on; a response.cancel would only race it);
    # with "wake_word" nothing has played yet, so cancelling cannot be the speaker hearing itself.
    cancel_response(c, send=c.p.barge_in != "voice")
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
        conv.out_of_band |= {ev.event.response_id}
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
    conv = c.conv
    conv.calls = {**conv.calls, e.response_id: conv.calls.get(e.response_id, frozenset()) | {e.call_id}}
    c.do(fx.CallTool(c.conv.cid, e.call_id, e.name, e.arguments, e.response_id))


MCP_DECLINE_REASON = "This speaker cannot ask anyone to approve tool calls; set require_approval = \"never\" to allow them."


def mcp_approval(c: Ctx, ev: ip.Server) -> None:
    """A remote MCP server asks approval for a call: declined (nobody to ask); the model answers
    the decline in a response of its own once this one is done, as after a function call."""
    e: se.McpApprovalRequest = ev.event
    c.log(logging.WARNING, f"MCP server {e.server_label} asks approval to call {e.name}: declined (the device has no approval step)")
    c.send(protocol.mcp_approval_response(e.request_id, False, MCP_DECLINE_REASON))
    if e.response_id:
        conv = c.conv
        conv.calls = {**conv.calls, e.response_id: conv.calls.get(e.response_id, frozenset())}
    else:
        c.send(protocol.response_create())
        expect(c)


def response_done(c: Ctx, ev: ip.Server) -> None:
    conv = c.conv
    e: se.ResponseDone = ev.event
    if e.usage:
        conv.usage = summed_usage(conv.usage, e.usage)
        c.log(logging.INFO, f"response {e.response_id}: {e.status}; usage {e.usage}")
    c.publish(ResponseEvent(response_id=e.response_id, status=e.status, usage=e.usage, t=c.now))
    if e.response_id == conv.active_response:
        conv.active_response = None
    expect(c, False)
    running = conv.calls.get(e.response_id)
    if e.response_id in conv.cancelled or e.status == "cancelled":
        # Interrupted (by us or by the server's VAD): the person's new turn decides what follows.
        conv.calls = {k: v for k, v in conv.calls.items() if k != e.response_id}
        return
    if e.status == "failed":
        message = e.error or "no details"
        if c.now - conv.last_error_t <= 1.0:  # the error event said it already
            c.log(logging.INFO, f"response {e.response_id} failed: {message}")
            told = conv.errors_told <= MAX_ERRORS_TOLD
        else:
            told = tell_error(c, f"response {e.response_id} failed: {message}", f"response failed: {message}")
        if told:  # the person hears that this turn failed; they may try again (not a cue per fuzzed event)
            c.do(fx.Cue("error"))
    if running is not None:
        if running:
            conv.awaiting = {**conv.awaiting, e.response_id: conv.turn}
        else:
            conv.calls = {k: v for k, v in conv.calls.items() if k != e.response_id}
            c.send(protocol.response_create())
            expect(c)
    elif conv.spoke:
        c.do(fx.AwaitDrain(conv.cid, conv.turn, conv.reply_ms / 1000 + c.p.drain_slack_s))
    else:
        reply_heard(c, ip.ReplyHeard(conv.cid, conv.turn))
