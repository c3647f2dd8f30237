"""Modes of the assistant on the real rig: push-to-talk (the talk button held down streams the
person's turn into a session without server turn detection; the release commits it and the answer
is spoken), the assistant switched off, and do-not-disturb."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from device.events import AnnouncementEvent, ConversationEnded, State, Transcript
from services.simulator import RealtimeSimulator, Turn
from tests.rig.speech import Speech
from tests.test_assistant import REQUEST, make_device  # noqa: F401  (make_device: fixture)

pytestmark = pytest.mark.timeout(40)


@pytest.mark.simulator(pace=0, script=[Turn(say="It is sunny.", transcript=REQUEST)])
async def test_held_button_streams_release_commits_and_the_answer_is_spoken(make_device, speech: Speech,
                                                                             simulator: RealtimeSimulator) -> None:
    d = await make_device(realtime={"follow_up_s": 1.0})
    a = d.assistant
    await asyncio.sleep(0.3)
    await a.talk_down()
    assert a.state is State.LISTENING
    utt, _ = d.say(speech, REQUEST)
    assert utt.wait(10)
    await asyncio.sleep(1.0)  # silence while the button is still held: the server does not end the turn
    s = simulator.sessions[0]
    assert not s.events_of("response.create") and a.state is State.LISTENING
    await a.talk_up()
    assert a.state is State.THINKING
    await d.until(lambda: [t for t in d.of(Transcript) if t.text == "It is sunny."], 10, "the answer")
    types = s.client_types()
    updates = s.events_of("session.update")
    assert updates[-1]["session"]["audio"]["input"]["turn_detection"] is None
    assert s.config["audio"]["input"]["turn_detection"] is None
    assert types.index("input_audio_buffer.commit") < types.index("response.create")
    assert not [e for e in s.server_events if e["type"] == "input_audio_buffer.speech_started"]
    assert [t.text for t in d.of(Transcript) if t.role == "user"] == [REQUEST]
    ended = await d.until(lambda: d.of(ConversationEnded), 10, "end after the follow-up window")
    assert ended[0].reason == "no follow-up" and not simulator.rejected


@pytest.mark.simulator(pace=0)
async def test_switched_off_the_microphone_is_closed_and_do_not_disturb_holds_announcements(
        make_device, simulator: RealtimeSimulator) -> None:
    d = await make_device()
    a, capture = d.assistant, d.capture
    await d.until(lambda: capture.frames_delivered > 3, 5, "frames")
    await a.set_enabled(False, "test")
    assert a.state is State.DISABLED and capture.muted and not a.muted
    saved = json.loads((Path(d.settings.state_dir) / "state.json").read_text())
    assert saved["enabled"] is False  # still off after a restart
    await asyncio.sleep(0.1)
    count = capture.frames_delivered
    await a.talk_pressed()
    await a.start_conversation()
    await asyncio.sleep(0.5)
    assert capture.frames_delivered == count and not simulator.sessions and a.state is State.DISABLED
    await a.set_enabled(True, "test")
    assert a.state is State.IDLE and not capture.muted
    await d.until(lambda: capture.frames_delivered > count, 3, "frames again")
    # Do not disturb: an announcement waits until it ends, then is spoken.
    await a.set_dnd(True, "test")
    await a.announce("The washing machine has finished.")
    await asyncio.sleep(0.5)
    assert not simulator.sessions and d.of(AnnouncementEvent)[-1].status == "queued"
    await a.set_dnd(False, "test")
    await d.until(lambda: d.of(AnnouncementEvent, lambda e: e.status == "spoken"), 10, "spoken after do-not-disturb")
