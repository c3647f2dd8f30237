"""Benchmark (issue 13): echo cancellation and the noise front-end.

Offline part (the room in numpy, tests/rig/room.py; no real-time pacing):
  - library comparison: ERLE after convergence, convergence time and CPU-s per audio-s of each
    candidate WebRTC binding on the same simulated room;
  - the product's front-end (device/audio/echo.py) per RT60: ERLE, convergence, double talk at
    +5/0/-5 dB SER (near-end envelope correlation), CPU beside the wake engine's;
  - the speaker moved between two replies (another room and delay): what AEC3 leaks in the next
    reply, before and after the front-end notices the new delay and settles again;
  - the first reply after a restart, started from the echo path kept from the run before (the
    same room, the echo a few ms or 84 ms earlier or later, the speaker moved) against a cold
    start: when the front-end trusts its output, and the loudest echo a reply then streams;
  - a long run of 40 replies through the product's playback reference (its writes and reads
    timed as sound cards drive them): AEC3's occasional misses, and a microphone on another card
    than the speaker, with the reference following the speaker's pace and as it was before;
  - "hey jarvis" over the reply at 0 dB SER, detected on the wake engine's stream (the linear
    stage), on AEC3 alone and without echo cancellation;
  - wake accuracy in pink noise (10 dB SNR) and babble (5 dB SNR), bare vs with NS+AGC, and
    false wakes on non-wake speech;
  - voice barge-in: how soon the simulator's voice detection hears a person who says "stop" over
    the reply, in what the session gets, against their clean speech.
The real capture and playback path with the room between speaker and microphone on the ALSA rig
is measured by tests/test_echo.py (ERLE, double talk, `speaker check`).

    python bench/aec.py [--quick] [--only libs,frontend,moved,kept,clip,long,wake,noise,barge]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tests.rig import room as rm  # noqa: E402
from tests.rig.cards import play_through_cards  # noqa: E402

RATE = 16000
REPLY = [
    "Sure. Tomorrow will be mostly sunny with a high of twenty two degrees and a light breeze from the west.",
    "In the evening clouds move in, and there is a small chance of rain after midnight.",
    "I have turned on the kitchen light and set the thermostat to twenty one degrees.",
]
NEAR = "Wait, could you tell me about the weekend instead, please?"
OTHER = [
    "could you please turn off the lights in the living room",
    "the weather tomorrow will be sunny with a light breeze",
    "I'd like a cup of coffee and a piece of cake",
    "remind me to call my sister at six",
    "what is the capital of Australia",
    "play some music in the kitchen",
]


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----- candidate libraries ------------------------------------------------------------------------

def run_livekit(mic: np.ndarray, far: np.ndarray) -> np.ndarray:
    from livekit import rtc

    apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
    out = np.zeros_like(mic)
    for i in range(0, len(mic) - 159, 160):
        r = rtc.AudioFrame(far[i : i + 160].tobytes(), RATE, 1, 160)
        apm.process_reverse_stream(r)
        m = rtc.AudioFrame(mic[i : i + 160].tobytes(), RATE, 1, 160)
        apm.set_stream_delay_ms(0)
        apm.process_stream(m)
        out[i : i + 160] = np.frombuffer(m.data, dtype=np.int16)
    return out


def run_pywebrtc_audio(mic: np.ndarray, far: np.ndarray) -> np.ndarray:
    import pywebrtc_audio

    ap = pywebrtc_audio.AudioProcessor(RATE, echo_cancellation=True, high_pass_filter=True)
    out = np.zeros_like(mic)
    for i in range(0, len(mic) - 1279, 1280):  # the product's 80 ms frames
        out[i : i + 1280] = ap.process(mic[i : i + 1280], far[i : i + 1280])
    return out


def run_frontend(mic: np.ndarray, far: np.ndarray, ns: int = 0, agc: int = 0, aec: bool = True) -> np.ndarray:
    """The product's front-end: what the session hears."""
    return run_frontend_both(mic, far, ns, agc, aec)[0]


def run_frontend_both(mic: np.ndarray, far: np.ndarray | None, ns: int = 0, agc: int = 0,
                      aec: bool = True, settled: list[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The product's front-end: (what the session hears, what the wake engine hears); each
    frame's ``echo_settled`` is appended to ``settled`` if given."""
    from device.audio.echo import EchoFrontEnd

    fe = EchoFrontEnd(echo_cancellation=aec, noise_suppression=ns, auto_gain=agc)
    out, wake = np.zeros_like(mic), np.zeros_like(mic)
    for i in range(0, len(mic) - 1279, 1280):
        out[i : i + 1280] = fe.process16k(mic[i : i + 1280], far[i : i + 1280] if far is not None else None)
        wake[i : i + 1280] = fe.wake_audio if fe.wake_audio is not None else out[i : i + 1280]
        if settled is not None:
            settled.append(fe.echo_settled)
    return out, wake


def streamed(out: np.ndarray, settled: list[bool]) -> np.ndarray:
    """What the session streams of ``out`` while a reply plays: nothing until the canceller settled."""
    return out * np.repeat(np.array(settled, dtype=out.dtype), 1280)[: len(out)]


def run_linear(mic: np.ndarray, far: np.ndarray) -> np.ndarray:
    from device.audio.linear_echo import LinearEchoCanceller

    c = LinearEchoCanceller(RATE)
    out = np.zeros_like(mic)
    for i in range(0, len(mic) - 1279, 1280):
        out[i : i + 1280] = c.process(mic[i : i + 1280], far[i : i + 1280])
    return out


CANDIDATES = {"livekit": run_livekit, "pywebrtc-audio": run_pywebrtc_audio, "linear (ours)": run_linear}
# Facts gathered with pip (download --only-binary for manylinux aarch64/x86-64, cp311/cp313) and
# the release dates on PyPI, November 2026.
FACTS = {
    "livekit": ("1.2.1", "2026-10", "yes (py3-none manylinux_2_28)", "AEC3+NS+HPF+AGC, on/off only; FFI runtime with 5 threads"),
    "pywebrtc-audio": ("0.2.0", "2026-09", "yes (cp311/cp313 manylinux_2_28)", "AEC3, NS level 0-3, AGC2, HPF; numpy in/out, any frame length"),
    "linear (ours)": ("-", "-", "numpy only", "the product's first stage: linear only, leaves a talker intact"),
    "webrtc-noise-gain": ("1.3.0", "2026-05", "yes (abi3 manylinux_2_28)", "NS 0-4 + AGC1 only: no echo cancellation"),
    "webrtc-apm": ("0.1.6", "2025-10", "no Linux wheel for 3.11/3.13 (pip: no matching distribution)", "not installable here"),
    "speexdsp": ("0.1.1", "2018-07", "sdist only, build fails here", "Speex AEC (not WebRTC); unmaintained"),
}


# ----- scenes -----------------------------------------------------------------------------------

def reply_audio(speech) -> np.ndarray:
    parts = []
    for text in REPLY:
        parts += [speech.say(text, voice="en-us+f3", speed=165), speech.silence(0.25)]
    return np.concatenate(parts)


def scene(speech, rt60: float, delay_ms: float, ser_db: float | None, seed: int = 0, near_at_s: float = 4.0):
    """(mic int16, far int16, echo-only float, near-only float placed, near span) of one room."""
    far = reply_audio(speech)
    room = rm.Room(rt60_s=rt60, delay_ms=delay_ms, seed=seed)
    echo = room.echo(far, ref_rms=rm.active_rms(far.astype(np.float64) / 32768.0)) + room.noise(len(far))
    near_only = np.zeros_like(echo)
    span = (0, 0)
    if ser_db is not None:
        near = speech.say(NEAR, voice="en-gb", speed=160)
        at = int(near_at_s * RATE)
        near_only = _place(np.zeros_like(echo), near, at, 0.0, level=rm.active_rms(echo) * 10 ** (ser_db / 20))
        span = (at, min(len(echo), at + len(near)))
    n = len(far) // 1280 * 1280  # whole 80 ms frames
    mic = rm.to_int16(echo + near_only)
    return mic[:n], far[:n], echo[:n], near_only[:n], span


def erle_and_convergence(mic: np.ndarray, out: np.ndarray, end: int | None = None, window_ms: int = 200) -> tuple[float, float]:
    """ERLE from 1 s on (far-end only up to ``end``) and the time from which every active
    ``window_ms`` window keeps >= 20 dB."""
    end = end or len(mic)
    m, o = mic[:end].astype(np.float64), out[:end].astype(np.float64)
    erle = rm.erle_db(m[RATE:], o[RATE:])
    em, eo = rm.envelope(m, ms=window_ms) ** 2, rm.envelope(o, ms=window_ms) ** 2
    active = em > em.max() * 1e-3
    conv = 0.0
    for k in range(len(em)):
        if active[k] and 10 * np.log10(em[k] / max(eo[k], 1e-9)) < 20:
            conv = (k + 1) * window_ms / 1000
    return erle, conv


def short_windows_below(mic: np.ndarray, out: np.ndarray, after_s: float) -> float:
    """The loudest output (dBFS) of the 200 ms windows with echo after ``after_s`` that keep less
    than 20 dB (the reverberant tails in a reply's pauses), or nan if none."""
    em, eo = rm.envelope(mic.astype(np.float64), ms=200) ** 2, rm.envelope(out.astype(np.float64), ms=200) ** 2
    active = em > em.max() * 1e-3
    worst = [eo[k] for k in range(int(after_s * 5), len(em)) if active[k] and 10 * np.log10(em[k] / max(eo[k], 1e-9)) < 20]
    return float(10 * np.log10(max(worst) / 32768.0**2)) if worst else float("nan")


def bench_libraries(speech, quick: bool) -> None:
    print("\n== library comparison (room RT60 0.4 s, 30 ms delay, echo only) ==")
    mic, far, *_ = scene(speech, 0.4, 30, None)
    secs = len(mic) / RATE
    print(f"{'library':18} {'version':8} {'released':9} {'ERLE dB':>8} {'conv s':>7} {'CPU-s/audio-s':>14}  wheels aarch64+x86-64, py3.11+3.13 / notes")
    for name, (ver, date, wheels, notes) in FACTS.items():
        fn = CANDIDATES.get(name)
        if fn is None:
            print(f"{name:18} {ver:8} {date:9} {'-':>8} {'-':>7} {'-':>14}  {wheels}; {notes}")
            continue
        c0 = cpu_s()
        try:
            out = fn(mic, far)
        except ImportError as exc:
            print(f"{name:18} {ver:8} {date:9} {'-':>8} {'-':>7} {'-':>14}  not installed here ({exc.name}); {notes}")
            continue
        c = (cpu_s() - c0) / secs
        erle, conv = erle_and_convergence(mic, out)
        print(f"{name:18} {ver:8} {date:9} {erle:8.1f} {conv:7.2f} {c:14.4f}  {wheels}; {notes}")


def bench_frontend(speech, quick: bool) -> None:
    print("\n== the product's front-end (pywebrtc-audio AEC3 + HPF beside the linear stage), per RT60 and delay ==")
    print("(ERLE over one reply from a cold start; the wake engine's stream is the linear stage alone;")
    print(" conv: the time from which every 200 ms window with echo keeps >= 20 dB, and every 1 s window;")
    print(" loudest: the loudest 200 ms window after conv 1 s that fell below 20 dB, dBFS, if any;")
    print(" settled: when the canceller marked its output settled, s; held: the loudest 80 ms before then, which")
    print(" a reply does not stream, dBFS; streamed: conv (200 ms) of what a reply streams, nothing before settled,")
    print(" and the loudest 200 ms window in it that keeps less than 20 dB, dBFS)")
    print(f"{'RT60 s':>6} {'delay ms':>8} {'ERLE dB':>8} {'conv s':>7} {'conv 1 s':>8} {'loudest':>8} {'wake ERLE dB':>13}"
          f" {'settled':>8} {'held':>6} {'streamed conv':>14} {'loudest':>8}")
    for rt60 in (0.3, 0.45, 0.6):
        for delay in ((30,) if quick else (10, 60)):
            mic, far, *_ = scene(speech, rt60, delay, None, seed=int(rt60 * 100))
            flags: list[bool] = []
            out, wake = run_frontend_both(mic, far, settled=flags)
            erle, conv = erle_and_convergence(mic, out)
            _, conv1 = erle_and_convergence(mic, out, window_ms=1000)
            werle, _ = erle_and_convergence(mic, wake)
            late = short_windows_below(mic, out, after_s=conv1)
            at = flags.index(True) if True in flags else len(flags)
            held = loudest_dbfs(out[: at * 1280]) if at else float("nan")
            sent = streamed(out, flags)
            _, sconv = erle_and_convergence(mic, sent)
            print(f"{rt60:6.2f} {delay:8d} {erle:8.1f} {conv:7.2f} {conv1:8.2f} {late:8.1f} {werle:13.1f}"
                  f" {at * 0.08:8.2f} {held:6.1f} {sconv:14.2f} {short_windows_below(mic, sent, after_s=0):8.1f}")
    print("\n== double talk: near-end envelope correlation, talker 4 s into a second reply ==")
    print("(session: what the session hears, AEC3 with the linear stage's bins where the talker dominates;")
    print(" AEC3: AEC3's output alone (the session before double-talk blending); wake: the linear stage;")
    print(" each output shifted by its measured latency; ERLE: the session's over the second reply with nobody")
    print(" talking, and its loudest 80 ms there in dBFS beside AEC3 alone's)")
    lag_s, lag_a = latencies(speech)
    print(f"(latency: session {lag_s} samples, AEC3 alone {lag_a}, wake 0)")
    print(f"{'RT60 s':>6} {'delay ms':>8} {'SER dB':>6} {'session':>8} {'AEC3':>6} {'wake':>6} {'raw mic':>8} {'ERLE dB':>8} {'loudest':>8} {'AEC3':>6}")
    reply = reply_audio(speech)
    reply = reply[: len(reply) // 1280 * 1280]
    far = np.concatenate([reply, np.zeros(1280 * 10, dtype=np.int16), reply])
    off = len(far) - len(reply)
    near0 = speech.say(NEAR, voice="en-gb", speed=160)
    for rt60, delay, seed in ((0.45, 30, 7), (0.3, 60, 1), (0.6, 10, 2)):
        room = rm.Room(rt60_s=rt60, delay_ms=delay, seed=seed)
        echo = room.echo(far, ref_rms=rm.active_rms(reply / 32768.0)) + room.noise(len(far))
        alone, _ = run_frontend_both(rm.to_int16(echo), far)
        erle = rm.erle_db(rm.to_int16(echo)[off:].astype(np.float64), alone[off:].astype(np.float64))
        loud = loudest_dbfs(alone[off:])
        loud_a = loudest_dbfs(run_pywebrtc_audio(rm.to_int16(echo), far)[off:])
        for ser in (5, 0, -5):
            a = off + 4 * RATE
            b = a + len(near0)
            near = _place(np.zeros_like(echo), near0, a, 0.0, level=rm.active_rms(echo[off:]) * 10 ** (ser / 20))
            mic = rm.to_int16(echo + near)
            out, wake = run_frontend_both(mic, far)
            aec3 = run_pywebrtc_audio(mic, far)
            corr = [rm.envelope_correlation(x[a + lag : b + lag].astype(np.float64), near[a:b])
                    for x, lag in ((out, lag_s), (aec3, lag_a), (wake, 0), (mic, 0))]
            print(f"{rt60:6.2f} {delay:8d} {ser:6d} {corr[0]:8.3f} {corr[1]:6.3f} {corr[2]:6.3f} {corr[3]:8.3f} {erle:8.1f} {loud:8.1f} {loud_a:6.1f}")
    bench_double_talk_more(speech, quick, ROOM_SETS[0])
    bench_double_talk_more(speech, quick, ROOM_SETS[1])
    print("\n== CPU-s per audio-s (flat out, one core) ==")
    mic, far, *_ = scene(speech, 0.45, 30, None)
    secs = len(mic) / RATE
    c0 = cpu_s()
    run_linear(mic, far)
    print(f"{'linear stage':18} {(cpu_s() - c0) / secs:.4f}")
    for label, kw in (("AEC (both stages)", dict(aec=True)), ("AEC+NS(2)", dict(aec=True, ns=2)), ("AEC+NS+AGC", dict(aec=True, ns=2, agc=3)),
                      ("NS+AGC (no AEC)", dict(aec=False, ns=2, agc=3))):
        c0 = cpu_s()
        run_frontend(mic, far if kw["aec"] else None, **{k: v for k, v in kw.items()})
        print(f"{label:18} {(cpu_s() - c0) / secs:.4f}")
    c0 = cpu_s()
    wake_scores(np.concatenate([mic] * 2))
    print(f"{'wake engine':18} {(cpu_s() - c0) / (2 * secs):.4f}")


ROOM_SETS = [
    dict(title="used to choose the coherence rule's thresholds", seed=100, levels=[-30, -24, -16], speed=170,
         replies=["The capital of Australia is Canberra, which was chosen as a compromise between Sydney and Melbourne in nineteen oh eight.",
                  "Your timer for the pasta is set for eleven minutes. I will let you know when it is done, so you can relax until then.",
                  "Here is a recipe for pancakes: mix flour, milk, two eggs and a pinch of salt, then fry them in a hot pan with butter."],
         near=["stop, that is enough, thank you", "no no, I meant the other light in the bedroom", "hey, what time is it in Tokyo right now?"],
         voices=["en-us+m3", "en-gb+f2", "en-us+f4"], talkers=["en-gb", "en-us", "en-us+m5"]),
    dict(title="not used for tuning", seed=300, levels=[-30, -27, -24, -20], speed=165,
         replies=["The train to Berlin leaves at half past nine from platform four, and it takes about two hours.",
                  "Good morning. It is seven degrees outside, so you might want a jacket when you leave the house.",
                  "I added milk, bread, tomatoes and coffee to your shopping list, and reminded you about the dentist."],
         near=["hold on, I need the platform number again", "cancel that, I already bought the milk", "okay, and what about the afternoon?"],
         voices=["en-gb+f3", "en-us+m2", "en-gb+m4"], talkers=["en-us+f2", "en-gb+m3", "en-us"]),
]


def bench_double_talk_more(speech, quick: bool, rooms: dict) -> None:
    """Double talk in six more rooms, with other replies, talkers and echo levels."""
    n = 3 if quick else 6
    print(f"\n== double talk in {n} more rooms, {rooms['title']} (other replies, talkers and echo levels) ==")
    print("(envelope correlation session / AEC3 alone at each SER; loudest 80 ms with nobody talking, first reply")
    print(" from a cold start (and what of it a reply streams, nothing before the canceller settled) and second")
    print(" reply, session / AEC3 alone, dBFS)")
    lag_s, lag_a = latencies(speech)
    rng = np.random.default_rng(rooms["seed"])
    replies, voices, talkers = rooms["replies"], rooms["voices"], rooms["talkers"]
    for k in range(n):
        i = k % 3
        reply = np.concatenate([speech.say(replies[i], voice=voices[i], speed=rooms["speed"]), speech.silence(0.3),
                                speech.say(replies[(i + 1) % 3], voice=voices[i], speed=rooms["speed"])])
        reply = reply[: len(reply) // 1280 * 1280]
        far = np.concatenate([reply, np.zeros(1280 * 8, dtype=np.int16), reply])
        off = len(far) - len(reply)
        rt60, delay, level = float(rng.uniform(0.3, 0.6)), float(rng.uniform(10, 60)), float(rng.choice(rooms["levels"]))
        room = rm.Room(rt60_s=rt60, delay_ms=delay, seed=int(rng.integers(1000)), echo_dbfs=level)
        echo = room.echo(far, ref_rms=rm.active_rms(reply / 32768.0)) + room.noise(len(far))
        m0 = rm.to_int16(echo)
        flags: list[bool] = []
        s0, a0 = run_frontend_both(m0, far, settled=flags)[0], run_pywebrtc_audio(m0, far)
        line = (f"RT60 {rt60:.2f} s, delay {delay:4.1f} ms, echo {level:+.0f} dBFS: "
                + " ".join(f"{ser:+d} dB {{:.2f}}/{{:.2f}}" for ser in (5, 0, -5)))
        corrs = []
        near0 = speech.say(rooms["near"][i], voice=talkers[i], speed=160)
        for ser in (5, 0, -5):
            a = off + int(rng.uniform(1.0, 4.0) * RATE)
            b = a + len(near0)
            near = _place(np.zeros_like(echo), near0, a, 0.0, level=rm.active_rms(echo[off:]) * 10 ** (ser / 20))
            mic = rm.to_int16(echo + near)
            out, aec3 = run_frontend(mic, far), run_pywebrtc_audio(mic, far)
            corrs += [rm.envelope_correlation(out[a + lag_s : b + lag_s].astype(np.float64), near[a:b]),
                      rm.envelope_correlation(aec3[a + lag_a : b + lag_a].astype(np.float64), near[a:b])]
        print(line.format(*corrs) + f"; loudest {loudest_dbfs(s0[:off]):.0f}/{loudest_dbfs(a0[:off]):.0f} "
              f"(streamed {loudest_dbfs(streamed(s0, flags)[:off]):.0f}), "
              f"{loudest_dbfs(s0[off:]):.0f}/{loudest_dbfs(a0[off:]):.0f}")


def frame_dbfs(x: np.ndarray, frames: int) -> np.ndarray:
    """The level of each of the first ``frames`` 80 ms frames of ``x``, dBFS."""
    y = x[: frames * 1280].astype(np.float64).reshape(-1, 1280)
    return 10 * np.log10(np.mean(y**2, axis=1) / 32768.0**2 + 1e-12)


def bench_moved(speech, quick: bool) -> None:
    """The speaker moved between two replies: the next reply's echo, streamed or held back."""
    print("\n== the speaker moved between two replies (another room, delay and echo level) ==")
    print("(the second reply: when the front-end noticed the new delay, and when it settled again, s; the loudest 80 ms")
    print(" the session hears in it; what a reply streams of it before that and after, dBFS)")
    reply = reply_audio(speech)
    reply = reply[: len(reply) // 1280 * 1280]
    far = np.concatenate([reply, np.zeros(1280 * 10, dtype=np.int16), reply])
    second = (len(far) - len(reply)) // 1280
    rng = np.random.default_rng(5)
    for _ in range(4 if quick else 10):
        rooms = [rm.Room(rt60_s=float(rng.uniform(0.3, 0.6)), delay_ms=float(rng.uniform(10, 60)),
                         seed=int(rng.integers(1000)), echo_dbfs=float(rng.choice([-30, -24, -20]))) for _ in range(2)]
        echo = [r.echo(far, ref_rms=rm.active_rms(far / 32768.0)) + r.noise(len(far)) for r in rooms]
        mic = rm.to_int16(np.concatenate([echo[0][: second * 1280], echo[1][second * 1280 :]]))
        settled: list[bool] = []
        out = run_frontend_both(mic, far, settled=settled)[0].astype(np.float64)
        level = frame_dbfs(out, len(settled))
        lv, st = level[second:], np.array(settled[second:])
        held = np.flatnonzero(~st)
        at = int(held[0]) if len(held) else len(st)
        again = np.flatnonzero(st[at:])
        again_s = f"{(at + int(again[0])) * 0.08:.2f} s" if len(held) and len(again) else "never "
        before = f"{lv[:at].max():6.1f}" if at else "     -"
        after = f"{lv[at:][st[at:]].max():6.1f}" if np.any(st[at:]) else "     -"
        print(f"RT60 {rooms[0].rt60_s:.2f} -> {rooms[1].rt60_s:.2f} s, {rooms[0].delay_ms:2.0f} -> {rooms[1].delay_ms:2.0f} ms: "
              f"noticed {'at %.2f s' % (at * 0.08) if len(held) else 'never  '}, settled again {again_s}; loudest {lv.max():6.1f}; streamed before "
              f"{before}, after {after}")


def bench_kept_path(speech, quick: bool) -> None:
    """The first reply after a restart, from the echo path the run before kept, or cold."""
    import dataclasses

    from device.audio.echo import EchoFrontEnd

    print("\n== the first reply after a restart: started from the echo path kept by the run before, or cold ==")
    print("(per room: when the front-end trusted its output (settled), s into the reply, and the loudest 80 ms a reply")
    print(" streams from then on, dBFS; 'same': nothing changed; +-3 / +-84 ms: the echo that much later or earlier, as a")
    print(" sound server's latency differs from one start to the next; 'moved': another room and delay; 'moved, same")
    print(" delay': another room at the same delay)")
    reply = reply_audio(speech)
    reply = reply[: len(reply) // 1280 * 1280]
    before = np.concatenate([speech.say(t, voice="en-gb+f3", speed=165) for t in ROOM_SETS[1]["replies"]])
    before = before[: len(before) // 1280 * 1280]
    pad = np.zeros(1280 * 25, dtype=np.int16)
    rng = np.random.default_rng(4)
    cases = ["cold", "same", "+3 ms", "-3 ms", "+84 ms", "-84 ms", "moved", "moved, same delay"]
    print(f"{'echo dBFS':>9} " + " ".join(f"{c:>17}" for c in cases))
    totals: dict[str, list[tuple[float, float]]] = {c: [] for c in cases}
    for _ in range(4 if quick else 12):
        rooms = [rm.Room(rt60_s=float(rng.uniform(0.3, 0.6)), delay_ms=float(rng.uniform(10, 60)) + 90,
                         seed=int(rng.integers(1000)), echo_dbfs=float(rng.choice([-30, -24, -20]))) for _ in range(2)]
        ref_rms = rm.active_rms(reply / 32768.0)
        fe = EchoFrontEnd(echo_cancellation=True)
        kept: list = []
        fe.on_path = kept.append
        far0 = np.concatenate([before, pad])
        run_frontend_on(fe, rm.to_int16(rooms[0].echo(far0, ref_rms=ref_rms) + rooms[0].noise(len(far0))), far0)
        if not kept:
            print("(no echo path was kept in this room)")
            continue
        far = np.concatenate([pad, reply])
        row = []
        for case in cases:
            room = {"same": rooms[0], "cold": rooms[0], "moved": rooms[1],
                    "moved, same delay": dataclasses.replace(rooms[1], delay_ms=rooms[0].delay_ms)}.get(case)
            if room is None:
                room = dataclasses.replace(rooms[0], delay_ms=rooms[0].delay_ms + float(case.split()[0]))
            fe = EchoFrontEnd(echo_cancellation=True)
            if case != "cold":
                fe.start_from(kept[-1])
            flags: list[bool] = []
            out = run_frontend_on(fe, rm.to_int16(room.echo(far, ref_rms=ref_rms) + room.noise(len(far))), far, flags)
            st = np.array(flags[len(pad) // 1280 :])
            level = frame_dbfs(out, len(flags))[len(pad) // 1280 :]
            at = float(np.argmax(st)) * 0.08 if st.any() else float("nan")
            loud = float(level[st].max()) if st.any() else float("nan")
            totals[case].append((at, loud))
            row.append(f"{at:5.2f} s {loud:5.0f} dB")
        print(f"{rooms[0].echo_dbfs:9.0f} " + " ".join(f"{r:>17}" for r in row))
    print(f"{'median':>9} " + " ".join(f"{np.nanmedian([a for a, _ in v]):5.2f} s {np.nanmedian([b for _, b in v]):5.0f} dB"
                                       .rjust(17) for v in totals.values()))
    print(f"{'worst':>9} " + " ".join(f"{np.nanmax([a for a, _ in v]):5.2f} s {np.nanmax([b for _, b in v]):5.0f} dB"
                                      .rjust(17) for v in totals.values()))


def run_frontend_on(fe, mic: np.ndarray, far: np.ndarray, settled: list[bool] | None = None) -> np.ndarray:
    """What ``fe`` (as it is) gives the session for ``mic``; each frame's ``echo_settled`` into ``settled``."""
    out = np.zeros_like(mic)
    for i in range(0, len(mic) - 1279, 1280):
        out[i : i + 1280] = fe.process16k(mic[i : i + 1280], far[i : i + 1280])
        if settled is not None:
            settled.append(fe.echo_settled)
    return out


def bench_clipping(speech, quick: bool) -> None:
    """A speaker loud enough to make the microphone clip: what each canceller removes of it."""
    print("\n== a microphone that clips on the speaker's sound (RT60 0.45 s, 30 ms; the reply played twice) ==")
    print("(the echo's level at the microphone; samples at full scale; in the second playing: echo removed from what")
    print(" the session hears and from what the wake engine hears (the linear stage), and the loudest 80 ms the")
    print(" session hears, dBFS)")
    reply = reply_audio(speech)
    far = np.concatenate([reply, np.zeros(RATE, dtype=np.int16), reply])
    far = far[: len(far) // 1280 * 1280]
    half = len(far) - len(reply) // 1280 * 1280
    for echo_db in ([-24, -6, 0] if quick else [-24, -12, -6, -4, -3, 0]):
        room = rm.Room(rt60_s=0.45, delay_ms=30, seed=3, echo_dbfs=echo_db)
        mic = rm.to_int16(room.echo(far, ref_rms=rm.active_rms(far / 32768.0)) + room.noise(len(far)))
        out, wake = (x.astype(np.float64) for x in run_frontend_both(mic, far))
        m = mic.astype(np.float64)
        clipped = float(np.mean(np.abs(mic) >= 32000))
        print(f"echo {echo_db:+4d} dBFS: clipped {clipped * 100:5.2f} %; removed: session {rm.erle_db(m[half:], out[half:]):5.1f} dB, "
              f"wake engine {rm.erle_db(m[half:], wake[half:]):5.1f} dB; loudest {frame_dbfs(out[half:], (len(m) - half) // 1280).max():6.1f}")


def bench_long_run(speech, quick: bool) -> None:
    """Replies with pauses between, as a long-running speaker plays them: AEC3's occasional
    misses, and the echo drifting when the microphone's clock is not the speaker's."""
    n = 8 if quick else 40
    print(f"\n== a long run: {n} replies, 6 s apart, one room (RT60 0.45 s, 30 ms, echo -24 dBFS) ==")
    print("(the loudest 80 ms each reply streams once the canceller settled, session / AEC3 alone, dBFS; the far end")
    print(" through the product's reference, its writes and reads timed as sound cards drive them: one card, and a")
    print(" microphone on a card whose clock runs 100 ppm slow of the speaker's, with the reference following the")
    print(" speaker's pace and without: the echo drifts 0.1 ms a second)")
    texts = [t for rooms in ROOM_SETS for t in rooms["replies"]] + REPLY
    voices = ["en-us+f3", "en-gb+m3", "en-us+m2"]
    parts, spans, at = [], [], 0
    for k in range(n):
        r = speech.say(texts[k % len(texts)], voice=voices[k % 3], speed=165)
        r = r[: len(r) // 1280 * 1280]
        spans.append((at // 1280, (at + len(r)) // 1280))
        parts += [r, np.zeros(6 * RATE // 1280 * 1280, dtype=np.int16)]
        at += len(r) + len(parts[-1])
    far = np.concatenate(parts)
    room = rm.Room(rt60_s=0.45, delay_ms=30, seed=9, echo_dbfs=-24)
    for label, spk_ppm, follow in (("one card           ", 0, True), ("100 ppm, following ", 100, True),
                                   ("100 ppm, as before ", 100, False)):
        run = play_through_cards(far, room, spk_ppm, 0, follow=follow)
        out, settled, ratio = run.session, run.settled, run.ratio_ppm
        aec3 = run_pywebrtc_audio(run.mic, run.far)
        rows = []
        for x in (out, aec3):
            level = frame_dbfs(x, len(settled))
            rows.append([float(np.max(level[a:b][np.array(settled[a:b])], initial=-120.0)) for a, b in spans if b <= len(settled)])
        print(f"{label}: " + " ".join(f"{s:.0f}/{a:.0f}" for s, a in zip(*rows)))
        half = len(rows[0]) // 2
        print(f"         above -40 dBFS: session {sum(v > -40 for v in rows[0])} (second half {sum(v > -40 for v in rows[0][half:])}), "
              f"AEC3 alone {sum(v > -40 for v in rows[1])} of {len(rows[0])}; loudest {max(rows[0]):.1f} / {max(rows[1]):.1f}; "
              f"pace followed {ratio:+.1f} ppm")


def latency(speech, process) -> int:
    """Samples by which ``process`` delays a talker with nothing playing (cross-correlation)."""
    x = np.concatenate([np.zeros(RATE, dtype=np.int16), speech.say(NEAR, voice="en-gb", speed=160), np.zeros(RATE, dtype=np.int16)])
    x = x[: len(x) // 1280 * 1280]
    y = process(x).astype(np.float64)
    c = np.correlate(y, x.astype(np.float64)[: len(x) - 1024], mode="valid")
    return int(np.argmax(c))


_LATENCIES: tuple[int, int] | None = None


def latencies(speech) -> tuple[int, int]:
    """(the session's, AEC3 alone's) latency in samples, measured once."""
    global _LATENCIES
    if _LATENCIES is None:
        _LATENCIES = (latency(speech, lambda m: run_frontend(m, np.zeros_like(m))),
                      latency(speech, lambda m: run_pywebrtc_audio(m, np.zeros_like(m))))
    return _LATENCIES


def loudest_dbfs(x: np.ndarray) -> float:
    """The loudest 80 ms of ``x`` in dBFS."""
    return float(20 * np.log10(max(rm.envelope(x.astype(np.float64), ms=80).max(), 1e-9) / 32768.0))


_ENGINE = None


def wake_scores(x: np.ndarray) -> float:
    """Highest hey_jarvis score over ``x`` (a fresh detector state each call)."""
    from device.config import WakeConfig
    from device.wakeword import WakeWord

    global _ENGINE
    if _ENGINE is None:
        _ENGINE = WakeWord(WakeConfig(threshold=0.5, refractory_s=0.0))
    _ENGINE.reset()
    best = 0.0
    for i in range(0, len(x) - 1279, 1280):
        d = _ENGINE.process(x[i : i + 1280].tobytes())
        if d is not None:
            best = max(best, d.score)
    return best


def detected(x: np.ndarray) -> bool:
    """Whether hey_jarvis fires anywhere in ``x`` (after 2.5 s of silence to settle the features)."""
    return wake_scores(np.concatenate([np.zeros(RATE * 5 // 2, dtype=np.int16), x, np.zeros(RATE, dtype=np.int16)])) > 0


def bench_wake_over_reply(speech, quick: bool) -> None:
    n = 10 if quick else 40
    print(f"\n== 'hey jarvis' over the reply at 0 dB SER ({n} trials, RT60 0.3-0.6 s, delay 10-60 ms) ==")
    print("(the echo canceller has heard one earlier reply in the same room, as on a device in use)")
    hits_aec = hits_raw = hits_clean = hits_aec3 = 0
    rng = np.random.default_rng(3)
    voices = ["en-us", "en-gb", "en-us+m3", "en-gb+m2", "en-us+f2"]
    reply = reply_audio(speech)
    reply = reply[: len(reply) // 1280 * 1280]
    gap = np.zeros(1280 * 10, dtype=np.int16)
    far = np.concatenate([reply, gap, reply])
    off = len(reply) + len(gap)
    for k in range(n):
        rt60, delay = float(rng.uniform(0.3, 0.6)), float(rng.uniform(10, 60))
        room = rm.Room(rt60_s=rt60, delay_ms=delay, seed=k)
        echo = room.echo(far, ref_rms=rm.active_rms(reply / 32768.0)) + room.noise(len(far))
        wake = speech.say("hey jarvis", voice=voices[k % len(voices)], speed=int(rng.integers(130, 175)))
        at = off + int(rng.uniform(2.0, 12.0) * RATE)
        level = rm.active_rms(echo[off:])
        mic = rm.to_int16(_place(echo, wake, at, 0.0, level=level))
        clean = rm.to_int16(_place(np.zeros_like(echo), wake, at, 0.0, level=level))
        _, heard = run_frontend_both(mic, far)
        seg = slice(at - RATE * 2, at + len(wake) + RATE)
        hits_aec += detected(heard[seg])
        hits_aec3 += detected(run_pywebrtc_audio(mic, far)[seg])
        hits_raw += detected(mic[seg])
        hits_clean += detected(clean[seg])
    print(f"detected with the front-end {100 * hits_aec / n:.0f} %   with AEC3 alone {100 * hits_aec3 / n:.0f} %   "
          f"without AEC {100 * hits_raw / n:.0f} %   "
          f"(the same words alone, no reply: {100 * hits_clean / n:.0f} %)")


def bench_barge(speech, quick: bool) -> None:
    """A person saying "stop please, that is enough" over the second reply: how soon an energy
    voice detection hears them start in what the session gets, against in their clean speech."""
    n, onsets = (3, (1.3, 4.5, 6.9)) if quick else (8, (1.3, 2.9, 4.5, 5.3, 6.1, 6.9))
    print(f"\n== voice barge-in offline: 'stop please, that is enough' over the second reply ({n} rooms, "
          f"{len(onsets)} onsets, -5 and 0 dB SER) ==")
    print("(ms from the talker's onset until the simulator's voice detection starts a turn on what the session hears;")
    print(" in brackets, on the talker's clean speech; rooms at -20 dBFS make the microphone clip on the echo)")
    reply = reply_audio(speech)
    reply = reply[: len(reply) // 1280 * 1280]
    far = np.concatenate([reply, np.zeros(1280 * 8, dtype=np.int16), reply])
    off = len(far) - len(reply)
    talk = speech.trim(speech.say("stop please, that is enough", voice="en-gb")).astype(np.float64) / 32768.0
    rng = np.random.default_rng(5)
    late = {}
    for _ in range(n):
        rt60, delay, level = float(rng.uniform(0.3, 0.6)), float(rng.uniform(10, 60)), float(rng.choice([-30, -24, -20]))
        room = rm.Room(rt60_s=rt60, delay_ms=delay, seed=int(rng.integers(1000)), echo_dbfs=level)
        echo = room.echo(far, ref_rms=rm.active_rms(reply / 32768.0)) + room.noise(len(far))
        quiet = run_frontend(rm.to_int16(echo), far)
        print(f"RT60 {rt60:.2f} s, delay {delay:2.0f} ms, echo {level:+.0f} dBFS; nobody talking: "
              f"{'a turn starts' if rm.speech_start(quiet, off) else 'no turn'}")
        for ser in (-5, 0):
            row = []
            for on in onsets:
                a = off + int(on * RATE)
                near = np.zeros_like(echo)
                near[a : a + len(talk)] = talk[: len(near) - a] * rm.active_rms(echo[off:]) * 10 ** (ser / 20) / rm.active_rms(talk)
                got, clean = rm.speech_start(run_frontend(rm.to_int16(echo + near), far), a), rm.speech_start(rm.to_int16(near), a)
                ms = None if got is None else (got - a) / 16
                late.setdefault((ser, level == -20), []).append(ms is None or ms > 250)
                row.append(f"{on:.1f} s: {'-' if ms is None else f'{ms:.0f}'} ({(clean - a) / 16:.0f})")
            print(f"   {ser:+d} dB: " + "  ".join(row))
    for (ser, clips), v in sorted(late.items()):
        print(f"{ser:+d} dB SER, {'rooms where the microphone clips' if clips else 'other rooms'}: "
              f"later than 250 ms in {sum(v)} of {len(v)}")


def _place(echo: np.ndarray, near: np.ndarray, at: int, ser_db: float, level: float | None = None) -> np.ndarray:
    """``echo`` plus ``near`` at sample ``at``, its active level ``ser_db`` above the echo's (or ``level``)."""
    s = near.astype(np.float64) / 32768.0
    s *= (level if level is not None else rm.active_rms(echo) * 10 ** (ser_db / 20)) / max(rm.active_rms(s), 1e-12)
    out = echo.copy()
    out[at : at + len(s)] += s[: len(out) - at]
    return out


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec = (rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f))) / np.sqrt(np.maximum(f, 20.0))
    x = np.fft.irfft(spec, n)
    return x / rm.rms(x)


def babble(n: int, speech, rng: np.random.Generator) -> np.ndarray:
    voices = ["en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f2", "en-us+m7"]
    x = np.zeros(n)
    for v in range(6):
        s = np.concatenate([speech.say(OTHER[(v + j) % len(OTHER)], voice=voices[v]) for j in range(4)]).astype(np.float64)
        s = np.tile(s, n // len(s) + 1)
        off = int(rng.integers(0, len(s) - n))
        x += s[off : off + n] / rm.rms(s)
    return x / rm.rms(x)


def bench_noise(speech, quick: bool) -> None:
    n = 12 if quick else 40
    print(f"\n== wake accuracy in noise ({n} clips each), bare engine vs NS+AGC front-end ==")
    rng = np.random.default_rng(11)
    voices = ["en-us", "en-gb", "en-us+m3", "en-gb+m2", "en-us+f2", "en-us+f4", "en-gb+f3", "en-us+m5"]
    configs = {"bare": None, "NS2": (2, 0), "NS2+AGC3": (2, 3), "NS1": (1, 0)}
    for kind, snr in (("pink", 10.0), ("babble", 5.0)):
        hits = {c: 0 for c in configs}
        for k in range(n):
            wake = speech.say("hey jarvis, turn on the light", voice=voices[k % len(voices)], speed=int(rng.integers(130, 175))).astype(np.float64)
            level = 10 ** (float(rng.uniform(-32, -20)) / 20)
            sig = np.concatenate([np.zeros(RATE * 3), wake / rm.active_rms(wake) * level, np.zeros(RATE)])
            noise = pink(len(sig), rng) if kind == "pink" else babble(len(sig), speech, rng)
            x = rm.to_int16(sig + noise * level * 10 ** (-snr / 20))
            for c, p in configs.items():
                y = x if p is None else run_frontend(x, None, ns=p[0], agc=p[1], aec=False)
                hits[c] += detected(y[RATE:])
        print(f"{kind} {snr:.0f} dB SNR: " + "   ".join(f"{c} {100 * h / n:.0f} %" for c, h in hits.items()))
    minutes = 2 if quick else 15
    print(f"\n== false wakes on {minutes} min of non-wake speech with babble ==")
    x = np.zeros(RATE * 60 * minutes)
    pos, i = 0, 0
    while pos < len(x):
        s = speech.say(OTHER[i % len(OTHER)], voice=voices[i % len(voices)]).astype(np.float64) / 32768.0
        s = s[: len(x) - pos]
        x[pos : pos + len(s)] += s * 0.3
        pos += len(s) + int(RATE * 0.7)
        i += 1
    x += babble(len(x), speech, rng) * 0.01
    xi = rm.to_int16(x)
    for c, p in configs.items():
        y = xi if p is None else run_frontend(xi, None, ns=p[0], agc=p[1], aec=False)
        print(f"{c}: {count_wakes(y)} false wakes")


def count_wakes(x: np.ndarray) -> int:
    from device.config import WakeConfig
    from device.wakeword import WakeWord

    w = WakeWord(WakeConfig(threshold=0.5, refractory_s=2.0))
    return sum(w.process(x[i : i + 1280].tobytes()) is not None for i in range(0, len(x) - 1279, 1280))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials (a smoke run)")
    ap.add_argument("--only", default="", help="comma list of: libs,frontend,moved,kept,clip,long,wake,noise,barge")
    args = ap.parse_args()
    from tests.rig.speech import Speech

    cache = Path(tempfile.gettempdir()) / "speaker-bench-speech"
    cache.mkdir(exist_ok=True)
    speech = Speech(cache)
    only = set(filter(None, args.only.split(","))) or {"libs", "frontend", "moved", "kept", "clip", "long", "wake", "noise", "barge"}
    if "libs" in only:
        bench_libraries(speech, args.quick)
    if "frontend" in only:
        bench_frontend(speech, args.quick)
    if "moved" in only:
        bench_moved(speech, args.quick)
    if "kept" in only:
        bench_kept_path(speech, args.quick)
    if "clip" in only:
        bench_clipping(speech, args.quick)
    if "long" in only:
        bench_long_run(speech, args.quick)
    if "wake" in only:
        bench_wake_over_reply(speech, args.quick)
    if "noise" in only:
        bench_noise(speech, args.quick)
    if "barge" in only:
        bench_barge(speech, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
