"""Timers ring through the real assistant: the alarm comes out of the rig's speaker (real
Playback into an ALSA FIFO read at real-time pace), the text is spoken through the realtime
simulator, and every stop path silences the speaker."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from device.audio.cues import cue_pcm
from device.audio.playback import volume_gain
from device.events import ConversationEnded, RingStarted, RingStopped, State, Transcript, WakeDetected
from services.simulator import RealtimeSimulator
from tests.rig.speech import Speech
from tests.test_assistant import WAKE, Device, locate, make_device, pcm  # noqa: F401  (make_device: fixture)

pytestmark = pytest.mark.timeout(60)

RATE = 24000


def alarm_heard(out: np.ndarray, since: int, d: Device) -> bool:
    """The alarm cue is in the speaker output after sample ``since``."""
    gain = volume_gain(d.assistant.volume) * d.settings.audio.cue_volume / 100
    alarm = pcm(cue_pcm("alarm")).astype(np.float64) * gain
    tail = out[since:]
    if len(tail) < len(alarm):
        return False
    _, score = locate(tail, alarm[: RATE // 4])
    return score > 0.9


async def stop_and_check_silence(d: Device, stop: object, what: str) -> float:
    """Run ``stop`` (a callable) and return the loudest level (0-1) from 200 ms after it on, for
    0.5 s. A silent speaker gets no more samples at all (playback writes nothing when idle)."""
    assert d.speaker is not None
    before = len(d.speaker.data()) // 2
    result = stop() if callable(stop) else None
    if asyncio.iscoroutine(result):
        await result
    await asyncio.sleep(0.9)
    out = pcm(d.speaker.data())
    window = out[before + RATE * 2 // 10 : before + RATE * 7 // 10]
    return float(np.max(np.abs(window))) / 32768 if len(window) else 0.0


@pytest.mark.simulator(pace=1)
async def test_ring_alarm_text_and_each_stop_path_silences_the_speaker(make_device, speech: Speech,
                                                                       simulator: RealtimeSimulator) -> None:
    # A small device buffer: the rig's file plugin plays out what it holds on drop() (a card
    # discards it), which would otherwise count against the 200 ms.
    d = await make_device(speaker_fifo=True, audio={"output_buffer_ms": 40})
    a = d.assistant
    assert d.speaker is not None
    await asyncio.sleep(1.2)  # the wake model ignores its first second

    # 1. Alarm, the text once (spoken by the model), the alarm again; the talk button stops it.
    start = len(d.speaker.data()) // 2
    a.ring("t1", "timer", "The pasta timer is done")
    assert a.state is State.RINGING and d.of(RingStarted)[0].text == "The pasta timer is done"
    await d.until(lambda: alarm_heard(pcm(d.speaker.data()), start, d), 5, "the alarm on the speaker")
    await d.until(lambda: [t for t in d.of(Transcript) if "pasta timer" in t.text], 10, "the text spoken")
    assert a.state is State.RINGING and len(simulator.sessions) == 1
    create, = simulator.sessions[0].events_of("response.create")
    assert "The pasta timer is done" in create["response"]["instructions"] and create["response"]["conversation"] == "none"
    assert simulator.sessions[0].responses[0].out_of_band
    spoken_at = len(d.speaker.data()) // 2
    await d.until(lambda: simulator.sessions[0].closed and alarm_heard(pcm(d.speaker.data()), spoken_at, d), 10,
                  "the alarm again after the text")
    level = await stop_and_check_silence(d, a.talk_pressed, "talk button")
    assert level < 0.01, f"still {level:.2f} full scale 200 ms after the talk button"
    stopped, = d.of(RingStopped)
    assert stopped.ring_ids == ("t1",) and stopped.source == "talk button" and a.state is State.IDLE
    assert not d.of(ConversationEnded)  # the ring's text is not a conversation

    # 2. Muted (the microphone): it still rings; the mute button stops it without unmuting.
    await a.set_muted(True, "test")
    a.ring("t2", "timer", "")
    a.ring("t3", "reminder", "")  # merges into the same ringing
    start = len(d.speaker.data()) // 2
    await d.until(lambda: alarm_heard(pcm(d.speaker.data()), start, d), 5, "the alarm while muted")
    level = await stop_and_check_silence(d, lambda: a.stop_ringing("mute button"), "mute button")
    assert level < 0.01
    assert d.of(RingStopped)[-1].ring_ids == ("t2", "t3") and a.state is State.MUTED and a.muted
    await a.set_muted(False, "test")

    # 3. The wake word stops it, and no conversation starts.
    a.ring("t4", "timer", "")
    start = len(d.speaker.data()) // 2
    await d.until(lambda: alarm_heard(pcm(d.speaker.data()), start, d), 5, "the alarm")
    sessions = len(simulator.sessions)
    mark = len(d.events)
    d.say(speech, WAKE)
    await d.until(lambda: d.of(RingStopped, lambda e: e.source == "wake word"), 10, "stopped by the wake word")
    await asyncio.sleep(1.0)
    assert a.state is State.IDLE and len(simulator.sessions) == sessions
    assert [e for e in d.events[mark:] if isinstance(e, WakeDetected)]

    # 4. MQTT (stop_ringing as presence calls it), and 5. the timeout.
    a.ring("t5", "timer", "")
    await asyncio.sleep(0.3)
    level = await stop_and_check_silence(d, lambda: a.stop_ringing("mqtt"), "mqtt")
    assert level < 0.01 and d.of(RingStopped)[-1].source == "mqtt"
    assert a.stop_ringing("mqtt") is False  # nothing rings


@pytest.mark.simulator(pace=0)
async def test_ring_times_out_and_a_ring_during_a_reply_waits(make_device, simulator: RealtimeSimulator) -> None:
    d = await make_device(speaker_fifo=True)
    a = d.assistant
    a.ring_max_s = 1.5
    t0 = time.monotonic()
    a.ring("t1", "timer", "")
    stopped = await d.until(lambda: d.of(RingStopped), 5, "timeout")
    assert stopped[0].source == "timeout" and 1.3 < stopped[0].t - t0 < 2.5
    await d.until(lambda: a.state is State.IDLE, 2, "idle")
    # During a conversation the ring waits until it is over.
    await a.start_conversation("Say hello.")
    await d.until(lambda: a.state is State.SPEAKING, 10, "speaking")
    a.ring("t2", "timer", "")
    assert a.state is State.SPEAKING
    await d.until(lambda: a.state is State.RINGING, 15, "ringing after the conversation")
    assert d.of(ConversationEnded)
