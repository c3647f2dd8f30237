"""Benchmark (issue 13): voice barge-in through the daemon with software echo cancellation.

The daemon (`speaker run`, barge_in = "voice", echo_cancellation = true) on the ALSA rig, with
the simulated room between speaker and microphone (tests/rig/room_io.py: RT60 0.45 s, 30 ms,
soft clipping, mic noise) and the realtime simulator answering every request with a reply:
  - N replies with nobody talking: how many did the speaker interrupt itself?
  - K replies talked over (at 0 dB SER: the talker as loud as the reply's echo at the microphone):
    time from the talker's onset to the reply stopping.

    python bench/aec_rig.py [--replies 50] [--barge 10] [--speaker test_pulse] [--clock-ppm 2000] [--talk-at 1.0,2.5]
                            [--ser -5] [--cpu 0.2] [--log daemon.log] [--dump DIR]

--cpu holds the whole daemon (every thread) to that share of one core of this machine, as a
slower board would (a Linux cgroup's CPU quota over 10 ms periods; needs root): does it still keep
up with its microphone, and how late does it stop for a talker?
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

REPLY = "Sure. Tomorrow will be mostly sunny, with a light breeze from the west and a high of twenty two degrees."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replies", type=int, default=50, help="replies with nobody talking")
    ap.add_argument("--barge", type=int, default=10, help="replies talked over")
    ap.add_argument("--speaker", default="test_spk_fifo", choices=["test_spk_fifo", "test_pulse"],
                    help="the rig's FIFO speaker (reports no delay) or its PulseAudio sink (reports its delay)")
    ap.add_argument("--clock-ppm", type=float, default=0.0,
                    help="the rig's microphone runs this many ppm fast (or slow) of the system clock; with --speaker "
                         "test_pulse, whose sink keeps (about) the system clock, that is a microphone on another card: the "
                         "sink's audio reaches it resampled onto its clock (the FIFO speaker keeps the microphone's "
                         "pace, but reports no queue, so nothing follows its clock)")
    ap.add_argument("--talk-at", default="1.5",
                    help="when the talker starts, in seconds after the reply starts playing; a comma-separated list is "
                         "cycled over the replies talked over (the latency depends on what the reply says there)")
    ap.add_argument("--ser", type=float, default=0.0,
                    help="the talker's level against the reply's echo at the microphone, in dB (speech-to-echo ratio)")
    ap.add_argument("--cpu", type=float, help="hold the daemon to this share of one core (0.1-1; a cgroup's CPU quota, "
                                              "needs root)")
    ap.add_argument("--log", help="write the daemon's log (at debug level) to this file")
    ap.add_argument("--state", help="the daemon's state directory, kept across runs (a speaker's pace against the "
                                    "microphone measured in one run is used from the start of the next)")
    ap.add_argument("--dump", help="write what the server heard in each session whose reply interrupted itself, "
                                   "and in each talked over, to this folder (24 kHz WAV, one per session)")
    args = ap.parse_args()

    from services.simulator import SimulatorThread
    from tests.rig import room as rm
    from tests.rig.alsa import AlsaRig
    from tests.rig.daemon import Daemon
    from tests.rig.simulator import write_device_config
    from tests.rig.speech import Speech

    work = Path(tempfile.mkdtemp(prefix="aec-rig-"))
    speech = Speech(Path(tempfile.gettempdir()) / "speaker-bench-speech")
    (work / "alsa").mkdir()
    rig = AlsaRig(work / "alsa")
    runner = SimulatorThread(pace=1.0, default_reply=REPLY)
    sim = runner.start()
    daemon = None
    group = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up the rig and the daemon
    try:
        if args.speaker == "test_pulse":
            rig.start_pulse()
        room = rm.RoomProcess(rig, rm.Room(rt60_s=0.45, delay_ms=30, seed=9, clock_ppm=args.clock_ppm), work / "room", speaker=args.speaker)
        cfg = write_device_config(work / "device", sim, sections={
            "audio": {"input": "test_mic", "output": args.speaker, "volume": 100, "cues": False, "echo_cancellation": True},
            "realtime": {"barge_in": "voice", "follow_up_s": 0.5, "silence_duration_ms": 800},
            "state": {"dir": args.state or str(work / "state")}})
        daemon = Daemon(["run", "--config", str(cfg), *(["--log-level", "debug"] if args.log else [])], env=rig.env)
        daemon.wait_for(r"ready: listening", 30)
        cpu0, wall0 = process_cpu_s(daemon.proc.pid), time.monotonic()
        if args.cpu:  # (once it is ready: loading the wake model would take a slow board's time too)
            group, quota = cpu_quota(daemon.proc.pid, args.cpu)
            print(f"the daemon is held to {args.cpu * 100:.0f} % of one core ({quota})", flush=True)
        time.sleep(1.0)
        request = np.concatenate([speech.say("hey jarvis"), speech.silence(0.15), speech.say("what is the weather like tomorrow")])
        talk = speech.trim(speech.say("stop please, that is enough", voice="en-gb"))

        def one_reply() -> int:
            """Wake the speaker, wait for it to speak; returns the daemon line index at speaking."""
            mark = daemon.mark()
            room.talk(request, 0.5)
            daemon.wait_for(r"state \w+ -> speaking", 20, start=mark)
            return daemon.mark()

        self_interruptions = 0
        replies = 0
        for i in range(args.replies):
            mark = one_reply()
            m = daemon.wait_for(r"state speaking -> (\w+)", 30, start=mark)
            replies += 1
            if m.group(1) == "listening":
                self_interruptions += 1
                why = [line.split("INFO", 1)[-1].strip() for line in daemon.lines[mark:] if "interrupted by" in line]
                print(f"  reply {i + 1}: interrupted itself ({'; '.join(why)})", flush=True)
                if args.dump:
                    dump_session(Path(args.dump) / f"reply{i + 1:03d}.wav", sim.sessions[-1])
            try:
                daemon.wait_for(r"-> idle", 30, start=mark)
            except AssertionError:
                print("  the speaker keeps answering its own echo (each new reply interrupted): stopping here", flush=True)
                break
            time.sleep(0.5)
        print(f"replies with nobody talking: {replies}, self-interruptions: {self_interruptions}", flush=True)
        moved = sum("the echo path changed" in line for line in daemon.lines)
        print(f"the echo canceller settled again {moved} times after the echo path changed", flush=True)

        latencies = []
        misses = 0
        onsets = [float(x) for x in args.talk_at.split(",")]
        level = reply_echo_dbfs(room.proc.events)
        if level is None and args.barge:  # no reply heard yet: one to measure its echo by
            mark = one_reply()
            daemon.wait_for(r"-> idle", 30, start=mark)
            time.sleep(0.5)
            level = reply_echo_dbfs(room.proc.events)
        if args.barge:
            print(f"the talker is set to the reply's echo ({level:.1f} dBFS) {args.ser:+.0f} dB", flush=True)
        for i in range(args.barge):
            one_reply()
            speaking = time.monotonic()
            at = onsets[i % len(onsets)]
            time.sleep(max(0.0, at - (time.monotonic() - speaking)))
            gain = 10 ** ((level + args.ser) / 20) / rm.active_rms(talk.astype(np.float64) / 32768.0)
            n_events = len(room.proc.events)
            mark = daemon.mark()
            uid = room.talk(talk, gain)
            try:
                daemon.wait_for(r"interrupted by voice", 10, start=mark)
            except AssertionError:
                misses += 1
                print(f"  talker {at:.1f} s into the reply: the reply played on", flush=True)
                if args.dump:
                    dump_session(Path(args.dump) / f"barge{i + 1:03d}-missed.wav", sim.sessions[-1])
                daemon.wait_for(r"-> idle", 30, start=mark)
                time.sleep(0.5)
                continue
            stopped = time.monotonic()
            started = room.proc.wait_event("start", 2, after=n_events)
            if started is not None and started["id"] == uid:
                latencies.append((stopped - started["t"]) * 1000)
                if len(onsets) > 1:
                    print(f"  talker {started['t'] - speaking:.2f} s into the reply: stopped after {latencies[-1]:.0f} ms",
                          flush=True)
                if args.dump:
                    dump_session(Path(args.dump) / f"barge{i + 1:03d}.wav", sim.sessions[-1])
            daemon.wait_for(r"-> idle", 30, start=mark)
            time.sleep(0.5)
        if latencies:
            lat = np.array(latencies)
            print(f"voice barge-in at {args.ser:+.0f} dB SER over {len(lat)} replies: reply stopped after median {np.median(lat):.0f} ms, "
                  f"max {lat.max():.0f} ms from the talker's onset; within 300 ms: {np.mean(lat <= 300) * 100:.0f} %")
        used = (process_cpu_s(daemon.proc.pid) - cpu0) / (time.monotonic() - wall0)
        print(f"the daemon used {used * 100:.1f} % of one core over the run (all its threads)", flush=True)
        status = Path(args.state or work / "state") / "status.json"
        if status.exists():
            import json

            print("speaker status:", (json.loads(status.read_text()).get("audio") or {}).get("summary"), flush=True)
        said = [line.split("WARNING", 1)[-1].strip() for line in daemon.lines if "WARNING" in line]
        print(f"the daemon's warnings: {len(said)}", *said[:10], sep="\n  ", flush=True)
    finally:
        if daemon is not None:
            daemon.stop()
            if args.log:
                Path(args.log).write_text(daemon.output + "\n")
        if group is not None:
            try:
                group.rmdir()
            except OSError as exc:
                print(f"(the cgroup {group} is left: {exc})")
        runner.stop()
        rig.close()
    return 0


def process_cpu_s(pid: int) -> float:
    """CPU seconds process ``pid`` has used (all its threads, user and system)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_quota(pid: int, share: float) -> tuple[Path, str]:
    """Put process ``pid`` (all its threads) in a cgroup allowed ``share`` of one core per 10 ms."""
    period = 10_000
    quota = max(1000, round(share * period))
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    group = Path("/sys/fs/cgroup") / f"aec-rig-{pid}" if v2.exists() else Path("/sys/fs/cgroup/cpu") / f"aec-rig-{pid}"
    group.mkdir(exist_ok=True)
    if v2.exists():
        (group / "cpu.max").write_text(f"{quota} {period}")
    else:
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    (group / "cgroup.procs").write_text(str(pid))
    return group, f"{quota} us of CPU per {period} us, cgroup {group}"


def reply_echo_dbfs(events: list[dict]) -> float | None:
    """The reply's echo level at the microphone: the median of the room's once-a-second echo
    levels while a reply was playing (a second that was partly silence reads lower: a talker set by
    it could be 40 dB too quiet, and a reply it did not stop counted as a miss)."""
    levels = [e["dbfs"] for e in events if e["ev"] == "echo" and e["dbfs"] > -45.0]
    return float(np.median(levels)) if levels else None


def dump_session(path: Path, session) -> None:
    """What the server heard in ``session`` (its turns' marks in the log line), as a WAV file."""
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(session.audio_in)
    print(f"  wrote {path} (turns at {session.speech} ms)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
