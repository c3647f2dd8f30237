"""Soak (issue 14): N conversations back to back through the daemon, looking for leaks.

Real parts: `speaker run` as a subprocess on the rig (ALSA FIFO microphone fed with espeak-ng
speech at real-time pace, ALSA file speaker), the real wake model, mosquitto with a simulated
Zigbee2MQTT light, and the realtime simulator (replies at ``--pace`` times real time). The
conversations cycle through four kinds:

- ``plain``: "hey jarvis, what is the weather like" -> reply -> follow-up window -> idle;
- ``tool``: "hey jarvis, toggle the kitchen light" -> control_device -> the light toggles -> reply;
- ``follow_up``: a question, then a second one in the follow-up window without the wake word;
- ``barge_in``: a long reply interrupted by "hey jarvis", then "thank you" answered.

Printed: failures (with why), the daemon's RSS, open file descriptors and threads after the first
conversations (warm: lazy imports and caches filled) and at the end, and its CPU seconds per
conversation. Targets: 0 failures, RSS growth < 5 MB, no fd or thread growth.

    python -m bench.soak [--conversations 500] [--warmup 4] [--pace 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from services.simulator import SimulatorThread, Turn
from tests.rig.alsa import AlsaRig
from tests.rig.broker import DeviceSimulator, Mosquitto, Z2MLightSim
from tests.rig.daemon import Daemon
from tests.rig.simulator import write_device_config
from tests.rig.speech import Speech

KINDS = ("plain", "tool", "follow_up", "barge_in")
LONG = ("Here is a long answer. The weather today is sunny in the morning, with clouds coming in from the west "
        "in the afternoon, and light rain in the evening, so take an umbrella if you go out late.")


def proc_figures(pid: int) -> dict[str, float]:
    """RSS (MB), open fds, threads and CPU seconds of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    threads = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {"rss_mb": rss_kb / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads, "cpu_s": cpu}


class Soak:
    def __init__(self, work: Path, pace: float) -> None:
        try:
            self._start(work, pace)
        except BaseException:
            self.close()
            raise

    def _start(self, work: Path, pace: float) -> None:
        self.work = work
        (work / "speech").mkdir()
        self.speech = Speech(work / "speech")
        (work / "alsa").mkdir()
        self.rig = AlsaRig(work / "alsa")
        self.broker = Mosquitto(work / "mosquitto")
        self.broker.start()
        self.devices = DeviceSimulator(self.broker)
        self.light = Z2MLightSim("kitchen light", "0x00124b0001", area="kitchen")
        self.devices.add(self.light)
        self.devices.start()
        self.runner = SimulatorThread(pace=pace)
        self.sim = self.runner.start()
        self.mic = self.rig.start_mic("test_mic")
        config = write_device_config(work / "device", self.sim, sections={
            "audio": {"input": "test_mic", "output": "test_spk"},
            "realtime": {"follow_up_s": 1.5},
            "mqtt": {"host": self.broker.host, "port": self.broker.port, "device_id": "kitchen"},
            "state": {"dir": str(work / "state")},
        })
        self.daemon = Daemon(["run", "--config", str(config)], self.rig.env)
        self.daemon.wait_for(r"ready: listening", timeout=30)
        self.daemon.wait_for(r"[Kk]itchen light", timeout=10)
        silence = self.speech.silence(1.0)
        self.audio = {
            "plain": np.concatenate([self.speech.say("hey jarvis, what is the weather like"), silence]),
            "tool": np.concatenate([self.speech.say("hey jarvis, toggle the kitchen light"), silence]),
            "again": np.concatenate([self.speech.say("and what about tomorrow"), silence]),
            "wake": np.concatenate([self.speech.say("hey jarvis"), self.speech.silence(0.3)]),
            "thanks": np.concatenate([self.speech.say("thank you"), silence]),
        }

    def close(self) -> None:
        # Also after a failed start: stop whatever was started.
        for name, stop in (("daemon", "stop"), ("runner", "stop"), ("devices", "stop"), ("broker", "stop"), ("rig", "close")):
            part = getattr(self, name, None)
            if part is not None:
                getattr(part, stop)()

    def conversation(self, kind: str) -> None:
        """One conversation of ``kind``; raises AssertionError saying what did not happen."""
        d, sim = self.daemon, self.sim
        mark = d.mark()
        if kind == "plain":
            self.mic.play(self.audio["plain"])
            d.wait_for(r"assistant said: ", 20, mark)
        elif kind == "tool":
            before = self.light.state.get("state")
            sim.add(Turn(call="control_device", arguments={"device": "kitchen light", "action": "toggle"}, then="Done."))
            self.mic.play(self.audio["tool"])
            d.wait_for(r"tool control_device\(.*'ok': True", 20, mark)
            assert self.light.state.get("state") != before, "the light did not toggle"
        elif kind == "follow_up":
            self.mic.play(self.audio["plain"])
            d.wait_for(r"state \w+ -> follow_up", 20, mark)
            second = d.mark()
            self.mic.play(self.audio["again"])
            d.wait_for(r"state follow_up -> listening", 10, second)
            d.wait_for(r"assistant said: ", 20, second)
        elif kind == "barge_in":
            sim.add(Turn(say=LONG), Turn(say="You are welcome."))
            self.mic.play(self.audio["plain"])
            d.wait_for(r"state \w+ -> speaking", 20, mark)
            time.sleep(0.8)
            barge = d.mark()
            self.mic.play(self.audio["wake"])
            d.wait_for(r"interrupted by wake", 10, barge)
            self.mic.play(self.audio["thanks"])
            d.wait_for(r"assistant said: You are welcome", 20, barge)
        d.wait_for(r"conversation ended", 20, mark)
        d.wait_for(r"state \w+ -> idle", 10, mark)
        assert d.proc.poll() is None, "the daemon exited"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=4, help="conversations before the start figures")
    parser.add_argument("--pace", type=float, default=3.0, help="reply speed vs. real time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        soak = Soak(Path(tmp), args.pace)
        try:
            pid = soak.daemon.proc.pid
            boot = proc_figures(pid)
            failures: list[str] = []
            start: dict[str, float] = {}
            t_start = 0.0
            total = args.warmup + args.conversations
            for i in range(total):
                if i == args.warmup:
                    start, t_start = proc_figures(pid), time.monotonic()
                kind = KINDS[i % len(KINDS)]
                try:
                    soak.conversation(kind)
                except AssertionError as exc:
                    why = str(exc).splitlines()[0][:200]
                    failures.append(f"#{i} {kind}: {why}")
                    print(f"FAIL #{i} {kind}: {why}", file=sys.stderr)
                    if soak.daemon.proc.poll() is not None:
                        break
                    soak.daemon.wait_for(r"state \w+ -> idle", 30, max(0, soak.daemon.mark() - 5))
                if (i + 1) % 20 == 0:
                    f = proc_figures(pid)
                    print(f"  {i + 1}/{total}: RSS {f['rss_mb']:.1f} MB, fds {f['fds']}, threads {f['threads']:.0f}", file=sys.stderr)
            end = proc_figures(pid) if soak.daemon.proc.poll() is None else {}
            wall = time.monotonic() - t_start
        finally:
            soak.close()
        out: dict[str, Any] = {
            "conversations": args.conversations,
            "failures": failures,
            "boot": boot,
            "start": start,
            "end": end,
            "cpu_s_per_conversation": (end["cpu_s"] - start["cpu_s"]) / args.conversations if end and start else None,
            "wall_s_per_conversation": wall / args.conversations,
            "sessions": len(soak.sim.sessions),
        }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        s, e = out["start"], out["end"]
        print(f"conversations: {args.conversations} after {args.warmup} warm-up ({', '.join(KINDS)} in turn)")
        print(f"failures:      {len(failures)}" + "".join(f"\n  {f}" for f in failures))
        print(f"RSS:           boot {boot['rss_mb']:.1f} MB, start {s['rss_mb']:.1f} MB, end {e.get('rss_mb', float('nan')):.1f} MB "
              f"(growth {e.get('rss_mb', float('nan')) - s['rss_mb']:+.1f} MB; target < 5 MB)")
        print(f"open fds:      start {s['fds']}, end {e.get('fds')}")
        print(f"threads:       start {s['threads']:.0f}, end {e.get('threads')}")
        cpu = out["cpu_s_per_conversation"]
        print(f"CPU:           {cpu:.2f} CPU-s per conversation ({out['wall_s_per_conversation']:.1f} s each)" if cpu is not None else "CPU: -")
    ok = not failures and out["end"] and out["end"]["rss_mb"] - out["start"]["rss_mb"] < 5 \
        and out["end"]["fds"] <= out["start"]["fds"] and out["end"]["threads"] <= out["start"]["threads"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
