"""Push-to-talk on the real rig: the talk button held down streams the person's turn into a session
without server turn detection; the release commits it and the answer is spoken."""

from __future__ import annotations

import asyncio

import pytest

from device.events import ConversationEnded, State, Transcript
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
