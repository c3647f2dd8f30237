"""A cold echo canceller (issue 13), offline on the simulated room: what it leaks in its first
seconds, and after the echo path changed, is marked as unsettled, so the conversation does not
stream it while a reply plays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from device.audio.echo import SETTLE_S, EchoFrontEnd
from device.audio.frames import AudioFrame
from tests.rig import room as rm

RATE = 16000
REPLY = ["Sure. Tomorrow will be mostly sunny with a high of twenty two degrees and a light breeze from the west.",
         "In the evening clouds move in, and there is a small chance of rain after midnight."]
LOUD_DBFS = -45.0  # the echo the server's voice detection must never hear (it fires at about -32 dBFS)


class _Far:
    """A reference that hands the front-end a prepared far end, frame by frame."""

    reports_queue = False  # (its far end has no clock to follow)

    def __init__(self, far: np.ndarray) -> None:
        self.far, self.at, self.played = far, 0, None

    def read(self, t: float, n: int) -> np.ndarray:
        x = self.far[self.at : self.at + n]
        self.at += n
        return x


def frames_through(fe: EchoFrontEnd, mic: np.ndarray) -> list[AudioFrame]:
    out = []
    for k, i in enumerate(range(0, len(mic) - 1279, 1280)):
        out.append(fe.process(AudioFrame(k, mic[i : i + 1280].tobytes(), b"", k * 0.08)))
    return out


def dbfs(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(10 * np.log10(np.mean(x**2) / 32768.0**2 + 1e-12))


# bench/aec.py's slowest room to converge, and others: a cold AEC3 leaks in their first seconds
# (how loud varies with the floating-point state of the process: -34 to -46 dBFS in the first, in
# different runs; the third, other reflections of the first, leaked -25 dBFS where it leaked -34).
ROOMS = [rm.Room(rt60_s=0.6, delay_ms=60, seed=60), rm.Room(rt60_s=0.55, delay_ms=50, seed=3),
         rm.Room(rt60_s=0.6, delay_ms=60, seed=7)]


def test_what_a_cold_canceller_leaks_is_marked_unsettled(speech) -> None:
    parts = []
    for text in REPLY:
        parts += [speech.say(text, voice="en-us+f3", speed=165), speech.silence(0.25)]
    far = np.concatenate(parts)
    far = far[: len(far) // 1280 * 1280]
    leaks = []
    for room in ROOMS:
        mic = rm.to_int16(room.echo(far, ref_rms=rm.active_rms(far / 32768.0)) + room.noise(len(far)))
        fe = EchoFrontEnd(echo_cancellation=True, reference=_Far(far))  # type: ignore[arg-type]
        frames = frames_through(fe, mic)
        cold = [dbfs(f.pcm16k) for f in frames if not f.echo_settled]
        warm = [dbfs(f.pcm16k) for f in frames if f.echo_settled]
        assert cold, "the canceller trusted itself from the first frame"
        print(f"RT60 {room.rt60_s} s, {room.delay_ms:.0f} ms: loudest 80 ms of echo {max(cold):.1f} dBFS while "
              f"settling ({len(cold) * 0.08:.1f} s), {max(warm):.1f} dBFS after ({len(warm) * 0.08:.1f} s)")
        assert warm and max(warm) < LOUD_DBFS, "echo loud enough to be taken for a person came after the canceller settled"
        flags = [f.echo_settled for f in frames]
        assert flags == sorted(flags), "the flag went up and down again"
        # Trusted once it shows it cancels the echo (AEC3 trained on the path the linear stage
        # learnt), not only once it has heard SETTLE_S of the speaker.
        assert len(cold) * 0.08 <= SETTLE_S - 0.6, "the canceller was trusted only when its count ran out"
        leaks.append(max(cold))
    assert max(leaks) > LOUD_DBFS, "these rooms no longer make a cold canceller leak: the test needs harsher ones"


def test_settling_counts_what_the_speaker_played_and_outlives_a_mute() -> None:
    rng = np.random.default_rng(1)
    quiet = np.zeros(RATE * 5, dtype=np.int16)
    sound = (rng.standard_normal(int(RATE * (SETTLE_S + 0.5))) * 3000).astype(np.int16)
    far = np.concatenate([quiet, sound])
    mic = (rng.standard_normal(len(far)) * 30).astype(np.int16)
    fe = EchoFrontEnd(echo_cancellation=True, reference=_Far(far))  # type: ignore[arg-type]
    frames = frames_through(fe, mic[: len(quiet)])
    assert not any(f.echo_settled for f in frames), "silence from the speaker settled the canceller"
    frames = frames_through(fe, mic[len(quiet) :])
    settled_at = next(k for k, f in enumerate(frames) if f.echo_settled)
    assert abs(settled_at * 0.08 - SETTLE_S) <= 0.1
    fe.reset()  # unmuted: AEC3 keeps what it learnt
    assert fe.echo_settled
    assert EchoFrontEnd(echo_cancellation=False, noise_suppression=2).echo_settled  # nothing to wait for


BEFORE = rm.Room(rt60_s=0.45, delay_ms=30, seed=7, echo_dbfs=-30.0)


@pytest.mark.parametrize("after, moved", [
    (rm.Room(rt60_s=0.45, delay_ms=50, seed=8, echo_dbfs=-24.0), True),  # another place, 20 ms further
    (BEFORE, False),  # nothing moved
    (rm.Room(rt60_s=0.45, delay_ms=34, seed=7, echo_dbfs=-30.0), False),  # the same room 4 ms later (two clocks drifting)
], ids=["speaker moved", "nothing moved", "echo 4 ms later"])
def test_after_the_speaker_moved_the_canceller_settles_again(speech, after, moved) -> None:
    """Between two replies the speaker is moved (the echo comes 20 ms later, through another room):
    AEC3 leaks the new echo loudly while it learns it. Once the delay estimator has measured the
    echo elsewhere, the frames are marked unsettled again, so nothing loud streams. With nothing
    moved, or the echo a few ms later (which AEC3 follows), the second reply stays settled."""
    reply = speech.say(" ".join(REPLY), voice="en-us+f3", speed=165)
    reply = reply[: len(reply) // 1280 * 1280]
    far = np.concatenate([reply, np.zeros(1280 * 10, dtype=np.int16), reply])
    second = (len(far) - len(reply)) // 1280  # the second reply's first frame
    echo = [room.echo(far, ref_rms=rm.active_rms(far / 32768.0)) + room.noise(len(far)) for room in (BEFORE, after)]
    mic = rm.to_int16(np.concatenate([echo[0][: second * 1280], echo[1][second * 1280 :]]))
    fe = EchoFrontEnd(echo_cancellation=True, reference=_Far(far))  # type: ignore[arg-type]
    frames = frames_through(fe, mic)[second:]
    unsettled = [k for k, f in enumerate(frames) if not f.echo_settled]
    if not moved:
        assert not unsettled, f"the canceller settled again {unsettled[0] * 0.08:.2f} s into a reply though nothing moved"
        assert max(dbfs(f.pcm16k) for f in frames) < LOUD_DBFS
        return
    assert unsettled, "the canceller did not notice that the echo path changed"
    noticed = unsettled[0]
    loud = [dbfs(f.pcm16k) for f in frames[noticed:] if not f.echo_settled]
    streamed = [dbfs(f.pcm16k) for f in frames[noticed:] if f.echo_settled]
    print(f"speaker moved: noticed {noticed * 0.08:.2f} s into the reply, settled again {len(loud) * 0.08:.2f} s later; "
          f"loudest 80 ms held back {max(loud):.1f} dBFS, "
          f"streamed after that {max(streamed):.1f} dBFS (before it noticed: {max((dbfs(f.pcm16k) for f in frames[:noticed]), default=float('nan')):.1f})")
    # Noticed at the first measure of the echo's delay in the reply (every 0.16 s over its first second),
    # before AEC3's leak of the new echo streams; the new delay is confirmed (the linear stage moves) by the next.
    assert noticed * 0.08 <= 0.24
    assert max((dbfs(f.pcm16k) for f in frames[:noticed]), default=-120.0) < LOUD_DBFS
    again = noticed + len(loud)  # (the frames held back after it noticed)
    assert (again - noticed) * 0.08 <= SETTLE_S - 0.6, "the new path was trusted only when the count ran out"
    assert max(loud) > LOUD_DBFS, "this move no longer makes AEC3 leak: the test needs a harsher one"
    assert max(streamed) < LOUD_DBFS


def test_a_speaker_that_makes_the_microphone_clip_is_reported(speech, caplog: pytest.LogCaptureFixture) -> None:
    """Turned up until the microphone clips on its own sound (say by "volume 100" over MQTT, after
    `speaker check` passed), the speaker's echo is no longer what was played, and the wake word
    goes unheard over replies: the daemon says so, and what to turn down. A person shouting into
    the microphone over a reply is not the speaker clipping, and neither is a speaker that does not."""
    import logging

    parts = []
    for text in REPLY:
        parts += [speech.say(text, voice="en-us+f3", speed=165), speech.silence(0.25)]
    far = np.concatenate(parts * 2)
    far = far[: len(far) // 1280 * 1280]
    shout = speech.say("Stop, stop, that is enough, thank you!", voice="en-gb", speed=160)
    caplog.set_level(logging.WARNING, logger="device.audio.echo")
    for echo_dbfs, person, said in ((-3.0, False, True), (-12.0, False, True), (-24.0, False, False), (-24.0, True, False)):
        room = rm.Room(rt60_s=0.45, delay_ms=30, seed=5, echo_dbfs=echo_dbfs)
        echo = room.echo(far, ref_rms=rm.active_rms(far / 32768.0)) + room.noise(len(far))
        if person:  # at full scale and beyond, 4 s into the second playing
            at = len(far) // 2 + 4 * RATE
            echo[at : at + len(shout)] += shout / 32768.0 * (1.5 / (np.max(np.abs(shout)) / 32768.0))
        mic = rm.to_int16(echo)
        caplog.clear()
        fe = EchoFrontEnd(echo_cancellation=True, reference=_Far(far))  # type: ignore[arg-type]
        frames_through(fe, mic)
        clipped = float(np.mean(np.abs(mic) >= 32000))
        warned = [r.getMessage() for r in caplog.records if "clips on the speaker's own sound" in r.getMessage()]
        print(f"echo {echo_dbfs:+.0f} dBFS{' and a person shouting' if person else ''}: {clipped * 100:.2f} % of samples "
              f"at full scale; {fe.clipped_frames} frames taken for the speaker clipping; said {len(warned)} times")
        if said or person:
            assert clipped > 0, "the scene does not make the microphone clip"
        if said:
            assert len(warned) == 1 and "audio.volume" in warned[0], warned  # once, not on every frame
        else:
            assert not warned and fe.clipped_frames == 0, warned


def test_an_underrun_holds_a_replys_audio_back_for_a_second(speech) -> None:
    """The speaker ran dry in the middle of a reply (a starved CPU, a stalled SD card): for a moment the
    reference may not line up with the echo, so the reply's microphone audio is held back from the
    session for a second, then streamed again. Nothing is learnt again: the canceller stays settled."""
    from device.audio.echo import HOLD_S

    reply = _reply(speech)
    far = np.concatenate([reply, reply])
    mic = rm.to_int16(BEFORE.echo(far, ref_rms=rm.active_rms(reply / 32768.0)) + BEFORE.noise(len(far)))
    ref = _Far(far)
    ref.restarts = ref.read_snaps = 0  # type: ignore[attr-defined]
    fe = EchoFrontEnd(echo_cancellation=True, reference=ref)  # type: ignore[arg-type]
    first = frames_through(fe, mic[: len(reply)])
    assert first[-1].echo_settled and fe.echo_learnt
    second = []
    for k, i in enumerate(range(len(reply), len(far) - 1279, 1280)):
        if k == 25:  # 2 s into the second reply: the device ran dry
            ref.restarts += 1  # type: ignore[attr-defined]
        second.append(fe.process(AudioFrame(k, mic[i : i + 1280].tobytes(), b"", k * 0.08)))
        assert fe.echo_learnt, "an underrun made the canceller learn the room again"
    held = [k for k, f in enumerate(second) if not f.echo_settled]
    assert held == list(range(25, 25 + math.ceil(HOLD_S / 0.08))), held  # (whole frames)
    assert fe.holds == 1


def _reply(speech) -> np.ndarray:
    parts = []
    for text in REPLY:
        parts += [speech.say(text, voice="en-us+f3", speed=165), speech.silence(0.25)]
    x = np.concatenate(parts)
    return x[: len(x) // 1280 * 1280]


def _learnt(room: rm.Room, far: np.ndarray) -> list:
    """The echo paths a front-end hands on over ``far`` (replies with silence after) in ``room``."""
    mic = rm.to_int16(room.echo(far, ref_rms=rm.active_rms(far / 32768.0)) + room.noise(len(far)))
    fe = EchoFrontEnd(echo_cancellation=True, reference=_Far(far))  # type: ignore[arg-type]
    kept: list = []
    fe.on_path = kept.append
    frames_through(fe, mic)
    return kept


def test_the_echo_path_is_handed_on_after_a_reply_cancelled_well(speech) -> None:
    """After a reply, once the speaker has been quiet for a second, the echo path the linear stage
    learnt is handed on to be kept across restarts; not again for the next reply (nothing moved),
    and not after a reply a person talked over at its end (the echo was not all it heard)."""
    reply = _reply(speech)
    gap = np.zeros(RATE * 2, dtype=np.int16)
    kept = _learnt(BEFORE, np.concatenate([reply, gap, reply, gap]))
    assert len(kept) == 1, f"handed on {len(kept)} times over two replies in one room"
    assert abs(kept[0].delay - BEFORE.delay_ms * RATE / 1000) <= 16 and len(kept[0].taps) == 4096
    # A person talking over the end of the first reply after boot: nothing is kept.
    far = np.concatenate([reply, gap])
    echo = BEFORE.echo(far, ref_rms=rm.active_rms(far / 32768.0)) + BEFORE.noise(len(far))
    talk = speech.say("no, wait, tell me about the weekend instead", voice="en-gb")
    at = len(reply) - len(talk)
    echo[at : at + len(talk)] += talk / 32768.0 * (rm.active_rms(echo[:len(reply)]) / rm.active_rms(talk / 32768.0))
    fe = EchoFrontEnd(echo_cancellation=True, reference=_Far(far))  # type: ignore[arg-type]
    talked: list = []
    fe.on_path = talked.append
    frames_through(fe, rm.to_int16(echo))
    assert not talked, "a path learnt while a person talked was kept"


@pytest.mark.parametrize("now, holds", [
    (BEFORE, True),  # nothing changed
    (rm.Room(rt60_s=0.45, delay_ms=30 + 84, seed=7, echo_dbfs=-30.0), True),  # a sound server's latency 84 ms longer
    (rm.Room(rt60_s=0.45, delay_ms=33, seed=7, echo_dbfs=-30.0), True),  # 3 ms longer
    (rm.Room(rt60_s=0.55, delay_ms=50, seed=8, echo_dbfs=-24.0), False),  # the speaker moved while the daemon was off
], ids=["same room", "84 ms later", "3 ms later", "speaker moved"])
def test_a_kept_echo_path_settles_the_first_reply_at_once(speech, caplog: pytest.LogCaptureFixture, now, holds) -> None:
    """Started from the echo path kept in an earlier run, the canceller need not learn the room
    from the first reply after boot: it is trusted within a second of that reply (a cold one, after
    3 s), and what it lets through then is far below what a voice detector takes for a person.
    Where the echo came back at another delay (a sound server's latency differs from one start to
    the next), the path moves there. A speaker moved while the daemon was off does not pass: the
    canceller settles as a cold one does, and the wake word's stream soon has less echo than the
    microphone (a filter for the old place, at the new delay, does not add echo of its own)."""
    import logging

    from device.audio.echo import KEPT_HOLDS_DB

    reply = _reply(speech)
    gap = np.zeros(RATE * 2, dtype=np.int16)
    kept = _learnt(BEFORE, np.concatenate([reply, gap]))
    assert kept, "no echo path was handed on"
    far = np.concatenate([gap, reply])
    mic = rm.to_int16(now.echo(far, ref_rms=rm.active_rms(reply / 32768.0)) + now.noise(len(far)))
    caplog.set_level(logging.INFO, logger="device.audio.echo")
    fe = EchoFrontEnd(echo_cancellation=True, reference=_Far(far))  # type: ignore[arg-type]
    fe.start_from(kept[-1])
    frames = frames_through(fe, mic)[len(gap) // 1280 :]
    settled = [f.echo_settled for f in frames]
    at = settled.index(True) * 0.08 if True in settled else float("inf")
    streamed = [dbfs(f.pcm16k) for f in frames if f.echo_settled]
    wake = np.concatenate([np.frombuffer(f.for_wake, dtype=np.int16) for f in frames]).astype(np.float64)
    heard = mic[len(gap) :].astype(np.float64)
    print(f"settled {at:.2f} s into the first reply; loudest 80 ms streamed {max(streamed):.1f} dBFS; "
          + "; ".join(r.getMessage() for r in caplog.records if "kept" in r.getMessage()))
    assert settled == sorted(settled), "the flag went up and down again"
    # (A cold canceller streams -55 to -68 dBFS here once settled; one trained for the kept path
    # at the old delay, where the echo came 84 ms later, -50.)
    assert max(streamed) < (-55.0 if holds else LOUD_DBFS)
    if holds:
        assert at <= 1.2, f"a kept path that holds settled only {at:.2f} s into the reply"
        assert "the echo path kept from before holds" in caplog.text
        return
    assert "no longer holds" in caplog.text or "the echo path changed" in caplog.text
    # The new place's path is learnt as on a first boot: trusted once both stages cancel it.
    assert "it learnt the echo path" in caplog.text or at >= SETTLE_S
    assert at > 1.2, f"a path learnt in another place was trusted {at:.2f} s into the reply"
    # Once the trial is over (about a second), the wake word's stream is no louder than the microphone.
    late = slice(int(1.5 * RATE), None)
    assert 10 * np.log10(np.mean(wake[late] ** 2) / np.mean(heard[late] ** 2)) < -KEPT_HOLDS_DB / 2
