"""The conversation state machine on the real rig (issue 3): ALSA FIFO microphone fed with
espeak-ng speech, the real wake model, real Playback into an ALSA file speaker, and the realtime
simulator over a real websocket. Every client event is checked for conformance by the simulator
fixture at teardown."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from device.assistant import Assistant
from device.audio.capture import Capture
from device.audio.playback import Playback, volume_gain
from device.config import Settings, load_settings
from device.events import (
    AnnouncementEvent,
    ConversationEnded,
    ErrorEvent,
    Event,
    EventBus,
    MuteChanged,
    State,
    StateChanged,
    ToolCalled,
    Transcript,
    VolumeChanged,
    WakeDetected,
)
from device.realtime.tokens import TokenSource
from device.tools.local import register_local_tools
from device.tools.registry import ToolRegistry
from device.wakeword import WakeWord
from services.simulator import RealtimeSimulator, Turn, speech_pcm
from tests.rig.alsa import AlsaRig, MicFeeder
from tests.rig.simulator import write_device_config
from tests.rig.speech import Speech

pytestmark = pytest.mark.timeout(40)

WAKE = "hey jarvis"
REQUEST = "what is the weather like in the garden"


class Device:
    """The assistant with real parts, as the daemon wires it (without MQTT and GPIO)."""

    def __init__(self, settings: Settings, rig: AlsaRig, sim: RealtimeSimulator) -> None:
        self.settings = settings
        self.rig = rig
        self.sim = sim
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.subscribe(self.events.append)
        self.assistant: Assistant
        self.mic: MicFeeder

    async def start(self, *, speaker_fifo: bool = False) -> Device:
        loop = asyncio.get_running_loop()
        s = self.settings
        self.bus.bind(loop)
        self.mic = self.rig.start_mic("test_mic")
        self.speaker = self.rig.start_speaker("test_spk_fifo") if speaker_fifo else None
        self.playback = Playback(s.audio, loop)
        self.playback.start()
        self.tokens = TokenSource(s)
        await self.tokens.start()
        self.tools = ToolRegistry()
        self.capture = Capture(s.audio, lambda f: self.assistant.on_frame(f), loop)
        self.assistant = Assistant(
            s, bus=self.bus, capture=self.capture, playback=self.playback, wake=WakeWord(s.wake),
            tokens=self.tokens, tools=self.tools,
        )
        register_local_tools(self.tools, self.assistant)
        await self.assistant.start()
        self.capture.start()
        return self

    async def stop(self) -> None:
        await self.assistant.stop()
        self.capture.stop()
        await self.tokens.close()
        await self.playback.close()

    # -- the person --
    def say(self, speech: Speech, *texts: str, gap_s: float = 0.15) -> tuple[Any, list[int]]:
        """Speak ``texts`` one after the other; returns the utterance and each text's start sample."""
        parts: list[np.ndarray] = []
        starts: list[int] = []
        pos = 0
        for i, text in enumerate(texts):
            x = speech.trim(speech.say(text))
            if i:
                parts.append(speech.silence(gap_s))
                pos += int(16000 * gap_s)
            starts.append(pos)
            parts.append(x)
            pos += len(x)
        parts.append(speech.silence(0.3))
        return self.mic.play(np.concatenate(parts)), starts

    # -- waiting --
    def of(self, kind: type[Event], pred: Callable[[Any], bool] = lambda e: True) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and pred(e)]

    async def until(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                states = [e.new.value for e in self.of(StateChanged)]
                raise AssertionError(f"{what} not reached within {timeout:g} s; states {states}; "
                                     f"errors {[e.message for e in self.of(ErrorEvent)]}")
            await asyncio.sleep(0.01)

    async def state(self, state: State, timeout: float, after: int = 0) -> StateChanged:
        """The first change to ``state`` among events from index ``after`` on."""
        def find() -> StateChanged | None:
            for e in self.events[after:]:
                if isinstance(e, StateChanged) and e.new is state and e.old is not state:
                    return e
            return None
        return await self.until(find, timeout, f"state {state.value}")

    def states(self) -> list[str]:
        return [e.new.value for e in self.of(StateChanged) if e.old is not e.new]


@pytest.fixture
async def make_device(alsa_rig: AlsaRig, simulator: RealtimeSimulator, tmp_path: Path):
    """make(speaker_fifo=False, realtime={...}, ...) -> a started Device; stopped at teardown."""
    devices: list[Device] = []

    async def make(*, speaker_fifo: bool = False, unchecked: dict[str, Any] | None = None, **sections: dict[str, Any]) -> Device:
        rt = {"follow_up_s": 1.5, "response_timeout_s": 4.0, **sections.pop("realtime", {})}
        audio = {"input": "test_mic", "output": "test_spk_fifo" if speaker_fifo else "test_spk", **sections.pop("audio", {})}
        cfg = write_device_config(tmp_path / "device", simulator, sections={
            "audio": audio, "realtime": rt, "state": {"dir": str(tmp_path / "state")},
            "auth": {"timeout_s": 1.0}, **sections})
        settings = load_settings(cfg)
        if unchecked:  # [realtime] values below the config's limits, to keep tests short
            settings = dataclasses.replace(settings, realtime=dataclasses.replace(settings.realtime, **unchecked))
        device = Device(settings, alsa_rig, simulator)
        devices.append(device)
        return await device.start(speaker_fifo=speaker_fifo)

    yield make
    for d in devices:
        await d.stop()


# ---- audio analysis ---------------------------------------------------------------------------

def to24k(x16: np.ndarray) -> np.ndarray:
    return soxr.resample(x16.astype(np.float32), 16000, 24000, quality="HQ")


def locate(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Best offset of ``needle`` in ``haystack`` and its normalised correlation there."""
    h = haystack.astype(np.float64)
    n = needle.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(h) + len(n))))
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size)), size)[: len(h) - len(n) + 1]
    c = np.concatenate(([0.0], np.cumsum(h * h)))
    energy = np.sqrt(np.maximum(c[len(n):] - c[: len(h) - len(n) + 1], 0.0))  # sliding window energy
    norm = np.linalg.norm(n)
    score = np.where(energy > 0.05 * norm, corr / (energy * norm + 1e-9), 0.0)
    best = int(np.argmax(score))
    return best, float(score[best])


def played_prefix_ms(out: np.ndarray, reply: np.ndarray, gain: float) -> tuple[int, int]:
    """Where the reply starts in the speaker output and how much of it came out intact (ms)."""
    expected = np.clip(np.rint(reply.astype(np.float64) * gain), -32768, 32767)
    start, score = locate(out, expected[: 24000 * 3 // 10])
    assert score > 0.95, f"reply not found in the speaker output (correlation {score:.2f})"
    block = 240  # 10 ms
    n = 0
    while (start + (n + 1) * block <= len(out) and (n + 1) * block <= len(expected)
           and np.max(np.abs(out[start + n * block : start + (n + 1) * block] - expected[n * block : (n + 1) * block])) <= 2):
        n += 1
    return start, n * 10


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")


# ---- tests --------------------------------------------------------------------------------------

@pytest.mark.simulator(pace=0, script=[Turn(say="It is sunny.", transcript=REQUEST), Turn(say="You are welcome.", transcript="thank you")])
async def test_wake_word_conversation_with_follow_up(make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    d = await make_device(realtime={"follow_up_s": 3.0})
    await asyncio.sleep(1.2)  # the wake model ignores its first second
    d.say(speech, WAKE, REQUEST)
    await d.state(State.FOLLOW_UP, 15)
    # Follow-up without the wake word, in the same session.
    mark = len(d.events)
    d.say(speech, "thank you")
    await d.state(State.SPEAKING, 10, after=mark)
    await d.state(State.IDLE, 10, after=mark)
    sim = simulator
    assert len(sim.sessions) == 1 and len(d.of(WakeDetected)) == 1
    s = sim.sessions[0]
    await d.until(lambda: s.closed, 3, "socket closed")
    assert d.states() == ["listening", "thinking", "speaking", "follow_up", "listening", "thinking", "speaking",
                          "follow_up", "idle"]
    assert [e.text for e in d.of(Transcript, lambda e: e.role == "user")] == [REQUEST, "thank you"]
    assert [e.text for e in d.of(Transcript, lambda e: e.role == "assistant")] == ["It is sunny.", "You are welcome."]
    ended = d.of(ConversationEnded)
    assert len(ended) == 1 and ended[0].reason == "no follow-up"
    done = [e for e in s.server_events if e["type"] == "response.done"]
    assert ended[0].usage["total_tokens"] == sum(e["response"]["usage"]["total_tokens"] for e in done) > 0

    # The ephemeral key minted by the API endpoint was used on the socket; the API key never was.
    assert s.key.startswith("ek_") and s.key in sim.minted and s.key != sim.api_key
    assert s.headers["Authorization"] == f"Bearer {s.key}" and "OpenAI-Beta" not in s.headers
    assert not sim.rejected
    # session.update first, rendered, with the local tools.
    update = s.client_events[0]
    assert update["type"] == "session.update"
    assert "{{" not in update["session"]["instructions"]
    assert {t["name"] for t in update["session"]["tools"]} >= {"end_conversation", "set_volume"}
    assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    # The words said right after the wake word are all in the streamed audio, from their start.
    request = to24k(speech.trim(speech.say(REQUEST)))
    audio_in = pcm(s.audio_in).astype(np.float32)
    tail = request[-12000:]
    at, score = locate(audio_in, tail)
    begin = at - (len(request) - len(tail))
    assert score > 0.9, f"the request is not in the streamed audio (correlation {score:.2f})"
    assert begin >= 0, f"{-begin / 24:.0f} ms of the words after the wake word were not streamed"
    _, whole = locate(audio_in[begin : begin + len(request)], request)
    assert whole > 0.9, f"the streamed request is damaged (correlation {whole:.2f})"
    # The replies came out of the speaker.
    out = pcm(d.rig.speaker_output("test_spk"))
    for text in ("It is sunny.", "You are welcome."):
        reply = pcm(speech_pcm(text))
        _, played = played_prefix_ms(out, reply, volume_gain(d.assistant.volume))
        # The file plugin passes on the last buffer (output_buffer_ms) only when more audio follows.
        assert played >= len(reply) // 24 - d.settings.audio.output_buffer_ms - 20, \
            f"only {played} ms of the {len(reply) // 24} ms reply {text!r} came out of the speaker"


@pytest.mark.simulator(pace=0)
async def test_speech_without_wake_word_never_connects(make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    d = await make_device()
    await asyncio.sleep(1.2)
    utt, _ = d.say(speech, "jarvis is not here, turn on the kitchen light")
    assert utt.wait(10)
    await asyncio.sleep(0.8)
    assert not simulator.sessions
    assert d.assistant.state is State.IDLE and not d.of(WakeDetected) and not d.of(StateChanged, lambda e: e.new is State.LISTENING)


LONG_REPLY = ("Here is a long answer. The weather today is sunny in the morning, with clouds coming in "
              "from the west in the afternoon, and light rain in the evening.")


async def _barge_in_case(d: Device, speech: Speech, sim: RealtimeSimulator, interrupter: tuple[str, ...]) -> None:
    await asyncio.sleep(1.2)
    d.say(speech, WAKE, REQUEST)
    speaking = await d.state(State.SPEAKING, 15)
    await asyncio.sleep(1.5)
    mark = len(d.events)
    d.say(speech, *interrupter)
    await d.until(lambda: d.assistant.interruptions, 10, "interruption")
    stopped_at = time.monotonic()
    s = sim.sessions[0]
    await d.until(lambda: s.truncations, 3, "truncate at the server")
    (_, end_ms), = s.truncations
    assert not s.errors_sent, f"server errors: {s.errors_sent}"
    # The reply was still being generated (pace 1): it was cancelled, and no more of it was played.
    await d.until(lambda: s.responses[0].status == "cancelled", 3, "reply cancelled")
    await d.state(State.LISTENING, 3, after=mark)
    await asyncio.sleep(0.6)
    assert d.speaker is not None
    out = pcm(d.speaker.data())
    reply = pcm(speech_pcm(LONG_REPLY))
    start, played = played_prefix_ms(out, reply, volume_gain(d.assistant.volume))
    assert abs(end_ms - played) <= 100, f"audio_end_ms {end_ms} vs {played} ms really played"
    assert 1000 < played < len(reply) // 24 - 1000
    rest = np.clip(np.rint(reply[(played + 200) * 24 : (played + 700) * 24] * volume_gain(d.assistant.volume)), -32768, 32767)
    after = out[start + played * 24 :]
    if len(after) > len(rest):
        _, again = locate(after, rest)
        assert again < 0.5, "the rest of the interrupted reply still came out of the speaker"
    del speaking, stopped_at


@pytest.mark.timeout(45)
@pytest.mark.simulator(pace=1, script=[Turn(say=LONG_REPLY, transcript=REQUEST), Turn(say="Sure.", transcript="what time is it")])
async def test_barge_in_by_wake_word(make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    d = await make_device(speaker_fifo=True)
    await _barge_in_case(d, speech, simulator, (WAKE, "what time is it"))
    # The new request is answered in the same session.
    await d.until(lambda: [e for e in d.of(Transcript) if e.text == "Sure."], 10, "second reply")
    assert len(simulator.sessions) == 1 and len(d.of(WakeDetected)) == 2


@pytest.mark.timeout(45)
@pytest.mark.simulator(pace=1, script=[Turn(say=LONG_REPLY, transcript=REQUEST), Turn(say="Sure.", transcript="stop")])
async def test_barge_in_by_voice(make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    d = await make_device(speaker_fifo=True, realtime={"barge_in": "voice"})
    await _barge_in_case(d, speech, simulator, ("stop please, that is enough",))
    assert len(d.of(WakeDetected)) == 1  # the voice alone interrupted
    await d.until(lambda: [e for e in d.of(Transcript) if e.text == "Sure."], 10, "reply to the interruption")


@pytest.mark.simulator(pace=0, script=[
    Turn(call="set_volume", arguments={"volume": 30}, then="The volume is now thirty.", transcript="volume thirty"),
    Turn(call="end_conversation", then="Goodbye.", transcript="that is all"),
])
async def test_local_tool_calls(make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    d = await make_device(realtime={"follow_up_s": 4.0})
    await asyncio.sleep(1.2)
    d.say(speech, WAKE, "set the volume to thirty")
    await d.until(lambda: d.of(ToolCalled), 15, "tool call")
    call, = d.of(ToolCalled)
    assert call.name == "set_volume" and call.arguments == {"volume": 30} and call.result["ok"] is True
    assert d.assistant.volume == 30 and d.playback.volume == 30
    assert d.of(VolumeChanged, lambda e: e.source == "voice")[-1].volume == 30
    await d.state(State.FOLLOW_UP, 10)
    s = simulator.sessions[0]
    out, = s.function_outputs
    assert out["call_id"] == s.server_events[[e["type"] for e in s.server_events].index("response.function_call_arguments.done")]["call_id"]
    types = s.client_types()
    assert types.index("response.create") > types.index("conversation.item.create")
    assert "The volume is now thirty." in [e.text for e in d.of(Transcript)]
    # end_conversation: the goodbye is said, then the session closes without a follow-up window.
    mark = len(d.events)
    d.say(speech, "that is all, thanks")
    ended = await d.until(lambda: d.of(ConversationEnded), 15, "conversation end")
    assert ended[0].reason == "end_conversation"
    assert "Goodbye." in [e.text for e in d.of(Transcript)]
    assert State.FOLLOW_UP not in [e.new for e in d.events[mark:] if isinstance(e, StateChanged)]
    await d.until(lambda: s.closed, 3, "socket closed")
    assert d.assistant.state is State.IDLE


@pytest.mark.simulator(pace=0, script=[Turn(fail="error", transcript=REQUEST)])
async def test_server_error_event(make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    d = await make_device()
    await asyncio.sleep(1.2)
    d.say(speech, WAKE, REQUEST)
    err = await d.until(lambda: d.of(ErrorEvent), 15, "error event")
    assert err[0].where == "session" and "server_error" in err[0].message
    # The session survives a failed response: the person may simply ask again.
    await d.state(State.FOLLOW_UP, 5)
    await d.state(State.IDLE, 5)
    assert len(d.of(ErrorEvent)) == 1 and d.of(ConversationEnded)[0].reason == "no follow-up"


@pytest.mark.simulator(pace=1, script=[Turn(say=LONG_REPLY, transcript=REQUEST, fail="drop", drop_after_ms=800), Turn(say="Hello again.")])
async def test_connection_dropped_mid_reply(make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    d = await make_device()
    await asyncio.sleep(1.2)
    d.say(speech, WAKE, REQUEST)
    await d.state(State.SPEAKING, 15)
    err = await d.until(lambda: d.of(ErrorEvent), 10, "error")
    assert err[0].where == "session" and "connection lost" in err[0].message
    error_state = await d.state(State.ERROR, 1)
    idle = await d.state(State.IDLE, 3, after=d.events.index(error_state))
    assert idle.t - err[0].t < 2.0
    assert d.of(ConversationEnded)[0].reason == "error: session"
    # The next wake retries with a new session.
    d.say(speech, WAKE, REQUEST)
    await d.until(lambda: len(simulator.sessions) == 2, 10, "second session")
    await d.until(lambda: [e for e in d.of(Transcript) if e.text == "Hello again."], 10, "reply in the new session")


@pytest.mark.simulator(pace=0, script=[Turn(fail="silent", transcript=REQUEST)])
async def test_silent_server(make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    d = await make_device(realtime={"response_timeout_s": 1.5})
    await asyncio.sleep(1.2)
    d.say(speech, WAKE, REQUEST)
    thinking = await d.state(State.THINKING, 15)
    err = await d.until(lambda: d.of(ErrorEvent), 5, "error")
    assert err[0].where == "session" and "sent nothing" in err[0].message
    assert 1.4 < err[0].t - thinking.t < 2.5
    await d.state(State.IDLE, 2.5)
    await d.until(lambda: simulator.sessions[0].closed, 3, "socket closed")


@pytest.mark.parametrize("failure", [401, 500, "timeout"])
@pytest.mark.simulator(pace=0)
async def test_token_endpoint_failures(failure, make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    simulator.fail_client_secrets = failure
    d = await make_device()
    await asyncio.sleep(1.2)
    d.say(speech, WAKE, REQUEST)
    wake = await d.until(lambda: d.of(WakeDetected), 10, "wake word")
    err = await d.until(lambda: d.of(ErrorEvent), 5, "error")
    assert err[0].where == "token"
    assert {401: "401", 500: "500", "timeout": "time"}[failure] in err[0].message.lower()
    assert err[0].t - wake[0].t < 1.5  # auth.timeout_s is 1 s
    await d.state(State.ERROR, 1)
    idle = await d.state(State.IDLE, 2.5, after=d.events.index(d.of(StateChanged, lambda e: e.new is State.ERROR)[0]))
    assert idle.t - err[0].t < 2.0
    assert not simulator.sessions
    assert simulator.api_key not in " ".join(e.message for e in d.of(ErrorEvent))
    if failure == 500:  # the next wake retries once the endpoint works again
        simulator.fail_client_secrets = None
        d.say(speech, WAKE, REQUEST)
        await d.until(lambda: simulator.sessions, 10, "session after recovery")


@pytest.mark.simulator(pace=0, script=[Turn(say="It is sunny.", transcript=REQUEST)])
async def test_announcement_waits_for_the_conversation_and_mute_drops_it(make_device, speech: Speech,
                                                                         simulator: RealtimeSimulator) -> None:
    d = await make_device()
    await asyncio.sleep(1.2)
    d.say(speech, WAKE, REQUEST)
    await d.state(State.THINKING, 15)
    await d.assistant.announce("The washing machine has finished.")
    assert [e.status for e in d.of(AnnouncementEvent)] == ["queued"]
    await d.until(lambda: d.of(AnnouncementEvent, lambda e: e.status == "spoken"), 15, "announcement spoken")
    assert len(simulator.sessions) == 2
    first, second = simulator.sessions
    assert first.closed_at is not None and first.closed_at <= second.opened_at  # after, not over, the conversation
    create, = second.events_of("response.create")
    assert "The washing machine has finished." in create["response"]["instructions"]
    assert not second.events_of("input_audio_buffer.append")  # the microphone is not streamed into it
    assert "The washing machine has finished." in [e.text for e in d.of(Transcript)]
    await d.until(lambda: d.assistant.state is State.IDLE, 3, "idle after the announcement")
    # Muted: announcements are dropped, and said so.
    await d.assistant.set_muted(True, "test")
    assert d.capture.muted and d.assistant.state is State.MUTED
    await d.assistant.announce("Nobody hears this.")
    assert d.of(AnnouncementEvent)[-1].status == "dropped" and d.of(AnnouncementEvent)[-1].reason == "muted"
    assert len(simulator.sessions) == 2


@pytest.mark.simulator(pace=1, script=[Turn(say=LONG_REPLY, transcript=REQUEST), Turn(say=LONG_REPLY)])
async def test_talk_button_prompt_and_mute(make_device, speech: Speech, simulator: RealtimeSimulator, tmp_path: Path) -> None:
    d = await make_device(realtime={"follow_up_s": 5.0})
    a, sim = d.assistant, simulator
    await asyncio.sleep(0.3)
    # Idle: the talk button opens a session without the wake word.
    await a.talk_pressed()
    await d.until(lambda: sim.sessions and a.state is State.LISTENING, 5, "listening after the talk button")
    d.say(speech, REQUEST)
    await d.state(State.SPEAKING, 15)
    await asyncio.sleep(0.5)
    # Speaking: the talk button stops the reply (the barge-in path), the person may answer.
    await a.talk_pressed()
    s = sim.sessions[0]
    await d.until(lambda: s.truncations, 3, "truncate")
    assert a.state is State.FOLLOW_UP and not d.of(WakeDetected)
    # Follow-up: the talk button ends the conversation.
    await a.talk_pressed()
    await d.until(lambda: d.of(ConversationEnded), 3, "end")
    assert d.of(ConversationEnded)[0].reason == "talk button"
    await d.until(lambda: s.closed and a.state is State.IDLE, 3, "closed and idle")

    # start_conversation with a prompt: the assistant speaks first, the mic waits for its turn.
    await a.start_conversation("Ask whether the lights should be turned off.", source="mqtt")
    await d.state(State.SPEAKING, 10, after=len(d.events) - 1)
    s2 = sim.sessions[1]
    create, = s2.events_of("response.create")
    assert "Ask whether the lights should be turned off." in create["response"]["instructions"]
    assert not s2.events_of("input_audio_buffer.append")
    # Mute mid-reply: the session is closed, the speaker stops, no frame leaves the capture layer.
    await a.set_muted(True, "button")
    assert a.state is State.MUTED and d.capture.muted and a.muted
    await d.until(lambda: s2.closed, 3, "session closed by mute")
    assert d.of(ConversationEnded)[-1].reason == "muted"
    delivered = d.capture.frames_delivered
    await a.talk_pressed()
    await a.start_conversation()
    await asyncio.sleep(0.5)
    assert len(sim.sessions) == 2 and a.state is State.MUTED and d.capture.frames_delivered == delivered
    assert '"muted": true' in (tmp_path / "state" / "state.json").read_text()
    await a.set_muted(False, "button")
    assert a.state is State.IDLE and not d.capture.muted
    assert '"muted": false' in (tmp_path / "state" / "state.json").read_text()


@pytest.mark.simulator(pace=1)
async def test_mute_storm_leaves_a_consistent_device(make_device, simulator: RealtimeSimulator, caplog: pytest.LogCaptureFixture) -> None:
    """Mute toggles racing conversations (button presses arrive as concurrent tasks)."""
    import random

    d = await make_device()
    a, sim = d.assistant, simulator
    rng = random.Random(7)
    tasks: list[asyncio.Task[Any]] = []
    for _ in range(120):
        tasks.append(asyncio.ensure_future(a.toggle_mute("button")))
        await asyncio.sleep(0)
        if a.state is State.IDLE and rng.random() < 0.5:
            await a.start_conversation("Say hello." if rng.random() < 0.5 else None)
        # mostly a burst of presses, sometimes long enough for a session to open and reply
        await asyncio.sleep(rng.uniform(0.2, 0.4) if rng.random() < 0.1 else rng.uniform(0, 0.02))
    await asyncio.gather(*tasks)
    await d.until(lambda: a.conversation is None, 5, "conversations closed")
    assert a.muted == d.capture.muted
    assert a.state is (State.MUTED if a.muted else State.IDLE)
    assert len(sim.sessions) >= 3, len(sim.sessions)  # the storm did hit open conversations
    await d.until(lambda: all(s.closed for s in sim.sessions), 5, "every socket closed")
    # Every mute closed what was open; the events tell the same story as the flag.
    mutes = d.of(MuteChanged)
    assert mutes[-1].muted == a.muted
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") and r.name.startswith(("speaker", "device"))]
    # And it still works.
    await a.set_muted(False, "test")
    await a.start_conversation()
    await d.until(lambda: a.state is State.LISTENING and not sim.sessions[-1].closed, 5, "a new conversation")


async def test_local_tool_arguments() -> None:
    """set_volume and end_conversation as the model calls them, good and bad arguments."""

    class Actions:
        def __init__(self) -> None:
            self.volume = 50
            self.ended: list[str] = []

        async def set_volume(self, volume: int, source: str) -> None:
            self.volume = volume

        def request_end(self, reason: str) -> bool:
            self.ended.append(reason)
            return True

    actions = Actions()
    tools = ToolRegistry()
    register_local_tools(tools, actions)
    assert tools.names() == ["end_conversation", "set_volume"]

    async def call(name: str, args: str) -> dict[str, Any]:
        return (await tools.call(name, args, 1.0)).output

    assert await call("set_volume", '{"volume": 30}') == {"ok": True, "volume": 30}
    assert await call("set_volume", '{"change": -40}') == {"ok": True, "volume": 0}
    assert await call("set_volume", '{"change": 150}') == {"ok": True, "volume": 100}
    for bad in ('{"volume": 130}', '{"volume": "loud"}', '{}', '{"volume": 10, "change": 5}', '{"level": 3}', "not json"):
        out = await call("set_volume", bad)
        assert out["ok"] is False and out["error"], bad
    assert actions.volume == 100
    assert (await call("end_conversation", "{}"))["ok"] is True and actions.ended == ["end_conversation"]


MEDIUM_REPLY = "The weather is sunny in the morning and rainy in the evening."


@pytest.mark.simulator(pace=1, script=[Turn(say=MEDIUM_REPLY, transcript=REQUEST)])
async def test_session_near_its_limit_ends_after_the_reply(make_device, speech: Speech, simulator: RealtimeSimulator) -> None:
    d = await make_device(realtime={"follow_up_s": 8.0}, unchecked={"max_session_s": 3.0})
    await d.assistant.talk_pressed()
    await d.until(lambda: simulator.sessions and d.assistant.state is State.LISTENING, 5, "listening")
    d.say(speech, REQUEST)
    speaking = await d.state(State.SPEAKING, 10)
    ended = await d.until(lambda: d.of(ConversationEnded), 15, "end")
    # The reply (longer than the limit) was not cut off; no follow-up window was opened.
    assert ended[0].reason == "session limit"
    assert not d.assistant.interruptions and simulator.sessions[0].responses[0].status == "completed"
    assert State.FOLLOW_UP not in [e.new for e in d.of(StateChanged)]
    assert ended[0].t - speaking.t > len(speech_pcm(MEDIUM_REPLY)) / 48000 - 0.5
    await d.until(lambda: simulator.sessions[0].closed, 3, "socket closed")


@pytest.mark.timeout(150)
@pytest.mark.simulator(pace=4, default_reply="Hi there.")
async def test_no_microphone_frame_passes_while_muted_over_1000_toggles_in_every_state(make_device, simulator: RealtimeSimulator) -> None:
    """The mute property, on the real capture layer and the real assistant: 1,000 toggles at random
    moments in idle, listening, speaking and follow-up; no frame leaves the capture layer while muted,
    and no audio reaches the network."""
    import random
    from collections import Counter

    d = await make_device(realtime={"follow_up_s": 1.0})
    a, capture = d.assistant, d.capture
    rng = random.Random(1234)
    leaked: list[float] = []
    flowed = 0
    forward = a.on_frame

    def at_capture_output(frame: Any) -> None:
        nonlocal flowed
        flowed += 1
        if capture.muted or a.muted:
            leaked.append(frame.t)
        forward(frame)

    a.on_frame = at_capture_output  # type: ignore[method-assign]
    seen: Counter[str] = Counter()
    windows: list[tuple[float, float]] = []
    targets = {0: State.LISTENING, 7: State.SPEAKING, 14: State.FOLLOW_UP}
    for cycle in range(500):  # 500 mutes + 500 unmutes
        target = targets.get(cycle % 21)
        if target is State.LISTENING:
            await a.start_conversation()
        elif target is not None:
            await a.start_conversation("Say hi.")
        if target is not None:
            await d.until(lambda: a.state is target, 5, target.value)
        await asyncio.sleep(rng.uniform(0, 0.03))
        seen[a.state.value] += 1
        count_at_mute = capture.frames_delivered
        started = time.monotonic()
        await a.set_muted(True, "test")
        assert a.state is State.MUTED and capture.muted
        # Mostly short windows; some long enough that frames would have flowed.
        await asyncio.sleep(rng.uniform(0.1, 0.25) if rng.random() < 0.1 else rng.uniform(0, 0.02))
        assert capture.frames_delivered == count_at_mute, f"frames passed capture in mute window {cycle}"
        windows.append((started, time.monotonic()))
        await a.set_muted(False, "test")
    await d.until(lambda: a.conversation is None or a.state is State.IDLE, 5, "settled")

    assert leaked == []
    assert seen.keys() >= {"idle", "listening", "speaking", "follow_up"}, seen
    assert flowed > 50  # audio did flow between the windows: the property could have failed
    # Nothing captured while muted went out on any session (50 ms slack for appends in flight).
    for s in simulator.sessions:
        for ev, t in zip(s.client_events, s.client_times):
            if ev["type"] == "input_audio_buffer.append":
                assert not any(a0 + 0.05 < t < b0 for a0, b0 in windows), "audio sent while muted"
