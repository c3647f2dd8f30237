"""Double talk (issue 13), offline on the simulated room: a person who talks over a reply reaches
the session whole, while the reply's echo stays as far down as AEC3 alone keeps it, from a cold
start, with a clipping microphone, and with nothing playing."""

from __future__ import annotations

import numpy as np
import pytest

from device.audio.echo import EchoFrontEnd
from tests.rig import room as rm

RATE = 16000
REPLY = ("Sure. Tomorrow will be mostly sunny with a high of twenty two degrees and a light breeze from the west. "
         "In the evening clouds move in, and there is a small chance of rain after midnight.")
TALK = "Wait, could you tell me about the weekend instead, please?"


def run(mic: np.ndarray, far: np.ndarray | None, **kw) -> tuple[np.ndarray, np.ndarray]:
    """(what the session hears, AEC3's output alone) of ``mic`` with ``far`` playing."""
    fe = EchoFrontEnd(echo_cancellation=True, **kw)
    session, aec3 = np.zeros_like(mic), np.zeros_like(mic)
    for i in range(0, len(mic) - 1279, 1280):
        session[i : i + 1280] = fe.process16k(mic[i : i + 1280], None if far is None else far[i : i + 1280])
        aec3[i : i + 1280] = fe.aec3_audio
    return session, aec3


def loudest(x: np.ndarray) -> float:
    """The loudest 80 ms, dBFS."""
    return float(20 * np.log10(max(rm.envelope(x.astype(np.float64), ms=80).max(), 1e-9) / 32768.0))


@pytest.fixture(scope="module")
def two_replies(speech):
    """A reply, a pause, the same reply again, as the room brings them back to the microphone."""
    reply = speech.say(REPLY, voice="en-us+f3", speed=165)
    reply = reply[: len(reply) // 1280 * 1280]
    far = np.concatenate([reply, np.zeros(1280 * 10, dtype=np.int16), reply])
    return far, len(far) - len(reply)


def echo_of(far: np.ndarray, room: rm.Room) -> np.ndarray:
    return room.echo(far, ref_rms=rm.active_rms(far.astype(np.float64) / 32768.0)) + room.noise(len(far))


@pytest.mark.parametrize("ser_db", [5, 0, -5])
def test_a_person_talking_over_a_reply_reaches_the_session_whole(two_replies, speech, ser_db) -> None:
    far, second = two_replies
    echo = echo_of(far, rm.Room(rt60_s=0.45, delay_ms=30, seed=7))
    talk = speech.say(TALK, voice="en-gb", speed=160).astype(np.float64) / 32768.0
    at = second + 4 * RATE
    near = np.zeros_like(echo)
    near[at : at + len(talk)] = talk * rm.active_rms(echo[second:]) * 10 ** (ser_db / 20) / rm.active_rms(talk)
    session, aec3 = run(rm.to_int16(echo + near), far)
    a, b = at, at + len(talk)
    got, before = (rm.aligned_envelope_correlation(x.astype(np.float64), near, a, b) for x in (session, aec3))
    print(f"SER {ser_db:+d} dB: talker's envelope correlation {got:.3f} in the session, {before:.3f} with AEC3 alone")
    assert got >= 0.9, "the talker was carved up with the echo"
    assert got > before + 0.1


def test_a_person_saying_stop_over_a_reply_is_heard_from_the_first_vowel(two_replies, speech) -> None:
    """"Stop" over the reply at -5 dB SER, at eleven places in it: AEC3's suppressor takes the vowel
    after the "st" down entirely where the echo is loud, and the gap of the "t" (which the linear
    stage cancels well) ends a detection. The session must hear the talker start as soon as a clean
    recording of them starts (190 ms in, the vowel), not at "please", 400 ms later (before: 3 of 11)."""
    far, second = two_replies
    echo = echo_of(far, rm.Room(rt60_s=0.4, delay_ms=45, seed=3, echo_dbfs=-26))
    talk = speech.trim(speech.say("stop please, that is enough", voice="en-gb")).astype(np.float64) / 32768.0
    talk *= rm.active_rms(echo[second:]) * 10 ** (-5 / 20) / rm.active_rms(talk)
    heard = {}
    for on_s in np.arange(0.5, 9.0, 0.8):
        at = second + int(on_s * RATE)
        near = np.zeros_like(echo)
        near[at : at + len(talk)] = talk[: len(near) - at]
        clean, got = rm.speech_start(rm.to_int16(near), at), rm.speech_start(run(rm.to_int16(echo + near), far)[0], at)
        heard[round(float(on_s), 1)] = ((clean - at) / 16, None if got is None else (got - at) / 16)
    print("talker's speech start (ms after onset), clean / in the session:", heard)
    late = {on: got for on, (clean, got) in heard.items() if got is None or got > clean + 50}
    assert not late, f"the session heard the talker late (ms after onset, by where in the reply they talked): {late}"


THREE = ["Sure. Tomorrow will be mostly sunny with a high of twenty two degrees and a light breeze from the west.",
         "In the evening clouds move in, and there is a small chance of rain after midnight.",
         "I have turned on the kitchen light and set the thermostat to twenty one degrees."]


def _barge_in(speech, room: rm.Room, at_s: float, ser_db: float, replies: int = 1) -> tuple[int, int | None]:
    """"Stop please, that is enough" ``ser_db`` over the echo, ``at_s`` into the first reply after a
    cold start (three sentences; with ``replies=2``, into the same reply played again 0.64 s later):
    ms from the talker's onset until the simulator's voice detection starts a turn on the talker's
    clean speech, and on what the session hears (None: never)."""
    reply = np.concatenate([np.concatenate([speech.say(t, voice="en-us+f3", speed=165), speech.silence(0.25)]) for t in THREE])
    reply = reply[: len(reply) // 1280 * 1280]
    lead = 1280 * 8
    far = np.concatenate([np.zeros(lead, dtype=np.int16), reply] + [np.zeros(1280 * 8, dtype=np.int16), reply] * (replies - 1))
    echo = room.echo(far, ref_rms=rm.active_rms(reply.astype(np.float64) / 32768.0)) + room.noise(len(far))
    talk = speech.trim(speech.say("stop please, that is enough", voice="en-gb")).astype(np.float64) / 32768.0
    start = len(far) - len(reply)
    at = start + int(at_s * RATE)
    near = np.zeros_like(echo)
    near[at : at + len(talk)] = (talk * rm.active_rms(echo[start:]) * 10 ** (ser_db / 20) / rm.active_rms(talk))[: len(near) - at]
    clean, got = rm.speech_start(rm.to_int16(near), at), rm.speech_start(run(rm.to_int16(echo + near), far)[0], at)
    print(f"talker's speech start: clean {(clean - at) / 16:.0f} ms, in the session "
          f"{'never' if got is None else f'{(got - at) / 16:.0f} ms'} after onset")
    return (clean - at) // 16, None if got is None else (got - at) // 16


@pytest.mark.parametrize("rt60_s, delay_ms, seed, echo_dbfs", [(0.39, 12.7, 383, -30), (0.50, 13.0, 555, -24)])
def test_a_vowel_whose_harmonics_meet_the_replys_is_heard_in_the_first_reply(speech, rt60_s, delay_ms, seed,
                                                                              echo_dbfs) -> None:
    """"Stop" at 0 dB SER, 6.9 s into the first reply after a cold start, where the talker's vowel
    and the reply's share harmonics: over the ~80 ms the coherence is measured on, the linear stage's
    output looks 0.3-0.5 coherent with its echo estimate, over the bound that tells a misadjusted
    filter's leftovers from a person. Just after the linear stage cancelled well, a vowel as loud as
    the echo estimate is a person up to 0.5: the session hears the talker start with the vowel, not
    400 ms later (before: 620 and 610 ms)."""
    clean, got = _barge_in(speech, rm.Room(rt60_s=rt60_s, delay_ms=delay_ms, seed=seed, echo_dbfs=echo_dbfs), 6.9, 0.0)
    assert got is not None and got <= clean + 50, "the session heard the talker late"


@pytest.mark.parametrize("rt60_s, delay_ms, seed, echo_dbfs, ser_db, at_s",
                         [(0.3214, 16.49, 948, -20, 0.0, 5.3), (0.545, 37.5, 980, -20, 4.0, 5.3),
                          (0.3214, 16.49, 948, -20, 0.0, 6.9)])
def test_a_talker_who_clips_the_microphone_is_heard_in_the_first_reply(speech, rt60_s, delay_ms, seed, echo_dbfs,
                                                                       ser_db, at_s) -> None:
    """"Stop" in the first reply after a cold start, in a loud room: 140-190 ms in, the talker on
    top of the echo clips the microphone, which the echo alone never does. A clip is the echo's only
    where the echo estimate could have made it (half of full scale; at 6.9 s, where the linear stage
    usually cancels 20 dB, three quarters): the session hears the talker from there, not from the
    vowel 300 ms later (before: 530, 490 and 530 ms)."""
    _, got = _barge_in(speech, rm.Room(rt60_s=rt60_s, delay_ms=delay_ms, seed=seed, echo_dbfs=echo_dbfs),
                                   at_s, ser_db)
    assert got is not None and got <= 250, "the session heard the talker late"


def test_a_talker_whose_first_sound_rises_slowly_is_heard_from_it(speech) -> None:
    """"Stop" at -5 dB SER over the second reply: the "s" reaches -5 dB of the linear stage's echo
    estimate only in its fifth 8 ms hop, by when AEC3 has taken it down, and is heard too briefly
    for a voice detection. A sound that rose 9 dB against the estimate in four hops is new, not the
    reply's: the session hears the talker from the "s", not from the vowel 400 ms later (before: 640 ms)."""
    clean, got = _barge_in(speech, rm.Room(rt60_s=0.4225, delay_ms=12.26, seed=48, echo_dbfs=-30), 6.9, -5.0,
                                       replies=2)
    assert got is not None and got <= clean + 50, "the session heard the talker late"


def test_with_nobody_talking_the_session_hears_no_more_echo_than_aec3_alone(two_replies) -> None:
    far, second = two_replies
    session, aec3 = run(rm.to_int16(echo_of(far, rm.Room(rt60_s=0.6, delay_ms=10, seed=2))), far)
    cold, warm = (loudest(session[:second]), loudest(aec3[:second])), (loudest(session[second:]), loudest(aec3[second:]))
    print(f"loudest 80 ms, session / AEC3 alone: first reply (cold) {cold[0]:.1f} / {cold[1]:.1f} dBFS, "
          f"second {warm[0]:.1f} / {warm[1]:.1f} dBFS")
    # Cold, the linear stage has not converged: nothing of it is used.
    assert cold[0] <= cold[1] + 1.0
    assert warm[0] <= warm[1] + 3.0 and warm[0] < -50.0


def test_when_aec3_lets_echo_through_the_session_does_not_hear_it(speech) -> None:
    """Now and then AEC3 misses the echo of a steady voice for a tenth of a second, long after it
    settled: here it lets a burst of about -31 dBFS through (espeak-ng's breathy voice differs a
    little from one synthesis to the next; the simulator's voice detection fires at about -32),
    where the linear stage holds the echo about 15 dB lower. The session hears the linear stage's
    bins there."""
    reply = speech.say("The capital of Australia is Canberra, which was chosen as a compromise between Sydney and "
                       "Melbourne in nineteen oh eight.", voice="en-us+f3", speed=165)
    reply = reply[: len(reply) // 1280 * 1280]
    far = np.concatenate([reply, np.zeros(1280 * 20, dtype=np.int16), reply])
    mic = rm.to_int16(echo_of(far, rm.Room(rt60_s=0.6, delay_ms=10, seed=28)))
    fe = EchoFrontEnd(echo_cancellation=True)
    session, aec3 = [], []
    for i in range(0, len(mic) - 1279, 1280):
        out = fe.process16k(mic[i : i + 1280], far[i : i + 1280])
        if fe.echo_settled:  # what a reply streams
            session.append(out)
            aec3.append(fe.aec3_audio)
    got, alone = loudest(np.concatenate(session)), loudest(np.concatenate(aec3))
    print(f"loudest 80 ms streamed: session {got:.1f} dBFS, AEC3 alone {alone:.1f} dBFS")
    assert alone > -38.0, "AEC3 let no echo through: nothing was tested"
    assert got < -42.0 and got < alone - 8.0


def test_a_clipping_microphone_gets_no_echo_through(two_replies) -> None:
    """A speaker so loud that the microphone clips: the echo is no longer linear, the linear
    stage's output holds loud echo, and none of it may reach the session."""
    far, second = two_replies
    mic = rm.to_int16(echo_of(far, rm.Room(rt60_s=0.55, delay_ms=50, seed=5, echo_dbfs=-14.0)))
    assert np.sum(np.abs(mic) >= 32767) > 100, "the room did not clip the microphone"
    session, aec3 = run(mic, far)
    print(f"clipping: loudest 80 ms of the second reply, session {loudest(session[second:]):.1f}, "
          f"AEC3 alone {loudest(aec3[second:]):.1f} dBFS")
    assert loudest(session[second:]) <= loudest(aec3[second:]) + 1.0


@pytest.mark.parametrize("before, after", [((0.3, 20, 3, -30), (0.55, 40, 4, -24)), ((0.45, 30, 7, -30), (0.45, 50, 8, -24))])
def test_after_the_speaker_moved_the_session_hears_no_more_echo_than_aec3_alone(two_replies, before, after) -> None:
    """Between two replies the speaker is moved (another echo path): the linear stage, misadjusted,
    leaves loud echo that is no voice but is coherent with its echo estimate; none of it may
    reach the session beyond what AEC3 alone, reconverging too, lets through."""
    far, second = two_replies
    first, moved = (echo_of(far, rm.Room(rt60_s=r, delay_ms=d, seed=sd, echo_dbfs=e)) for r, d, sd, e in (before, after))
    session, aec3 = run(rm.to_int16(np.concatenate([first[:second], moved[second:]])), far)
    got, alone = loudest(session[second:]), loudest(aec3[second:])
    print(f"moved: loudest 80 ms of the second reply, session {got:.1f}, AEC3 alone {alone:.1f} dBFS")
    assert got <= alone + 2.0


def test_with_nothing_playing_the_session_hears_aec3s_output(two_replies, speech) -> None:
    """Talking to the speaker after a reply ended (its canceller warm): the session hears AEC3's
    output, noise suppression as configured, 128 samples later, nothing of the linear stage."""
    far, second = two_replies
    reply = far[second:]
    talk = speech.say(TALK, voice="en-gb", speed=160).astype(np.float64) / 32768.0
    idle = len(reply) + 2 * RATE  # the person starts 2 s after the reply
    far = np.concatenate([reply, np.zeros(2 * RATE + len(talk) + RATE, dtype=np.int16)])
    far = far[: len(far) // 1280 * 1280]
    echo = echo_of(far, rm.Room(rt60_s=0.45, delay_ms=30, seed=7))
    echo[idle : idle + len(talk)] += talk * rm.active_rms(echo[: len(reply)]) / rm.active_rms(talk)
    session, aec3 = run(rm.to_int16(echo), far, noise_suppression=2)
    assert np.array_equal(session[idle:], aec3[idle - 128 : -128])
