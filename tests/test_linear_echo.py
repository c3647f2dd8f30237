"""The linear echo canceller (the wake engine's stream, issue 13), offline on the simulated room:
it learns a room's echo path from a spoken reply, and a person talking over the reply neither
gets cancelled nor spoils what it learnt."""

from __future__ import annotations

import numpy as np
import pytest

from device.audio.linear_echo import LinearEchoCanceller
from tests.rig import room as rm

RATE = 16000
REPLY = ("Sure. Tomorrow will be mostly sunny with a high of twenty two degrees and a light breeze from the west. "
         "In the evening clouds move in, and there is a small chance of rain after midnight.")


def run(c: LinearEchoCanceller, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
    n = len(mic) // 1280 * 1280
    return np.concatenate([c.process(mic[i : i + 1280], far[i : i + 1280]) for i in range(0, n, 1280)])


@pytest.fixture(scope="module")
def scene(speech):
    far = speech.say(REPLY, voice="en-us+f3", speed=165)
    far = far[: len(far) // 1280 * 1280]
    room = rm.Room(rt60_s=0.45, delay_ms=35, seed=2)
    echo = room.echo(far, ref_rms=rm.active_rms(far.astype(np.float64) / 32768.0)) + room.noise(len(far))
    return far, echo


def test_the_echo_of_a_reply_is_learnt_within_the_reply(scene) -> None:
    far, echo = scene
    mic = rm.to_int16(echo)
    out = run(LinearEchoCanceller(), mic, far).astype(np.float64)
    half = len(out) // 2
    late = rm.erle_db(mic[half:].astype(np.float64), out[half:])
    print(f"linear ERLE over the reply's second half: {late:.1f} dB")
    assert late >= 15.0  # the wake engine finds "hey jarvis" at 0 dB SER once the echo is 15 dB down
    # A second reply in the same room starts where the first left off.
    c = LinearEchoCanceller()
    run(c, mic, far)
    again = run(c, mic, far).astype(np.float64)
    assert rm.erle_db(mic.astype(np.float64), again) >= 20.0


def test_a_person_talking_over_the_reply_is_left_intact(scene, speech) -> None:
    far, echo = scene
    c = LinearEchoCanceller()
    run(c, rm.to_int16(echo), far)  # one reply heard: the path is known
    near = speech.say("wait, what about the weekend", voice="en-gb").astype(np.float64) / 32768.0
    at = RATE * 3
    near *= rm.active_rms(echo) / rm.active_rms(near)  # 0 dB speech-to-echo ratio
    both = echo.copy()
    both[at : at + len(near)] += near
    out = run(c, rm.to_int16(both), far).astype(np.float64)
    span = slice(at, at + len(near))
    corr = rm.envelope_correlation(out[span], near * 32768.0)
    kept = 20 * np.log10(rm.active_rms(out[span] / 32768.0) / rm.active_rms(near))
    print(f"double talk: envelope correlation {corr:.3f}, talker level {kept:+.1f} dB")
    assert corr >= 0.9 and abs(kept) < 3.0
    # The double talk did not spoil the filter: the reply after it is still cancelled.
    after = slice(at + len(near) + RATE // 2, len(out))
    assert rm.erle_db(rm.to_int16(both)[after].astype(np.float64), out[after]) >= 15.0


def test_silence_from_the_speaker_passes_the_microphone_through(speech) -> None:
    talk = speech.say("hey jarvis", voice="en-us")
    talk = talk[: len(talk) // 1280 * 1280]
    out = run(LinearEchoCanceller(), talk, np.zeros_like(talk))
    assert np.array_equal(out, talk)


def test_blocks_must_match() -> None:
    c = LinearEchoCanceller()
    with pytest.raises(ValueError, match="multiple of 256"):
        c.process(np.zeros(1000, np.int16), np.zeros(1000, np.int16))
    with pytest.raises(ValueError):
        c.process(np.zeros(1280, np.int16), np.zeros(2560, np.int16))


@pytest.mark.parametrize("lag_ms", [5, 180, 400])
def test_a_delay_the_device_does_not_report_is_found(scene, lag_ms) -> None:
    """A FIFO or a USB card that holds more audio than it says: the echo arrives later than the
    far end says; the filter's span follows it."""
    far, echo = scene
    lag = lag_ms * RATE // 1000
    late = np.concatenate([np.zeros(lag), echo])[: len(echo)]
    mic = rm.to_int16(late)
    c = LinearEchoCanceller()
    out = run(c, mic, far).astype(np.float64)
    assert c.delays.delay is not None and abs(c.delays.delay - (lag + 35 * RATE // 1000)) < 48  # the room adds 35 ms
    half = len(out) // 2
    assert rm.erle_db(mic[half:].astype(np.float64), out[half:]) >= 15.0
    # Each measure says how clearly the echo showed: a clear peak where it is, nothing elsewhere.
    d = c.delays
    assert d.peak > 20.0 and d.score_at(d.delay) == pytest.approx(d.peak, rel=0.3)
    assert d.score_at(d.delay + 100 * RATE // 1000 if d.delay < 300 * RATE // 1000 else d.delay - 100 * RATE // 1000) < 6.0
