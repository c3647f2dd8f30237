"""Steps the machine's transitions share: opening and ending a conversation, turn deadlines,
barge-in, ringing, and what comes next when nothing is going on."""

from __future__ import annotations

import logging

from ..events import (
    AnnouncementEvent,
    ConversationEnded,
    ErrorEvent,
    RingStarted,
    RingStopped,
    ToolCalled,
)
from ..realtime import protocol
from . import effects as fx
from . import inputs as ip
from .inputs import Announcement
from .model import (
    CONV_DEADLINES,
    ERROR,
    FOLLOW_UP,
    IDLE,
    LISTENING,
    NORMAL_ENDS,
    RINGING,
    THINKING,
    Conv,
    Ctx,
    Ringing,
)


def begin(
    c: Ctx, trigger: str, *, frames: tuple[bytes, ...] | None = None, score: float = 0.0, prompt: str | None = None,
    announcement: Announcement | None = None, ring: bool = False, question: str | None = None, manual: bool = False,
) -> None:
    m = c.m
    conv = Conv(cid=m.next_cid, trigger=trigger, prompt=prompt, announcement=announcement, ring=ring, manual=manual)
    m.next_cid += 1
    conv.mic_open = frames is not None
    conv.pending = tuple(f for f in frames or () if f)
    conv.question = question
    m.conv = conv
    if trigger == "wake" and c.p.arbitration:
        c.do(fx.Claim(conv.cid, score))
        return
    claimed(c, ip.Claimed(conv.cid, True))


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
        c.conv.due_at = c.now + c.p.response_timeout_s
        c.arm("due", c.conv.due_at, ip.ReplyOverdue(c.conv.cid))
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


def cancel_response(c: Ctx, *, send: bool = True) -> None:
    """Drop whatever of the response being generated still arrives, and ask the server to stop it.

    A response already cancelled (its response.done still on the way) is not cancelled twice: the
    server would answer response_cancel_not_active."""
    conv = c.conv
    rid = conv.active_response
    if rid is None:
        return
    if send and rid not in conv.cancelled:
        c.send(protocol.response_cancel())
    conv.cancelled |= {rid}


def interrupt(c: Ctx, why: str, *, cancel: bool = True) -> None:
    """Silence the speaker now, drop the rest of the reply, tell the server what was heard."""
    conv = c.conv
    cancel_response(c, send=cancel)
    if conv.item_response:
        conv.cancelled |= {conv.item_response}
    # An out-of-band reply is no item of the conversation: nothing to truncate at the server.
    c.do(fx.Truncate(conv.cid, None if conv.item_response in conv.out_of_band else conv.item, why))
    conv.item = conv.item_response = None
    conv.turn += 1
    expect(c, False)


def commit_turn(c: Ctx) -> None:
    c.send(protocol.audio_commit())
    c.send(protocol.response_create())
    expect(c)
    c.phase(THINKING, "turn committed")


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
    c.set_state(c.rest_state(), reason)
    if m.started:
        next_announcement(c)


def next_announcement(c: Ctx) -> None:
    m = c.m
    if m.muted or m.dnd or m.conv is not None or m.state is not IDLE or not m.queue:
        return
    ann, m.queue = m.queue[0], m.queue[1:]
    begin(c, "announce", announcement=ann)


def drop_announcements(c: Ctx, reason: str) -> None:
    queue, c.m.queue = c.m.queue, ()
    for ann in queue:
        c.publish(AnnouncementEvent(text=ann.text, status="dropped", reason=reason, t=c.now))


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


def publish_tool(c: Ctx, ev: ip.ToolDone) -> None:
    c.publish(ToolCalled(name=ev.name, arguments=ev.arguments, result=ev.result, duration_s=ev.duration_s, t=c.now))
