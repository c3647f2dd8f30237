"""Timers through the whole daemon (issue 12): a spoken "set a timer for 3 seconds" rings on time,
the alarm is heard on the speaker, and every stop path silences it.

Real parts: `speaker run` as a subprocess on the rig (ALSA FIFO microphone fed espeak-ng speech, a
FIFO speaker read at real-time pace), the real hey_jarvis model, mosquitto, the realtime simulator
scripted to call set_timer. The button paths run the daemon's App in-process so gpiozero's
MockFactory pins can be pressed.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.audio.cues import cue_pcm
from device.events import MuteChanged, RingStarted, RingStopped, State
from tests.rig.broker import BrokerSpy, DeviceSimulator
from tests.rig.listen import Listener, heard_at, silenced_after, wait_sounding
from tests.rig.simulator import Turn, write_device_config

ALARM = np.frombuffer(cue_pcm("alarm"), dtype="<i2")
FIRST_BEEPS = ALARM[: 24000 * 240 // 1000]  # two beeps: enough to tell the alarm from anything else
RING_LATE_MAX_S = 0.100  # the bound: the alarm is heard within 100 ms of the timer's end
STOP_MAX_S = 0.200  # and each stop path silences it within 200 ms


def until(cond: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s")


def events(spy: BrokerSpy, event_type: str) -> list[dict[str, Any]]:
    out = []
    for m in spy.snapshot():
        if m.topic == "speaker/kitchen/event":
            line = json.loads(m.payload)
            if line["event_type"] == event_type:
                out.append(line)
    return out


def wait_event(spy: BrokerSpy, event_type: str, n: int = 1, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = events(spy, event_type)
        if len(got) >= n:
            return got[n - 1]
        time.sleep(0.005)
    raise AssertionError(f"no {event_type} event #{n} within {timeout} s: {[m.topic for m in spy.snapshot()][-20:]}")


@pytest.mark.timeout(120)
@pytest.mark.simulator(pace=2.0, script=[
    Turn(transcript="set a timer for 3 seconds", call="set_timer", arguments={"duration": 3}, then="Done."),
])
def test_spoken_timer_rings_on_time_and_remote_stops_silence_it(tmp_path: Path, alsa_rig, speech, simulator, mosquitto,
                                                               daemon_factory) -> None:
    spy = BrokerSpy(mosquitto)
    spy.start()
    pub = DeviceSimulator(mosquitto)
    pub.start()
    listener = None
    try:
        mic = alsa_rig.start_mic("test_mic")
        speaker = alsa_rig.start_speaker("test_spk_fifo")
        listener = Listener(speaker.out).start()
        config = write_device_config(tmp_path, simulator, sections={
            # The rig's file plugin holds up to a buffer of audio until more is written: a small
            # buffer keeps what was played before the alarm from delaying it, as a real card would.
            "audio": {"input": "test_mic", "output": "test_spk_fifo", "output_buffer_ms": 40},
            "realtime": {"follow_up_s": 0.0},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "device_id": "kitchen"},
            "state": {"dir": str(tmp_path / "state")},
            "timers": {"ring_max_s": 5},
        })
        d = daemon_factory(["run", "--config", str(config)], alsa_rig.env)
        d.wait_for(r"ready: listening", timeout=20)
        assert spy.wait_for(lambda m: m.topic == "speaker/kitchen/timers", 10), "the retained timer list"

        # 1. Spoken: the model calls set_timer(3); the alarm is heard when the timer ends.
        mic.play(np.concatenate([speech.say("hey jarvis, set a timer for three seconds"), speech.silence(1.5)]))
        set_ev = wait_event(spy, "timer_set", timeout=30)
        assert set_ev["duration"] == "3 seconds" and set_ev["source"] == "voice"
        outputs = until(lambda: [json.loads(o["output"]) for s in simulator.sessions for o in s.function_outputs], 5)
        assert outputs[0]["ok"] and outputs[0]["summary"].startswith("3 seconds, ends at "), outputs
        ends = set_ev["ends_at_ts"]
        assert spy.wait_for(lambda m: m.topic == "speaker/kitchen/state" and m.payload == b"ringing", 10)
        wait_event(spy, "timer_finished")
        time.sleep(0.8)
        heard, score = heard_at(listener, FIRST_BEEPS, ends - 1.0)
        assert score > 0.9, f"the sound at the timer's end is not the alarm (correlation {score:.2f})"
        late = heard - ends
        assert -0.005 <= late < RING_LATE_MAX_S, f"alarm heard {late * 1000:.0f} ms after the timer's end"

        # The ring stops from Home Assistant's button (speaker/<id>/ring/stop).
        wait_sounding(listener)
        t_stop = time.monotonic()
        pub.publish("speaker/kitchen/ring/stop", "STOP")
        assert silenced_after(listener, t_stop) < STOP_MAX_S
        assert spy.wait_for(lambda m: m.topic == "speaker/kitchen/state" and m.payload == b"idle"
                            and m.t > t_stop, 5)
        assert wait_event(spy, "ring_stopped")["source"] == "mqtt"

        # 2. An automation's timer; the wake word stops it.
        pub.publish("speaker/kitchen/timers/set", json.dumps({"duration": 1, "label": "tea"}))
        wait_event(spy, "timer_finished", 2)
        wait_sounding(listener)
        mark = d.mark()
        mic.play(np.concatenate([speech.say("hey jarvis"), speech.silence(0.5)]))
        d.wait_for(r"wake word .* detected", timeout=10, start=mark)
        t_wake = time.monotonic()
        assert silenced_after(listener, t_wake) < STOP_MAX_S
        assert wait_event(spy, "ring_stopped", 2)["source"] == "wake word"

        # 3. Nobody stops it: it stops by itself after ring_max_s.
        pub.publish("speaker/kitchen/timers/set", json.dumps({"duration": 1, "label": "eggs"}))
        fin = wait_event(spy, "timer_finished", 3)
        t_end = fin["ends_at_ts"]
        wait_sounding(listener)
        listener.wait_quiet(1.0, 12)
        last = listener.last_sound()
        assert last is not None and 4.0 < last.wall - t_end < 5.0 + STOP_MAX_S
        assert wait_event(spy, "ring_stopped", 3)["source"] == "timeout"
        # After the first burst the ring said what ended (spoken through a realtime session).
        creates = [e for s in simulator.sessions for e in s.client_events if e["type"] == "response.create"]
        assert any("The eggs timer is done." in json.dumps(e) for e in creates), creates
        assert d.stop() == 0
        assert "Traceback" not in d.output
    finally:
        if listener is not None:
            listener.stop()
        pub.stop()
        spy.stop()


# ------------------------------------------------------------------ the buttons: the App in-process

MUTE_PIN, TALK_PIN = 17, 27


class InProcess:
    """The daemon's App on this test's loop, with gpiozero's MockFactory buttons."""

    def __init__(self, app: Any, factory: Any, listener: Listener) -> None:
        self.app = app
        self.factory = factory
        self.listener = listener
        self.events: list[Any] = []
        app.bus.subscribe(self.events.append)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def until(self, cond: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            await asyncio.sleep(0.005)
        raise AssertionError(f"{what} not within {timeout} s; events {[type(e).__name__ for e in self.events][-15:]}")

    async def set_timer(self, seconds: float) -> None:
        out = await self.app.tools.call("set_timer", json.dumps({"duration": seconds}), 1.0)
        assert out.output["ok"], out.output

    async def ringing_sound(self) -> None:
        await self.until(lambda: (b := self.listener.last_sound()) is not None and time.monotonic() - b.mono < 0.03, 6,
                         "the alarm sounding")

    async def press(self, pin: int) -> float:
        """Press and release a button; returns when it was pressed (monotonic): while ringing,
        both buttons act on the press."""
        p = self.factory.pin(pin)
        pressed = time.monotonic()
        p.drive_low()
        await asyncio.sleep(0.08)
        p.drive_high()
        return pressed

    async def quiet_after(self, t: float) -> float:
        return await asyncio.to_thread(silenced_after, self.listener, t)


@pytest.mark.timeout(120)
@pytest.mark.simulator(pace=2.0, script=[Turn(say="Here is a long answer about the garden and the weather today.")])
async def test_buttons_stop_the_ring_mute_stays_and_a_ring_waits_for_the_conversation(
        tmp_path: Path, alsa_rig, simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from device.app import App
    from device.config import load_settings
    from device.gpio import resolve_pin_factory

    alsa_rig.start_mic("test_mic")
    speaker = alsa_rig.start_speaker("test_spk_fifo")
    listener = Listener(speaker.out).start()
    config = write_device_config(tmp_path, simulator, sections={
        "audio": {"input": "test_mic", "output": "test_spk_fifo", "output_buffer_ms": 40},
        "realtime": {"follow_up_s": 0.5},
        "gpio": {"mute_pin": MUTE_PIN, "talk_pin": TALK_PIN, "pin_factory": "mock", "bounce_ms": 10},
        "state": {"dir": str(tmp_path / "state")},
    })
    factory = resolve_pin_factory("mock")
    app = App(load_settings(config))
    d = InProcess(app, factory, listener)
    run = asyncio.get_running_loop().create_task(app.run())
    try:
        await d.until(lambda: app.assistant is not None and app.assistant.state is State.IDLE, 20, "the daemon idle")
        a = app.assistant

        # The talk button stops the ring (and opens no conversation).
        await d.set_timer(1)
        await d.until(lambda: d.of(RingStarted), 3, "ringing")
        await d.ringing_sound()
        t = await d.press(TALK_PIN)
        assert await d.quiet_after(t) < STOP_MAX_S
        assert [e.source for e in d.of(RingStopped)] == ["talk button"]
        await asyncio.sleep(0.3)
        assert a.state is State.IDLE and not simulator.sessions[1:], "the press only stopped the ring"

        # The mute button's press stops the ring and leaves mute as it was.
        await d.set_timer(1)
        await d.until(lambda: len(d.of(RingStarted)) == 2, 3, "ringing again")
        await d.ringing_sound()
        t = await d.press(MUTE_PIN)
        assert await d.quiet_after(t) < STOP_MAX_S
        assert d.of(RingStopped)[-1].source == "mute button"
        assert not a.muted and not [e for e in d.of(MuteChanged) if e.source != "startup"]

        # A muted speaker still rings (mute is the microphone's); the mute press again only stops it.
        await d.press(MUTE_PIN)
        await d.until(lambda: a.muted and a.state is State.MUTED, 3, "muted")
        await d.set_timer(1)
        await d.until(lambda: len(d.of(RingStarted)) == 3, 3, "ringing while muted")
        await d.ringing_sound()
        assert a.state is State.RINGING and a.muted
        t = await d.press(MUTE_PIN)
        assert await d.quiet_after(t) < STOP_MAX_S
        await d.until(lambda: a.state is State.MUTED, 3, "back to muted")
        assert a.muted and [e.muted for e in d.of(MuteChanged) if e.source != "startup"] == [True]
        await d.press(MUTE_PIN)
        await d.until(lambda: not a.muted and a.state is State.IDLE, 3, "unmuted")

        # A timer that ends during a conversation rings once the conversation is over.
        await a.start_conversation("Tell me about the garden.", source="test")
        await d.until(lambda: a.state is State.SPEAKING, 10, "speaking")
        await d.set_timer(1)
        from device.events import ConversationEnded
        from device.timers.model import TimerEvent
        finished = await d.until(lambda: [e for e in d.of(TimerEvent) if e.event_type == "timer_finished"][2:], 5,
                                 "the fourth timer's end")
        ended = await d.until(lambda: d.of(ConversationEnded), 20, "the conversation's end")
        ring = await d.until(lambda: d.of(RingStarted)[3:], 5, "the ring after the conversation")
        assert finished[0].t < ended[-1].t <= ring[0].t
        await d.ringing_sound()
        a.stop_ringing("test")
    finally:
        app.request_stop()
        await asyncio.wait_for(run, 10)
        listener.stop()
