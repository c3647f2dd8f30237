"""Benchmark (issue 3): the conversation path on the test rig.

Real parts: the ALSA FIFO microphone fed with espeak-ng speech at real-time pace, the real wake
model, real Playback into the FIFO speaker read at real-time pace, the realtime simulator on
loopback (in this process for the latency rounds, in its own process for the CPU figure).

Per round: "hey jarvis, <request>" -> reply (paced in real time) -> "hey jarvis, stop" after
about 1.5 s of reply -> answer -> follow-up window -> idle. Measured:

- wake -> first append: wake detection to the first ``input_audio_buffer.append`` arriving at
  the simulator, key prefetched (target <= 100 ms);
- speech lost: how much of the words said right after the wake word is missing from the
  streamed audio (target 0 ms); the margin is how much earlier the stream starts;
- interruption -> silent: from the barge-in decision to the last sample of the reply leaving the
  rig's speaker (target <= 50 ms). The rig's FIFO speaker (a 4 KiB pipe = 85 ms, read in 20 ms
  steps) and the file plugin, which flushes its buffer into the FIFO on drop() instead of
  discarding it, play out what was already handed to ALSA, which a sound card's drop() discards.
  So also: "interrupt -> drop", when the writer thread had dropped the ALSA buffer (silence on a
  card), and "written after", reply audio the device still wrote to ALSA after the decision;
- truncate error: ``audio_end_ms`` sent minus the reply audio that really came out (target
  +-50 ms). On the FIFO speaker "played" equals "written" (its null slave reports no delay), so
  the same barge-in is also run on a PulseAudio null sink, which paces in real time and reports
  its delay: its monitor is recorded (parec) and the reply followed in it across underrun gaps;
  that run also gives interrupt -> silent on a device whose drop() discards (incl. ~10 ms of
  recording latency);
- CPU: CPU seconds of the device process per second of conversation (audio both ways).

    python -m bench.conversation [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from device.audio.playback import volume_gain
from device.config import load_settings
from device.events import ConversationEnded, State, WakeDetected
from services.simulator import SimulatorThread, Turn, speech_pcm
from tests.rig.alsa import AlsaRig
from tests.rig.simulator import write_device_config
from tests.rig.speech import Speech
from tests.test_assistant import Device, locate, pcm, played_prefix_ms, to24k

WAKE = "hey jarvis"
REQUEST = "what is the weather like in the garden"
LONG_REPLY = ("Here is a long answer. The weather today is sunny in the morning, with clouds coming in "
              "from the west in the afternoon, and light rain in the evening.")


class SizeWatch(threading.Thread):
    """Samples a growing file's size every 2 ms: when did byte N come out of the speaker?"""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True, name="size-watch")
        self.path = path
        self.samples: list[tuple[float, int]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        last = -1
        while not self.stop_flag.is_set():
            try:
                size = os.path.getsize(self.path)
            except OSError:
                size = 0
            if size != last:
                self.samples.append((time.monotonic(), size))
                last = size
            time.sleep(0.002)

    def time_of(self, offset: int) -> float | None:
        for t, size in self.samples:
            if size >= offset:
                return t
        return None


def _config(workdir: Path, sim: Any, rig: AlsaRig, follow_up_s: float = 1.5) -> Any:
    return load_settings(write_device_config(workdir, sim, sections={
        "audio": {"input": "test_mic", "output": "test_spk_fifo"},
        "realtime": {"follow_up_s": follow_up_s, "response_timeout_s": 5.0},
        "state": {"dir": str(workdir / "state")},
    }))


async def latency_rounds(rounds: int, workdir: Path, speech: Speech) -> list[dict[str, float]]:
    runner = SimulatorThread(pace=1.0)
    sim = runner.start()
    (workdir / "alsa").mkdir()
    rig = AlsaRig(workdir / "alsa")
    os.environ.update(rig.env)
    results: list[dict[str, float]] = []
    d = Device(_config(workdir / "dev", sim, rig), rig, sim)
    try:
        await d.start(speaker_fifo=True)
        assert d.speaker is not None
        # Measurement hook: when the writer thread really dropped the device buffer.
        drops: list[float] = []
        original_drop = d.playback._drop

        def timed_drop(pcm_: Any, fmt: Any) -> None:
            drops.append(time.monotonic())  # the writer reached drop(): a card's buffer is gone now
            original_drop(pcm_, fmt)

        d.playback._drop = timed_drop  # type: ignore[method-assign,assignment]
        watch = SizeWatch(d.speaker.out)
        watch.start()
        request24 = to24k(speech.trim(speech.say(REQUEST)))
        reply = pcm(speech_pcm(LONG_REPLY))
        await asyncio.sleep(1.5)
        for r in range(rounds):
            sim.add(Turn(say=LONG_REPLY, transcript=REQUEST), Turn(say="Sure.", transcript="stop"))
            mark = len(d.events)
            n_sessions = len(sim.sessions)
            out_start = os.path.getsize(d.speaker.out)
            d.say(speech, WAKE, REQUEST)
            await d.state(State.SPEAKING, 20, after=mark)
            await asyncio.sleep(1.2 + 0.2 * r)
            d.say(speech, WAKE, "stop")
            n_int = len(d.assistant.interruptions)
            await d.until(lambda n=n_int: len(d.assistant.interruptions) > n, 10, "interruption")  # type: ignore[misc]
            intr = d.assistant.interruptions[-1]
            ended_before = len([e for e in d.events[:mark] if isinstance(e, ConversationEnded)])
            await d.until(lambda n=ended_before: len(d.of(ConversationEnded)) > n, 30, "conversation end")  # type: ignore[misc]
            await asyncio.sleep(0.3)
            s = sim.sessions[n_sessions]
            wake = next(e for e in d.events[mark:] if isinstance(e, WakeDetected))
            first_append = (s.first_append_at - wake.t) * 1000 if s.first_append_at else float("nan")
            audio_in = pcm(s.audio_in).astype(np.float32)
            tail = request24[-12000:]
            at, _ = locate(audio_in, tail)
            begin = at - (len(request24) - len(tail))
            out = pcm(Path(d.speaker.out).read_bytes()[out_start:])
            start, played = played_prefix_ms(out, reply, volume_gain(d.assistant.volume))
            end_offset = out_start + (start + played * 24) * 2
            silent_t = watch.time_of(end_offset)
            (_, end_ms), = s.truncations
            written_after = d.playback.played_ms(intr.item_id) - intr.played_ms if intr.item_id else 0
            dropped = [t for t in drops if t >= intr.t]
            results.append({
                "wake_to_first_append_ms": first_append,
                "speech_lost_ms": max(0.0, -begin / 24),
                "stream_margin_ms": begin / 24,
                "interrupt_to_silent_ms": (silent_t - intr.t) * 1000 if silent_t else float("nan"),
                "interrupt_to_drop_ms": (dropped[0] - intr.t) * 1000 if dropped else float("nan"),
                "written_after_interrupt_ms": float(written_after),
                "stop_call_ms": intr.stop_s * 1000,
                "truncate_error_ms": float(end_ms - played),
                "audio_end_ms": float(end_ms),
                "played_ms": float(played),
            })
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in results[-1].items()), file=sys.stderr, flush=True)
            await d.until(lambda: d.assistant.state is State.IDLE, 10, "idle")
        watch.stop_flag.set()
        if sim.violations:
            print(f"client violations: {sim.violations}", file=sys.stderr)
    finally:
        await d.stop()
        rig.close()
        runner.stop()
    return results


def heard_ms(rec: np.ndarray, reply: np.ndarray, gain: float, tol: int = 2) -> tuple[int, int]:
    """How far into ``reply`` the recording got (ms), and the recording's sample index there.

    The reply is followed across underrun gaps.

    On an underrun the sound server plays silence and may skip some samples, so the recording is
    followed piecewise: exact runs of the reply, zero gaps, and jumps ahead within the reply.
    """
    expected = np.clip(np.rint(reply.astype(np.float64) * gain), -32768, 32767)
    rec = rec.astype(np.float64)
    pos, score = locate(rec, expected[:7200])
    if score < 0.95:
        return 0, 0
    block, k, last, last_pos = 240, 0, 0, 0
    while pos + block <= len(rec) and k < len(expected):
        n = min(block, len(expected) - k)
        bad = np.abs(rec[pos : pos + n] - expected[k : k + n]) > tol
        if not bad.any():
            pos, k = pos + n, k + n
            last, last_pos = k, pos
            continue
        j = int(np.argmax(bad))
        if j > 0:
            pos, k = pos + j, k + j
            last, last_pos = k, pos
            continue
        if rec[pos] == 0:  # a gap of silence: skip it (but not the silence after the reply)
            ahead = np.flatnonzero(rec[pos : pos + 12000])
            if not len(ahead):
                break
            pos += int(ahead[0])
            continue
        seg = rec[pos : pos + block]
        window = expected[k : k + 12000]
        if len(window) < block:
            break
        at, _ = locate(window, seg)
        if np.max(np.abs(window[at : at + block] - seg)) > tol:
            break  # no longer the reply: it was stopped here
        k += at
    return last * 1000 // 24000, last_pos


async def pulse_rounds(rounds: int, workdir: Path, speech: Speech) -> list[dict[str, float]]:
    """Barge-in on a speaker that reports its delay (PulseAudio null sink): truncate vs. heard.

    The sink's monitor is recorded; what of the reply is in the recording is what was played.
    """
    # Faster than real time, like the real API: deltas paced at exactly real time would underrun
    # the speaker now and then, and the recording would hold the gaps.
    runner = SimulatorThread(pace=2.0)
    sim = runner.start()
    (workdir / "alsa3").mkdir()
    rig = AlsaRig(workdir / "alsa3")
    os.environ.update(rig.env)
    results: list[dict[str, float]] = []
    rec_path = workdir / "monitor.raw"
    recorder: subprocess.Popen[bytes] | None = None
    d: Device | None = None
    try:
        rig.start_pulse()
        with open(rec_path, "wb") as rec_file:
            recorder = subprocess.Popen(
                ["parec", f"--server=unix:{rig.pulse_socket}", "-d", "rig_sink.monitor", "--raw", "--format=s16le",
                 "--rate=24000", "--channels=1", "--latency-msec=10"], stdout=rec_file, stderr=subprocess.DEVNULL)
        settings = load_settings(write_device_config(workdir / "dev3", sim, sections={
            "audio": {"input": "test_mic", "output": "test_pulse"},
            "realtime": {"follow_up_s": 1.5, "response_timeout_s": 5.0},
            "state": {"dir": str(workdir / "dev3" / "state")},
        }))
        d = Device(settings, rig, sim)
        await d.start()
        watch = SizeWatch(rec_path)  # when did the recording get each byte (+ parec's ~10 ms latency)
        watch.start()
        reply = pcm(speech_pcm(LONG_REPLY))
        await asyncio.sleep(1.5)
        for r in range(rounds):
            sim.add(Turn(say=LONG_REPLY, transcript=REQUEST), Turn(say="Sure.", transcript="stop"))
            mark = len(d.events)
            n_sessions = len(sim.sessions)
            rec_start = os.path.getsize(rec_path)
            d.say(speech, WAKE, REQUEST)
            await d.state(State.SPEAKING, 20, after=mark)
            await asyncio.sleep(1.2 + 0.3 * r)
            n_int = len(d.assistant.interruptions)
            d.say(speech, WAKE, "stop")
            await d.until(lambda n=n_int: len(d.assistant.interruptions) > n, 10, "interruption")  # type: ignore[misc]
            intr = d.assistant.interruptions[-1]
            await d.until(lambda: d.assistant.state is State.IDLE, 30, "idle")
            await asyncio.sleep(0.5)
            s = sim.sessions[n_sessions]
            (_, end_ms), = s.truncations
            heard = pcm(rec_path.read_bytes()[rec_start - rec_start % 2:])
            if os.environ.get("BENCH_KEEP"):
                np.save(os.environ["BENCH_KEEP"], heard)
            played, end_pos = heard_ms(heard, reply, volume_gain(d.assistant.volume))
            silent_t = watch.time_of(rec_start - rec_start % 2 + end_pos * 2)
            results.append({"truncate_error_ms": float(end_ms - played), "audio_end_ms": float(end_ms),
                            "heard_ms": float(played), "received_ms": float(intr.received_ms),
                            "interrupt_to_silent_ms": (silent_t - intr.t) * 1000 if silent_t else float("nan")})
            print(f"pulse round {r + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in results[-1].items()), file=sys.stderr, flush=True)
        watch.stop_flag.set()
    finally:
        if d is not None:
            await d.stop()
        if recorder is not None:
            recorder.terminate()
            recorder.wait(5)
        rig.close()
        runner.stop()
    return results


async def cpu_run(workdir: Path, speech: Speech) -> dict[str, float]:
    """CPU of this (device) process: idle, and over one conversation; simulator in its own process."""
    proc = subprocess.Popen([sys.executable, "-m", "services.simulator", "--port", "0", "--pace", "1",
                             "--api-key", "sk-sim-bench", "--reply", LONG_REPLY, "--reply", "You are welcome."],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    (workdir / "alsa2").mkdir()
    rig = AlsaRig(workdir / "alsa2")
    os.environ.update(rig.env)
    d: Device | None = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"api_base=(\S+) ws_url=(\S+)", line)
        if not m:
            raise RuntimeError(f"simulator did not start: {line!r}")
        sim = SimpleNamespace(api_base=m.group(1), ws_url=m.group(2), api_key="sk-sim-bench", sessions=[])
        d = Device(_config(workdir / "dev2", sim, rig, follow_up_s=2.5), rig, sim)  # type: ignore[arg-type]
        await d.start(speaker_fifo=True)
        await asyncio.sleep(2.0)
        c0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(5.0)
        idle = (time.process_time() - c0) / (time.monotonic() - t0)
        d.say(speech, WAKE, REQUEST)
        await d.until(lambda: d.of(WakeDetected), 15, "wake")
        c0, t0 = time.process_time(), time.monotonic()
        await d.state(State.FOLLOW_UP, 30)
        d.say(speech, "thank you")
        await d.until(lambda: d.of(ConversationEnded), 30, "end")
        cpu, wall = time.process_time() - c0, time.monotonic() - t0
        return {"idle_cpu_per_s": idle, "conversation_cpu_per_s": cpu / wall, "conversation_s": wall}
    finally:
        if d is not None:
            await d.stop()
        rig.close()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _summary(values: list[float]) -> str:
    v = [x for x in values if not np.isnan(x)]
    if not v:
        return "n/a"
    return f"median {statistics.median(v):.0f}, min {min(v):.0f}, max {max(v):.0f} (n={len(v)})"


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-conversation-") as tmp:
        workdir = Path(tmp)
        (workdir / "speech").mkdir()
        speech = Speech(workdir / "speech")
        rounds = await latency_rounds(args.rounds, workdir, speech)
        try:
            pulse = await pulse_rounds(max(1, args.rounds // 2 + 1), workdir, speech)
        except BaseException as exc:  # pytest.skip() without pulseaudio, or a rig failure: report, go on
            if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                raise
            print(f"pulse rounds skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
            pulse = []
        cpu = await cpu_run(workdir, speech)
    return {"rounds": rounds, "pulse": pulse, "cpu": cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = p.parse_args()
    result = asyncio.run(amain(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rounds = result["rounds"]
    targets = {
        "wake_to_first_append_ms": "target <= 100",
        "speech_lost_ms": "target 0",
        "stream_margin_ms": "stream starts this early",
        "interrupt_to_silent_ms": "target <= 50, rig speaker",
        "interrupt_to_drop_ms": "device: ALSA buffer dropped",
        "written_after_interrupt_ms": "device: reply audio written after",
        "truncate_error_ms": "target +-50",
    }
    for key, note in targets.items():
        print(f"{key:28s} {_summary([r[key] for r in rounds])}  [{note}]")
    print(f"{'truncate_error_ms (pulse)':28s} {_summary([r['truncate_error_ms'] for r in result['pulse']])}  "
          "[target +-50, speaker reporting its delay]")
    print(f"{'interrupt_to_silent (pulse)':28s} {_summary([r['interrupt_to_silent_ms'] for r in result['pulse']])}  "
          "[target <= 50, null sink monitor, incl. recording latency]")
    cpu = result["cpu"]
    print(f"{'cpu_per_audio_s':28s} conversation {cpu['conversation_cpu_per_s']:.3f} CPU-s/s over {cpu['conversation_s']:.1f} s; "
          f"idle {cpu['idle_cpu_per_s']:.3f}")


if __name__ == "__main__":
    main()
