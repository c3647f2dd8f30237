"""The conversation machine on its own: no sockets, audio or threads, only inputs and effects.

Every row of the transition table is exercised here (the last test checks it), and the races
that the end-to-end tests can only hit by luck are played out exactly."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import pytest

from device.conversation import effects as fx
from device.conversation import inputs as ip
from device.conversation.machine import TABLE, Model, Params, Row, match, step
from device.events import (
    AnnouncementEvent,
    ConversationEnded,
    DndChanged,
    EnabledChanged,
    ErrorEvent,
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
from device.realtime import server_events as se

USED: set[int] = set()  # ids of the table rows that fired in this module


class M:
    """The machine with a clock and a log of what it asked for."""

    def __init__(self, **params: Any) -> None:
        self.model = Model(params=Params(**params))
        self.now = 100.0
        self.effects: list[fx.Effect] = []
        self.feed(ip.Start())

    def feed(self, event: ip.Input, dt: float = 0.0) -> list[fx.Effect]:
        self.now += dt
        r = match(self.model, event)
        if r is not None:
            USED.add(id(r))
        given = self.model
        frozen = repr(given)
        self.model, out = step(given, event, self.now)
        assert repr(given) == frozen, "step changed the model it was given"
        self.effects += out
        return out

    def server(self, type_: str, **fields: Any) -> list[fx.Effect]:
        return self.feed(ip.Server(self.cid, se.parse({"type": type_, **fields})))

    @property
    def cid(self) -> int:
        assert self.model.conv is not None
        return self.model.conv.cid

    @property
    def state(self) -> State:
        return self.model.state

    # -- scripted stretches --
    def wake(self, frames: tuple[bytes, ...] = (b"\1\0" * 10,)) -> list[fx.Effect]:
        return self.feed(ip.Wake("hey_jarvis", 0.9, frames))

    def open_listening(self) -> None:
        self.wake()
        self.feed(ip.Opened(self.cid))
        assert self.state is State.LISTENING

    def speaking(self, rid: str = "r1", item: str = "i1") -> None:
        self.open_listening()
        self.server("input_audio_buffer.speech_started")
        self.server("input_audio_buffer.speech_stopped")
        self.server("response.created", response={"id": rid})
        self.audio(rid, item)
        assert self.state is State.SPEAKING

    def audio(self, rid: str, item: str, ms: int = 100) -> list[fx.Effect]:
        pcm = b"\0\0" * 24 * ms
        return self.server("response.output_audio.delta", response_id=rid, item_id=item, delta=base64.b64encode(pcm).decode())

    def follow_up(self) -> None:
        self.speaking()
        self.server("response.done", response={"id": "r1", "status": "completed", "usage": {"total_tokens": 5}})
        self.feed(ip.ReplyHeard(self.cid, self.model.conv.turn))  # type: ignore[union-attr]
        assert self.state is State.FOLLOW_UP

    def of(self, kind: type, effects: Iterable[fx.Effect] | None = None) -> list[Any]:
        return [e for e in (self.effects if effects is None else effects) if isinstance(e, kind)]

    def published(self, kind: type, effects: Iterable[fx.Effect] | None = None) -> list[Any]:
        return [e.event for e in self.of(fx.Publish, effects) if isinstance(e.event, kind)]

    def sent(self, effects: Iterable[fx.Effect] | None = None) -> list[str]:
        return [e.event["type"] for e in self.of(fx.Send, effects)]

    def states(self) -> list[str]:
        return [e.new.value for e in self.published(StateChanged) if e.old is not e.new]

    def armed(self, name: str) -> fx.Arm:
        return [e for e in self.of(fx.Arm) if e.name == name][-1]


# ---- a whole conversation ------------------------------------------------------------------------

def test_wake_word_conversation_then_follow_up_then_idle() -> None:
    m = M(follow_up_s=3.0)
    out = m.wake(frames=(b"\1\0" * 4, b"", b"\2\0" * 4))
    assert m.published(WakeDetected, out) and m.state is State.LISTENING
    assert [e.name for e in m.of(fx.Cue, out)] == ["wake"] and m.of(fx.Open, out)
    m.feed(ip.Frame(b"\3\0" * 4))  # held while the socket opens
    assert not m.of(fx.Send)
    out = m.feed(ip.Opened(m.cid), 0.2)
    assert m.of(fx.Configure, out) and m.sent(out) == ["input_audio_buffer.append"] * 3  # pre-roll and held frame
    assert {a.name for a in m.of(fx.Arm, out)} == {"listen", "age"}
    m.feed(ip.Frame(b"\4\0" * 4))
    assert m.sent()[-1] == "input_audio_buffer.append"
    m.server("input_audio_buffer.speech_started")
    out = m.server("input_audio_buffer.speech_stopped")
    assert m.state is State.THINKING and m.armed("due").at == m.now + 15.0
    m.server("conversation.item.input_audio_transcription.failed", item_id="u0", error={"message": "noise"})
    m.server("conversation.item.input_audio_transcription.completed", item_id="u1", transcript=" hello ")
    out = m.server("response.created", response={"id": "r1"})
    assert m.published(ResponseEvent, out)[0].status == "created"
    out = m.audio("r1", "i1")
    assert m.state is State.SPEAKING and m.of(fx.BeginReply, out)[0].item_id == "i1" and m.of(fx.PlayAudio, out)
    out = m.audio("r1", "i1")
    assert not m.of(fx.BeginReply, out)
    m.server("response.output_audio_transcript.done", response_id="r1", item_id="i1", transcript="Hi.")
    out = m.server("response.done", response={"id": "r1", "status": "completed", "usage": {"total_tokens": 7, "x": {"a": 1}}})
    drain, = m.of(fx.AwaitDrain, out)
    assert drain.timeout_s == pytest.approx(0.2 + 5.0)
    assert m.published(ResponseEvent, out)[0].usage == {"total_tokens": 7, "x": {"a": 1}}
    out = m.feed(ip.ReplyHeard(m.cid, drain.turn), 0.3)
    assert m.state is State.FOLLOW_UP and m.armed("follow").at == m.now + 3.0
    out = m.feed(ip.FollowUpTimeout(m.cid), 3.0)
    assert m.of(fx.Close, out) and [e.name for e in m.of(fx.Cue, out)] == ["done"]
    ended, = m.published(ConversationEnded, out)
    assert ended.reason == "no follow-up" and ended.usage == {"total_tokens": 7, "x": {"a": 1}}
    assert m.states() == ["listening", "thinking", "speaking", "follow_up", "idle"]
    assert [(t.role, t.text) for t in m.published(Transcript)] == [("user", "hello"), ("assistant", "Hi.")]
    assert m.model.conv is None


def test_no_speech_after_the_wake_word_ends_the_conversation() -> None:
    m = M()
    m.open_listening()
    out = m.feed(ip.ListenTimeout(m.cid), 8.0)
    assert m.published(ConversationEnded, out)[0].reason == "no speech" and m.state is State.IDLE
    m.open_listening()
    out = m.server("input_audio_buffer.timeout_triggered")
    assert m.published(ConversationEnded, out)[0].reason == "no speech"


def test_committed_turn_and_the_talk_button_in_each_state() -> None:
    m = M()
    m.feed(ip.TalkPressed((b"\1\0",)))  # idle: a conversation
    assert m.state is State.LISTENING and m.model.conv.trigger == "button"  # type: ignore[union-attr]
    m.feed(ip.Opened(m.cid))
    m.server("input_audio_buffer.committed", item_id="u1")
    assert m.state is State.THINKING
    out = m.feed(ip.TalkPressed())  # thinking: end
    assert m.published(ConversationEnded, out)[0].reason == "talk button"
    m.speaking()
    out = m.feed(ip.TalkPressed())  # speaking: stop the reply, listen for the answer
    assert m.of(fx.Truncate, out) and m.state is State.FOLLOW_UP
    m.feed(ip.Mute(True, "test"))
    out = m.feed(ip.TalkPressed())  # muted: nothing
    assert m.state is State.MUTED and not m.of(fx.Open, out)


def test_start_conversation_with_a_prompt_speaks_first() -> None:
    m = M()
    m.feed(ip.StartConversation("mqtt", "Ask about the lights."))
    assert m.state is State.THINKING and not m.model.conv.mic_open  # type: ignore[union-attr]
    out = m.feed(ip.Opened(m.cid))
    assert m.of(fx.Prompt, out)[0].text == "Ask about the lights." and m.armed("due")
    m.feed(ip.Frame(b"\1\0"))
    assert "input_audio_buffer.append" not in m.sent()
    out = m.feed(ip.StartConversation("mqtt"))  # one at a time
    assert not m.of(fx.Open, out)


# ---- races ---------------------------------------------------------------------------------------

def test_reply_audio_arriving_after_a_wake_word_barge_in_is_dropped() -> None:
    m = M()
    m.speaking()
    out = m.wake()
    assert m.sent(out)[0] == "response.cancel"
    trunc, = m.of(fx.Truncate, out)
    assert trunc.item_id == "i1" and m.state is State.LISTENING
    assert [e.name for e in m.of(fx.Cue, out)] == ["wake"] and m.sent(out).count("input_audio_buffer.append") == 1
    out = m.audio("r1", "i1")  # already on its way
    assert not m.of(fx.PlayAudio, out) and m.state is State.LISTENING
    out = m.server("response.done", response={"id": "r1", "status": "cancelled"})
    assert not m.of(fx.AwaitDrain, out) and m.state is State.LISTENING
    # A drain wait of the interrupted turn that completes late changes nothing.
    out = m.feed(ip.ReplyHeard(m.cid, 0))
    assert m.state is State.LISTENING and not out


def test_speech_after_a_wake_word_barge_in_does_not_cancel_the_reply_twice() -> None:
    """The server's response.done for the cancelled reply may come after the person's speech starts:
    a second response.cancel would only earn a response_cancel_not_active error."""
    m = M()
    m.speaking()
    out = m.wake()
    assert m.sent(out).count("response.cancel") == 1
    out = m.server("input_audio_buffer.speech_started")  # the words after "hey jarvis"
    assert "response.cancel" not in m.sent(out) and m.state is State.LISTENING
    m.server("response.done", response={"id": "r1", "status": "cancelled"})
    m.server("input_audio_buffer.speech_stopped")
    m.server("response.created", response={"id": "r2"})
    out = m.server("input_audio_buffer.speech_started")  # a new reply is still cancelled
    assert m.sent(out) == ["response.cancel"]


def test_voice_barge_in_and_speech_during_the_reply_with_wake_word_barge_in() -> None:
    m = M()  # wake_word: speech while speaking is the audio from before the reply
    m.speaking()
    out = m.server("input_audio_buffer.speech_started")
    assert m.state is State.SPEAKING and not m.of(fx.Truncate, out)
    v = M(barge_in="voice")
    v.speaking()
    v.feed(ip.Frame(b"\1\0"))
    assert v.sent()[-1] == "input_audio_buffer.append"  # the mic stays open while speaking
    out = v.server("input_audio_buffer.speech_started")
    assert v.of(fx.Truncate, out) and "response.cancel" not in v.sent(out)  # the server cancels itself
    assert v.state is State.LISTENING


def test_reply_is_not_streamed_while_the_echo_canceller_settles_and_the_wake_word_interrupts_it() -> None:
    v = M(barge_in="voice")
    v.speaking()
    out = v.feed(ip.Frame(b"\1\0", echo_settled=False))  # a cold canceller may leak the reply's echo
    assert "input_audio_buffer.append" not in v.sent(out) and v.state is State.SPEAKING
    out = v.wake()  # so the wake word, which the server does not hear now, stops the reply
    assert v.sent(out)[0] == "response.cancel" and v.of(fx.Truncate, out) and v.state is State.LISTENING
    out = v.feed(ip.Frame(b"\1\0", echo_settled=False))  # the person's turn is streamed as always
    assert v.sent(out) == ["input_audio_buffer.append"]
    w = M(barge_in="voice")
    w.speaking()
    out = w.feed(ip.Frame(b"\1\0", echo_settled=True))  # settled: streamed, and the server hears the person
    assert w.sent(out) == ["input_audio_buffer.append"]
    out = w.wake()
    assert not w.sent(out) and w.state is State.SPEAKING


def test_speech_before_the_reply_audio_cancels_the_reply() -> None:
    m = M()
    m.open_listening()
    m.server("input_audio_buffer.speech_started")
    m.server("input_audio_buffer.speech_stopped")
    m.server("response.created", response={"id": "r1"})
    out = m.server("input_audio_buffer.speech_started")  # the person goes on talking
    assert m.sent(out) == ["response.cancel"] and m.state is State.LISTENING
    out = m.audio("r1", "i1")
    assert not m.of(fx.PlayAudio, out)


def test_function_call_result_after_the_session_closed_is_published_not_sent() -> None:
    m = M()
    m.open_listening()
    m.server("input_audio_buffer.speech_stopped")
    m.server("response.created", response={"id": "r1"})
    out = m.server("response.function_call_arguments.done", response_id="r1", call_id="c1", name="control_device", arguments="{}")
    call, = m.of(fx.CallTool, out)
    cid = m.cid
    m.server("response.done", response={"id": "r1", "status": "completed"})
    m.feed(ip.Mute(True, "button"))
    assert m.model.conv is None
    out = m.feed(ip.ToolDone(cid, "c1", "r1", "control_device", {}, {"ok": True}, 0.1, '{"ok": true}'))
    assert m.published(ToolCalled, out) and not m.of(fx.Send, out) and m.state is State.MUTED


def test_tool_results_then_one_response_create() -> None:
    m = M()
    m.open_listening()
    m.server("input_audio_buffer.speech_stopped")
    m.server("response.created", response={"id": "r1"})
    m.server("response.function_call_arguments.done", response_id="r1", call_id="c1", name="a", arguments="{}")
    m.server("response.function_call_arguments.done", response_id="r1", call_id="c2", name="b", arguments="{}")
    out = m.feed(ip.ToolDone(m.cid, "c1", "r1", "a", output_json="1"))  # before response.done
    assert m.sent(out) == ["conversation.item.create"]
    out = m.server("response.done", response={"id": "r1", "status": "completed"})
    assert "response.create" not in m.sent(out)  # c2 still runs
    out = m.feed(ip.ToolDone(m.cid, "c2", "r1", "b", output_json="2"))
    assert m.sent(out) == ["conversation.item.create", "response.create"] and m.armed("due")
    # A quick tool done before response.done: the answer is asked for at once.
    m.server("response.created", response={"id": "r2"})
    m.server("response.function_call_arguments.done", response_id="r2", call_id="c3", name="a", arguments="{}")
    m.feed(ip.ToolDone(m.cid, "c3", "r2", "a", output_json="3"))
    out = m.server("response.done", response={"id": "r2", "status": "completed"})
    assert m.sent(out) == ["response.create"]


def test_a_remote_mcp_approval_request_is_declined_then_the_model_answers() -> None:
    m = M()
    m.open_listening()
    m.server("input_audio_buffer.speech_stopped")
    m.server("response.created", response={"id": "r1"})
    item = {"id": "mcpr_1", "type": "mcp_approval_request", "server_label": "calendar", "name": "delete_event", "arguments": "{}"}
    assert m.sent(m.server("conversation.item.done", item=item)) == []  # the same item as a conversation item: no second answer
    out = m.server("response.output_item.done", response_id="r1", output_index=0, item=item)
    decline = [e.event for e in m.of(fx.Send, out)]
    assert len(decline) == 1 and decline[0]["item"]["approval_request_id"] == "mcpr_1" and decline[0]["item"]["approve"] is False
    assert any("asks approval to call delete_event: declined" in e.message for e in m.of(fx.Log, out))
    out = m.server("response.done", response={"id": "r1", "status": "completed"})
    assert m.sent(out) == ["response.create"] and m.state is State.THINKING  # the model tells the person


def test_end_conversation_tool_ends_after_the_goodbye() -> None:
    m = M()
    m.speaking()
    m.feed(ip.RequestEnd("end_conversation"))
    m.server("response.done", response={"id": "r1", "status": "completed"})
    out = m.feed(ip.ReplyHeard(m.cid, m.model.conv.turn))  # type: ignore[union-attr]
    assert m.published(ConversationEnded, out)[0].reason == "end_conversation" and "follow_up" not in m.states()


def test_wake_word_while_thinking_or_opening_is_ignored() -> None:
    m = M()
    m.open_listening()
    m.server("input_audio_buffer.speech_stopped")
    assert m.state is State.THINKING
    out = m.wake()
    assert not m.published(WakeDetected, out) and not m.of(fx.Truncate, out) and m.state is State.THINKING
    a = M(arbitration=True)
    out = a.wake()
    assert m.state is not State.IDLE and a.of(fx.Claim, out) and a.state is State.IDLE  # nothing shown yet
    out = a.wake()
    assert not a.of(fx.Claim, out)


def test_losing_the_arbitration_shows_and_plays_nothing() -> None:
    m = M(arbitration=True)
    m.wake()
    out = m.feed(ip.Claimed(m.cid, False))
    assert m.of(fx.Close, out) and not m.of(fx.Cue, out) and not m.published(ConversationEnded, out)
    assert m.states() == [] and m.model.conv is None
    m.wake()
    m.feed(ip.Claimed(m.cid, True))
    assert m.state is State.LISTENING and m.of(fx.Open)


@pytest.mark.parametrize("where", ["idle", "opening", "listening", "thinking", "speaking", "follow_up", "error", "muted"])
def test_mute_in_every_state(where: str) -> None:
    m = M()
    if where == "opening":
        m.wake()
    elif where == "listening":
        m.open_listening()
    elif where == "thinking":
        m.open_listening()
        m.server("input_audio_buffer.speech_stopped")
    elif where == "speaking":
        m.speaking()
    elif where == "follow_up":
        m.follow_up()
    elif where == "error":
        m.wake()
        m.feed(ip.OpenFailed(m.cid, "token", "401"))
        assert m.state is State.ERROR
    elif where == "muted":
        m.feed(ip.Mute(True, "test"))
    had_conv = m.model.conv is not None
    cid = m.model.conv.cid if had_conv else 0  # type: ignore[union-attr]
    out = m.feed(ip.Mute(True, "button"))
    assert m.state is State.MUTED and m.model.muted and m.model.conv is None
    if where != "muted":
        assert m.of(fx.SetCaptureMuted, out)[0].muted and m.published(MuteChanged, out)[0].muted
        assert [e.name for e in m.of(fx.Cue, out)] == ["mute_on"] and m.of(fx.Persist, out)
    assert bool(m.of(fx.Close, out)) == had_conv
    if had_conv:
        assert m.published(ConversationEnded, out)[0].reason == "muted"
        # Whatever the closed session still says changes nothing.
        assert not m.feed(ip.Server(cid, se.parse({"type": "response.created", "response": {"id": "x"}})))
    out = m.feed(ip.Frame(b"\1\0"))
    assert not m.of(fx.Send, out)
    m.feed(ip.ErrorShown())
    assert m.state is State.MUTED
    out = m.feed(ip.Mute(False, "button"))
    assert m.state is State.IDLE and not m.of(fx.SetCaptureMuted, out)[0].muted and m.of(fx.ResetWake, out)


# ---- failures ------------------------------------------------------------------------------------

def test_silent_server_is_an_error_then_idle() -> None:
    m = M(response_timeout_s=1.5)
    m.open_listening()
    m.server("input_audio_buffer.speech_stopped")
    due = m.armed("due")
    assert due.at == m.now + 1.5
    m.server("rate_limits.updated", rate_limits=[])  # anything from the server pushes the deadline on
    assert m.armed("due").at == m.now + 1.5
    out = m.feed(ip.ReplyOverdue(m.cid), 1.5)
    err, = m.published(ErrorEvent, out)
    assert err.where == "session" and "sent nothing" in err.message and m.state is State.ERROR
    assert [e.name for e in m.of(fx.Cue, out)] == ["error"] and m.of(fx.StopPlayback, out)
    assert m.armed("error").at - m.now < 2.0
    m.feed(ip.ErrorShown())
    assert m.state is State.IDLE


def test_server_errors() -> None:
    m = M()
    m.open_listening()
    out = m.server("error", error={"type": "invalid_request_error", "code": "response_cancel_not_active", "message": "x"})
    assert not m.published(ErrorEvent, out)
    out = m.server("error", error={"type": "server_error", "message": "boom"})
    assert m.published(ErrorEvent, out)[0].message == "server_error: boom" and m.model.conv is not None
    out = m.feed(ip.Server(m.cid, se.parse({"type": "error", "error": {"type": "invalid_request_error", "code": "unknown_parameter",
                                                                      "event_id": "e1"}}), "session.update"))
    assert "rejected the session configuration" in m.published(ErrorEvent, out)[0].message and m.state is State.ERROR


def test_a_flood_of_server_errors_is_told_three_times_then_kept_quiet() -> None:
    m = M()
    m.open_listening()
    told = [m.published(ErrorEvent, m.server("error", error={"type": "server_error", "message": f"boom {i}"})) for i in range(50)]
    assert sum(len(t) for t in told) == 3 and m.model.conv is not None  # the journal and MQTT stay readable
    m.server("response.created", response={"id": "r9"})
    out = m.feed(ip.Server(m.cid, se.parse({"type": "response.done", "response": {"id": "r9", "status": "failed"}})), dt=2.0)
    assert not m.published(ErrorEvent, out) and not m.of(fx.Cue, out)  # no error cue per fuzzed event either


def test_session_expired_is_one_failure_when_the_server_closes() -> None:
    m = M()
    m.speaking()
    out = m.server("error", error={"type": "invalid_request_error", "code": "session_expired", "message": "max duration"})
    assert not m.published(ErrorEvent, out) and m.state is State.SPEAKING
    out = m.feed(ip.ConnectionLost(m.cid, "server closed the connection (code 1000: session expired)"))
    assert len(m.published(ErrorEvent, out)) == 1 and m.state is State.ERROR


def test_failed_response_plays_the_error_cue_and_the_session_goes_on() -> None:
    m = M()
    m.open_listening()
    m.server("input_audio_buffer.speech_stopped")
    m.server("response.created", response={"id": "r1"})
    out = m.server("response.done", response={"id": "r1", "status": "failed", "status_details": {"error": {"message": "bad"}}})
    assert m.published(ErrorEvent, out)[0].message == "response failed: bad" and [c.name for c in m.of(fx.Cue, out)] == ["error"]
    assert m.state is State.FOLLOW_UP


def test_connection_lost_mid_reply_and_in_the_follow_up() -> None:
    m = M()
    m.speaking()
    out = m.feed(ip.ConnectionLost(m.cid, "gone"))
    assert "connection lost while speaking" in m.published(ErrorEvent, out)[0].message and m.state is State.ERROR
    m.feed(ip.ErrorShown())
    m.follow_up()
    out = m.feed(ip.ConnectionLost(m.cid, "bye"))
    assert m.published(ConversationEnded, out)[0].reason == "closed by the server" and m.state is State.IDLE


def test_session_age_ends_after_the_reply_or_at_once_when_idle() -> None:
    m = M(max_session_s=10.0)
    m.speaking()
    m.feed(ip.SessionAged(m.cid), 10)
    assert m.model.conv.end_reason == "session limit" and m.armed("grace")  # type: ignore[union-attr]
    m.server("response.done", response={"id": "r1", "status": "completed"})
    out = m.feed(ip.ReplyHeard(m.cid, m.model.conv.turn))  # type: ignore[union-attr]
    assert m.published(ConversationEnded, out)[0].reason == "session limit"
    m.follow_up()
    out = m.feed(ip.SessionAged(m.cid))
    assert m.published(ConversationEnded, out)[0].reason == "session limit"
    m.speaking()
    m.feed(ip.SessionAged(m.cid))
    out = m.feed(ip.SessionGraceOver(m.cid), 60)
    assert m.published(ConversationEnded, out)[0].reason == "session limit"


def test_shutdown_closes_and_tools_changed_updates_an_open_session() -> None:
    m = M()
    m.open_listening()
    out = m.feed(ip.ToolsChanged())
    assert m.of(fx.UpdateTools, out)
    out = m.feed(ip.Shutdown())
    assert m.of(fx.Close, out) and m.published(ConversationEnded, out)[0].reason == "shutdown"


# ---- announcements, questions, automations -------------------------------------------------------

def test_announcement_waits_for_the_conversation_and_is_read_verbatim() -> None:
    m = M()
    m.open_listening()
    out = m.feed(ip.Announce(ip.Announcement("The wash is done.")))
    assert m.published(AnnouncementEvent, out)[0].status == "queued" and not m.of(fx.Open, out)
    out = m.feed(ip.ListenTimeout(m.cid), 8)
    assert m.state is State.THINKING and m.of(fx.Open, out) and m.model.conv.trigger == "announce"  # type: ignore[union-attr]
    out = m.feed(ip.Opened(m.cid))
    create, = [e.event for e in m.of(fx.Send, out) if e.event["type"] == "response.create"]
    assert "The wash is done." in create["response"]["instructions"] and create["response"]["tool_choice"] == "none"
    assert create["response"]["conversation"] == "none"  # out of band: it does not pollute the conversation
    m.server("response.created", response={"id": "a1"})
    m.audio("a1", "ai1")
    m.server("response.done", response={"id": "a1", "status": "completed"})
    out = m.feed(ip.ReplyHeard(m.cid, 0))
    assert m.published(AnnouncementEvent, out)[0].status == "spoken" and m.state is State.IDLE
    m.feed(ip.Mute(True, "test"))
    out = m.feed(ip.Announce(ip.Announcement("Nobody hears this.")))
    assert m.published(AnnouncementEvent, out)[0].reason == "muted"


def test_stopping_an_announcement() -> None:
    m = M()
    m.feed(ip.Announce(ip.Announcement("Long news.", chime=False)))
    assert not m.of(fx.Cue)
    m.feed(ip.Opened(m.cid))
    m.server("response.created", response={"id": "a1"})
    m.audio("a1", "ai1")
    out = m.feed(ip.StopSpeaking("mqtt"))
    assert m.published(AnnouncementEvent, out)[0].reason == "stopped by mqtt" and m.state is State.IDLE
    assert m.of(fx.Truncate, out)[0].item_id is None  # an out-of-band item is not in the conversation
    # One the person is to answer stays in the conversation, so the model knows what was asked.
    m.feed(ip.Announce(ip.Announcement("Shall I close the garage?", then_listen=True)))
    out = m.feed(ip.Opened(m.cid))
    create, = [e.event for e in m.of(fx.Send, out) if e.event["type"] == "response.create"]
    assert "conversation" not in create["response"]
    m.server("response.created", response={"id": "a2"})
    m.audio("a2", "ai2")
    out = m.feed(ip.StopSpeaking("mqtt"))
    assert m.of(fx.Truncate, out)[0].item_id == "ai2" and m.state is State.FOLLOW_UP
    out = m.feed(ip.StopSpeaking("mqtt"))  # nothing to stop
    assert not m.of(fx.Truncate, out)


def test_a_text_question_opens_a_conversation_or_joins_the_open_one() -> None:
    m = M()
    m.feed(ip.Ask("What time is it?", "mqtt"))
    assert m.state is State.THINKING
    out = m.feed(ip.Opened(m.cid))
    assert m.sent(out) == ["conversation.item.create", "response.create"]
    item = m.of(fx.Send, out)[0].event["item"]
    assert item["content"] == [{"type": "input_text", "text": "What time is it?"}] and item["role"] == "user"
    m.server("response.created", response={"id": "r1"})
    m.audio("r1", "i1")
    out = m.feed(ip.Ask("And the date?", "mqtt"))  # into the open conversation, over the reply
    assert m.of(fx.Truncate, out) and m.sent(out) == ["response.cancel", "conversation.item.create", "response.create"]
    assert m.state is State.THINKING
    out = m.feed(ip.Ask("Hm?", "mqtt"), 0)
    assert m.sent(out)[-1] == "response.create"
    r = M()
    r.feed(ip.Mute(True, "t"))
    out = r.feed(ip.Ask("x", "mqtt"))
    assert not r.of(fx.Open, out)


def test_stop_from_automations_ends_at_once() -> None:
    m = M()
    m.speaking()
    out = m.feed(ip.StopConversation("mqtt"))
    assert m.of(fx.Truncate, out) and m.of(fx.StopPlayback, out) and m.state is State.IDLE
    assert m.published(ConversationEnded, out)[0].reason == "stopped"
    out = m.feed(ip.StopConversation("mqtt"))
    assert not m.of(fx.Close, out)
    m.feed(ip.Ring("t1", "timer", ""))
    out = m.feed(ip.StopConversation("mqtt"))  # also stops a ringing timer
    assert m.published(RingStopped, out)[0].source == "mqtt" and m.state is State.IDLE


# ---- on/off and do not disturb --------------------------------------------------------------------

def test_disabled_assistant_hears_nothing_rings_and_keeps_the_mics_mute_apart() -> None:
    m = M()
    m.open_listening()
    out = m.feed(ip.Enable(False, "mqtt"))
    assert m.state is State.DISABLED and m.published(EnabledChanged, out)[0].enabled is False
    assert m.of(fx.Close, out) and m.published(ConversationEnded, out)[0].reason == "disabled"
    assert m.of(fx.SetCaptureMuted, out)[-1].muted and not m.model.muted  # the mic's mute flag is its own
    for ev in (ip.Wake("hey_jarvis", 0.9), ip.TalkPressed(), ip.StartConversation("mqtt"), ip.Ask("hi", "mqtt")):
        assert not m.of(fx.Open, m.feed(ev)) and m.state is State.DISABLED
    out = m.feed(ip.Announce(ip.Announcement("Hello.")))
    assert m.published(AnnouncementEvent, out)[0].reason == "disabled"
    m.feed(ip.Mute(True, "button"))
    assert m.state is State.DISABLED and m.model.muted
    out = m.feed(ip.Mute(False, "button"))
    assert m.state is State.DISABLED and m.of(fx.SetCaptureMuted, out)[-1].muted  # still off
    m.feed(ip.Ring("t1", "timer", ""))  # timers ring while disabled
    assert m.state is State.RINGING
    m.feed(ip.StopRinging("mqtt"))
    assert m.state is State.DISABLED
    m.feed(ip.Mute(True, "button"))
    out = m.feed(ip.Enable(True, "mqtt"))
    assert m.state is State.MUTED and m.of(fx.SetCaptureMuted, out)[-1].muted and m.of(fx.ResetWake, out)
    m.feed(ip.Mute(False, "button"))
    assert m.state is State.IDLE and not m.feed(ip.Enable(True, "mqtt"))


@pytest.mark.parametrize("mode", ["queue", "drop"])
def test_do_not_disturb_silences_cues_and_holds_or_drops_announcements(mode: str) -> None:
    m = M(dnd_announcements=mode)
    out = m.feed(ip.Dnd(True, "mqtt"))
    assert m.published(DndChanged, out)[0].on
    out = m.wake()
    assert not m.of(fx.Cue, out) and m.state is State.LISTENING  # the conversation itself works
    m.feed(ip.Opened(m.cid))
    out = m.feed(ip.Announce(ip.Announcement("Later.")))
    assert m.published(AnnouncementEvent, out)[0].status == ("queued" if mode == "queue" else "dropped")
    out = m.feed(ip.ListenTimeout(m.cid))
    assert not m.of(fx.Cue, out) and not m.of(fx.Open, out) and m.state is State.IDLE  # no done cue, nothing spoken
    out = m.feed(ip.Ring("t1", "timer", ""))
    assert [c.name for c in m.of(fx.Cue, out)] == ["alarm"]  # a timer still rings
    m.feed(ip.StopRinging("mqtt"))
    out = m.feed(ip.Dnd(False, "mqtt"))
    assert bool(m.of(fx.Open, out)) == (mode == "queue") and not m.feed(ip.Dnd(False, "mqtt"))


# ---- push-to-talk --------------------------------------------------------------------------------

def test_push_to_talk_turns() -> None:
    m = M()
    m.feed(ip.TalkDown((b"\1\0" * 2400,)))  # 100 ms of pre-roll
    assert m.state is State.LISTENING and m.model.conv.manual  # type: ignore[union-attr]
    m.feed(ip.Frame(b"\2\0" * 1920))
    out = m.feed(ip.Opened(m.cid))
    assert m.of(fx.Configure, out)[0].manual_turns and m.sent(out) == ["input_audio_buffer.append"] * 2
    assert not [a for a in m.of(fx.Arm, out) if a.name == "listen"]  # the button says when the turn ends
    m.feed(ip.Frame(b"\3\0" * 1920))
    out = m.feed(ip.TalkUp())
    assert m.sent(out) == ["input_audio_buffer.commit", "response.create"] and m.state is State.THINKING
    m.server("input_audio_buffer.committed", item_id="u1")
    m.server("response.created", response={"id": "r1"})
    m.audio("r1", "i1")
    out = m.feed(ip.TalkDown())  # over the reply: it stops, the next turn starts
    assert m.of(fx.Truncate, out) and m.state is State.LISTENING
    m.feed(ip.Frame(b"\4\0" * 4800))
    m.feed(ip.TalkUp())
    m.server("response.created", response={"id": "r2"})
    m.audio("r2", "i2")
    m.server("response.done", response={"id": "r2", "status": "completed"})
    m.feed(ip.ReplyHeard(m.cid, m.model.conv.turn))  # type: ignore[union-attr]
    assert m.state is State.FOLLOW_UP
    out = m.feed(ip.Frame(b"\5\0" * 1920))  # no turn without the button
    assert not m.of(fx.Send, out)
    m.feed(ip.TalkDown())
    m.feed(ip.Frame(b"\6\0" * 4800))
    m.feed(ip.TalkUp())
    m.server("response.created", response={"id": "r3"})
    m.audio("r3", "i3")
    out = m.wake()  # the wake word over a push-to-talk reply stops it; the button has the next turn
    assert m.of(fx.Truncate, out) and m.state is State.FOLLOW_UP and not m.model.conv.mic_open  # type: ignore[union-attr]
    m.feed(ip.TalkDown())
    out = m.feed(ip.TalkUp())  # a tap: nothing said
    assert m.published(ConversationEnded, out)[0].reason == "talk button" and m.state is State.IDLE


def test_push_to_talk_released_before_the_socket_opened() -> None:
    m = M()
    m.feed(ip.TalkDown())
    for _ in range(4):
        m.feed(ip.Frame(b"\1\0" * 1920))
    m.feed(ip.TalkUp())
    assert m.state is State.THINKING and not m.of(fx.Send)
    out = m.feed(ip.Opened(m.cid))
    assert m.sent(out) == ["input_audio_buffer.append"] * 4 + ["input_audio_buffer.commit", "response.create"]


def test_push_to_talk_button_in_a_wake_word_conversation_and_while_ringing() -> None:
    m = M()
    m.speaking()
    out = m.feed(ip.TalkDown())  # not a push-to-talk conversation: the button as usual (stop the reply)
    assert m.of(fx.Truncate, out) and m.state is State.FOLLOW_UP
    m.feed(ip.TalkUp())
    assert m.state is State.FOLLOW_UP
    r = M()
    r.feed(ip.Ring("t1", "timer", ""))
    out = r.feed(ip.TalkDown())
    assert r.published(RingStopped, out) and r.state is State.IDLE
    r.feed(ip.Mute(True, "t"))
    out = r.feed(ip.TalkDown())
    assert not r.of(fx.Open, out) and r.state is State.MUTED


# ---- ringing -------------------------------------------------------------------------------------

def test_ring_from_idle_alarm_then_the_text_once_then_alarm_until_stopped() -> None:
    m = M(alarm_period_s=1.0, ring_max_s=300.0)
    out = m.feed(ip.Ring("t1", "timer", "The pasta timer is done"))
    assert m.state is State.RINGING and m.published(RingStarted, out)[0].kind == "timer"
    assert [c.name for c in m.of(fx.Cue, out)] == ["alarm"] and m.armed("ring_max").at == m.now + 300.0
    out = m.feed(ip.AlarmDue(), 1.0)  # after the first burst: the text, through the announcement path
    assert m.of(fx.Open, out) and not m.of(fx.Cue, out) and m.state is State.RINGING
    out = m.feed(ip.Opened(m.cid))
    create = [e.event for e in m.of(fx.Send, out) if e.event["type"] == "response.create"][0]
    assert "The pasta timer is done" in create["response"]["instructions"]
    m.server("response.created", response={"id": "a1"})
    out = m.audio("a1", "ai1")
    assert m.of(fx.PlayAudio, out) and m.state is State.RINGING  # spoken under the ringing state
    assert not m.feed(ip.AlarmDue(), 1.0)  # no alarm over the text
    m.server("response.done", response={"id": "a1", "status": "completed"})
    out = m.feed(ip.ReplyHeard(m.cid, 0))
    assert m.of(fx.Close, out) and [c.name for c in m.of(fx.Cue, out)] == ["alarm"] and m.state is State.RINGING
    assert not m.published(AnnouncementEvent) and not m.published(ConversationEnded)
    out = m.feed(ip.AlarmDue(), 1.0)
    assert [c.name for c in m.of(fx.Cue, out)] == ["alarm"] and not m.of(fx.Open, out)  # the text only once
    out = m.feed(ip.StopRinging("mqtt"))
    assert m.of(fx.StopPlayback, out) and m.published(RingStopped, out)[0] == RingStopped(("t1",), "mqtt", t=m.now)
    assert m.state is State.IDLE and {d.name for d in m.of(fx.Disarm, out)} >= {"ring", "ring_max"}


@pytest.mark.parametrize("stop", ["talk button", "wake word", "timeout", "mqtt"])
def test_each_stop_path_while_ringing(stop: str) -> None:
    m = M()
    m.feed(ip.Ring("t1", "timer", ""))
    ev: ip.Input = {"talk button": ip.TalkPressed(), "wake word": ip.Wake("hey_jarvis", 0.9), "timeout": ip.RingTimeout(),
                    "mqtt": ip.StopRinging("mqtt")}[stop]
    out = m.feed(ev)
    assert m.published(RingStopped, out)[0].source == stop and m.of(fx.StopPlayback, out)
    assert m.state is State.IDLE and not m.of(fx.Open, out)  # the wake word starts no conversation


def test_ring_stop_during_its_text_closes_that_session() -> None:
    m = M()
    m.feed(ip.Ring("t1", "reminder", "Call mum"))
    m.feed(ip.AlarmDue())
    cid = m.cid
    m.feed(ip.Opened(cid))
    out = m.feed(ip.TalkPressed())
    assert m.of(fx.Close, out) and m.of(fx.StopPlayback, out) and m.state is State.IDLE and m.model.conv is None
    assert not m.feed(ip.ReplyHeard(cid, 0))


def test_ring_text_that_cannot_be_spoken_keeps_ringing() -> None:
    m = M()
    m.feed(ip.Ring("t1", "timer", "Tea"))
    m.feed(ip.AlarmDue())
    out = m.feed(ip.OpenFailed(m.cid, "token", "no token source"))
    assert m.state is State.RINGING and [c.name for c in m.of(fx.Cue, out)] == ["alarm"] and m.armed("ring")
    assert not m.published(ErrorEvent, out)


def test_a_ring_during_a_conversation_waits_for_its_end_and_rings_merge() -> None:
    m = M()
    m.speaking()
    out = m.feed(ip.Ring("t1", "timer", "One"))
    assert not out and m.state is State.SPEAKING  # the reply is not cut off
    m.feed(ip.Ring("t2", "timer", "Two"))
    m.server("response.done", response={"id": "r1", "status": "completed"})
    m.feed(ip.ReplyHeard(m.cid, m.model.conv.turn))  # type: ignore[union-attr]
    assert m.state is State.FOLLOW_UP
    out = m.feed(ip.FollowUpTimeout(m.cid))
    assert m.state is State.RINGING and [e.ring_id for e in m.published(RingStarted, out)] == ["t1", "t2"]
    out = m.feed(ip.Ring("t3", "reminder", "Three"))
    assert m.published(RingStarted, out)[0].ring_id == "t3" and m.state is State.RINGING and not m.of(fx.Cue, out)
    out = m.feed(ip.StopRinging("talk button"))
    assert m.published(RingStopped, out)[0].ring_ids == ("t1", "t2", "t3")


def test_a_muted_speaker_rings_and_stays_muted() -> None:
    m = M()
    m.feed(ip.Mute(True, "button"))
    m.feed(ip.Ring("t1", "timer", ""))
    assert m.state is State.RINGING
    out = m.feed(ip.Mute(False, "mqtt"))  # the mic's mute changes, the ringing goes on
    assert m.state is State.RINGING and not m.model.muted and not m.of(fx.Cue, out)
    m.feed(ip.Mute(True, "mqtt"))
    assert m.state is State.RINGING
    m.feed(ip.StopRinging("mqtt"))
    assert m.state is State.MUTED
    # Rings during the error state ring at once; announcements wait for the ringing.
    e = M()
    e.wake()
    e.feed(ip.OpenFailed(e.cid, "connect", "refused"))
    e.feed(ip.Ring("t1", "timer", ""))
    assert e.state is State.RINGING
    out = e.feed(ip.Announce(ip.Announcement("Later.")))
    assert not e.of(fx.Open, out)
    out = e.feed(ip.StopRinging("mqtt"))
    assert e.of(fx.Open, out) and e.state is State.THINKING


def test_a_ring_while_a_conversation_is_being_claimed_waits() -> None:
    m = M(arbitration=True)
    m.wake()
    m.feed(ip.Ring("t1", "timer", ""))
    assert m.state is State.IDLE and m.model.due_rings
    m.feed(ip.Claimed(m.cid, False))
    assert m.state is State.RINGING


# ---- the table -----------------------------------------------------------------------------------

def test_rows_are_unshadowed_and_every_row_is_exercised() -> None:
    """Runs last in this module: each row of the table fired in some test above."""
    seen: dict[tuple[State, type], Row] = {}
    for r in TABLE:
        for s in r.states:
            seen.setdefault((s, r.on), r)
    reachable = {id(r) for r in seen.values()}
    assert all(id(r) in reachable for r in TABLE), "a row is shadowed by the rows above it"
    missing = [f"{sorted(s.value for s in r.states)} {r.on.__name__} -> {r.do.__name__}" for r in TABLE if id(r) not in USED]
    assert not missing, f"rows never exercised: {missing}"
