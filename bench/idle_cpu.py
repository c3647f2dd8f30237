"""Benchmark (issue 2): CPU cost of idle listening.

Runs the daemon (`python -m device.cli run --config <tmp>`) against the rig's FIFO microphone
fed in real time for SECONDS, and in the same run the bare wake engine (1 thread + XNNPACK)
on the same audio, paced the same way (one 80 ms frame per 80 ms) in its own process. Prints
CPU seconds per audio second of both, their ratio, and the daemon's peak RSS.

    python bench/idle_cpu.py [--seconds 60]

Targets on the 2-vCPU dev VM: daemon <= 0.012 CPU-s per audio-s, <= 1.25x the bare engine,
RSS <= 80 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SENTENCES = [
    "hey travis, turn on the kitchen light",
    "could you please turn off the lights in the living room",
    "the weather tomorrow will be sunny with a light breeze",
    "I'd like a cup of coffee and a piece of cake",
]
TICKS = os.sysconf("SC_CLK_TCK")


def idle_audio(seconds: float, cache: Path) -> np.ndarray:
    """A quiet room (noise floor) with someone talking now and then, never the wake word."""
    from tests.rig.speech import Speech

    speech = Speech(cache)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(int(16000 * seconds)) * 60).astype(np.float32)
    pos, i = 16000 * 4, 0
    while True:
        s = speech.say(SENTENCES[i % len(SENTENCES)]).astype(np.float32) * 0.5
        if pos + len(s) > len(x):
            break
        x[pos : pos + len(s)] += s
        pos += len(s) + 16000 * 8
        i += 1
    return np.clip(x, -32768, 32767).astype(np.int16)


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime, all threads


def proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bare_engine(raw: str, warmup_s: float) -> None:
    """Child process: the wake engine alone, paced at real time; prints a JSON result."""
    from device.config import WakeConfig
    from device.wakeword import WakeWord

    x = np.fromfile(raw, dtype=np.int16)
    frames = [x[i : i + 1280].tobytes() for i in range(0, len(x) - 1279, 1280)]
    ww = WakeWord(WakeConfig())
    for f in frames[: int(warmup_s / 0.08)]:
        ww.process(f)
    ww.reset()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # go
    cpu0, t0 = time.process_time(), time.monotonic()
    detections = 0
    for k, f in enumerate(frames):
        if ww.process(f) is not None:
            detections += 1
        delay = t0 + (k + 1) * 0.08 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "audio_s": len(frames) * 0.08, "detections": detections,
                      "rss_mb": proc_hwm_mb(os.getpid())}), flush=True)


def flat_out(raw: str, seconds: float = 20.0) -> dict[str, float]:
    """CPU-s per audio-s as fast as possible: ours vs pyopen-wakeword's interpreter as shipped."""
    from pyopen_wakeword import Model, OpenWakeWord, OpenWakeWordFeatures

    from device.config import WakeConfig
    from device.wakeword import WakeWord

    x = np.fromfile(raw, dtype=np.int16)[: int(16000 * seconds)]
    frames = [x[i : i + 1280].tobytes() for i in range(0, len(x) - 1279, 1280)]
    ww = WakeWord(WakeConfig())
    ww.process(frames[0])
    c0 = time.process_time()
    for f in frames:
        ww.process(f)
    ours = (time.process_time() - c0) / (len(frames) * 0.08)
    model, feats = OpenWakeWord.from_builtin(Model.HEY_JARVIS), OpenWakeWordFeatures.from_builtin()
    for e in feats.process_streaming(frames[0]):
        list(model.process_streaming(e))
    c0 = time.process_time()
    for f in frames:
        for e in feats.process_streaming(f):
            list(model.process_streaming(e))
    theirs = (time.process_time() - c0) / (len(frames) * 0.08)
    return {"ours": ours, "pyopen": theirs}


def wait_line(log: Path, needle: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--frontend", action="store_true",
                    help="daemon with the microphone front-end on (echo_cancellation, noise_suppression = 2, auto_gain = 3)")
    ap.add_argument("--bare-engine", metavar="RAW", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=float, default=3.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_engine:
        bare_engine(args.bare_engine, args.warmup)
        return 0

    from tests.rig.alsa import AlsaRig

    with tempfile.TemporaryDirectory(prefix="idle-cpu-") as tmp:
        work = Path(tmp)
        (work / "speech").mkdir()
        (work / "rig").mkdir()
        audio = idle_audio(args.seconds, work / "speech")
        raw = work / "idle.raw"
        audio.tofile(raw)
        rig = AlsaRig(work / "rig")
        cfg = work / "speaker.toml"
        frontend = "echo_cancellation = true\nnoise_suppression = 2\nauto_gain = 3\n" if args.frontend else ""
        cfg.write_text(rig.audio_toml("test_mic", "test_spk") + frontend + f'[state]\ndir = "{work / "state"}"\n[log]\nlevel = "info"\n')
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **rig.env)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("OPENAI_API_KEY", None)
        mic = rig.start_mic("test_mic")
        log = work / "daemon.log"
        with open(log, "w") as logf:
            daemon = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(cfg)], cwd=ROOT, env=env,
                                      stdout=logf, stderr=subprocess.STDOUT)
        bare = subprocess.Popen([sys.executable, __file__, "--bare-engine", str(raw)], cwd=ROOT, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if not wait_line(log, "ready", daemon, 30):
                print("the daemon did not get ready:\n" + log.read_text(errors="replace"), file=sys.stderr)
                return 1
            assert bare.stdout is not None and bare.stdin is not None
            json.loads(bare.stdout.readline())
            time.sleep(args.warmup)
            # Same audio, same moment: the feeder plays it to the daemon while the bare engine
            # works through it at the same pace.
            utt = mic.play(audio)
            bare.stdin.write("go\n")
            bare.stdin.flush()
            if not utt.wait_started(10):
                print("the feeder did not start", file=sys.stderr)
                return 1
            # Measure between the start and the end of the utterance as seen by the feeder.
            c0, t0 = proc_cpu_s(daemon.pid), utt.started or time.monotonic()
            utt.wait(args.seconds + 30)
            c1, t1 = proc_cpu_s(daemon.pid), utt.ended or time.monotonic()
            rss = proc_hwm_mb(daemon.pid)
            result = json.loads(bare.stdout.readline())
            t_term = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(10)
            stop_s = time.monotonic() - t_term
        finally:
            for p in (daemon, bare):
                if p.poll() is None:
                    p.kill()
                    p.wait()
            rig.close()
        detections = log.read_text(errors="replace").count("wake word hey_jarvis detected")
        flat = flat_out(str(raw))

    # The feeder's window starts at its first chunk; the last chunk's handover ends it.
    audio_s = t1 - t0
    d_rate = (c1 - c0) / audio_s
    b_rate = result["cpu_s"] / result["audio_s"]
    print(f"idle listening, {audio_s:.1f} s of real-time audio through the FIFO microphone (16 kHz mono)")
    print(f"  daemon (speaker run{', front-end on' if args.frontend else ''}): {d_rate:.4f} CPU-s per audio-s   peak RSS {rss:.1f} MB   wake detections {detections}")
    print(f"  bare engine, same pacing:    {b_rate:.4f} CPU-s per audio-s   peak RSS {result['rss_mb']:.1f} MB   "
          f"wake detections {result['detections']}")
    print(f"  ratio daemon / bare engine:  {d_rate / b_rate:.2f}x")
    print(f"  flat out (20 s of the same audio): ours {flat['ours']:.4f}, pyopen-wakeword as shipped {flat['pyopen']:.4f} CPU-s per audio-s")
    print(f"  SIGTERM -> exit {code} in {stop_s:.2f} s")
    print(f"targets: daemon <= 0.012 ({'ok' if d_rate <= 0.012 else 'MISSED'}), ratio <= 1.25 "
          f"({'ok' if d_rate / b_rate <= 1.25 else 'MISSED'}), RSS <= 80 MB ({'ok' if rss <= 80 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
