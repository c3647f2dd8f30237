"""Benchmark: how punctually timers ring, and how fast a ringing speaker falls silent.

Part 1, the service alone: 20 timers 1-3 s long on the real event loop; the figure is when
``ring()`` is called relative to each timer's end (one scheduled wake-up per deadline, no polling).

Part 2, the whole daemon (`speaker run` on the rig: ALSA FIFO microphone with espeak-ng speech,
a real-time FIFO speaker, mosquitto, the realtime simulator calling set_timer): the alarm's onset
as heard on the speaker relative to the timer's end, and the time from each stop (MQTT
``ring/stop``, the wake word) to the last alarm sound heard.

Run: ``python bench/timers.py [-n 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.events import EventBus  # noqa: E402
from device.timers.clock import local_zone  # noqa: E402
from device.timers.service import TimerService  # noqa: E402
from device.timers.store import TimerStore  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def summary(name: str, ms: list[float]) -> str:
    return (f"{name}: n={len(ms)} median {statistics.median(ms):.1f} ms, p95 {pct(ms, 95):.1f} ms, "
            f"min {min(ms):.1f} ms, max {max(ms):.1f} ms")


async def service_timing(count: int = 20) -> list[float]:
    late: list[float] = []
    ends: dict[str, float] = {}

    class Ringer:
        def ring(self, ring_id: str, kind: str, text: str) -> None:
            late.append((time.monotonic() - ends[ring_id]) * 1000)

        def stop_ringing(self, source: str) -> bool:
            return False

    with tempfile.TemporaryDirectory() as tmp:
        service = TimerService(store=TimerStore(tmp), bus=EventBus(), ringer=Ringer(), zone=local_zone("UTC"))
        await service.start()
        for i in range(count):
            entry = service.set_timer(1.0 + 2.0 * i / count, f"t{i}")
            ends[entry.id] = entry.deadline
        await asyncio.sleep(3.3)
        await service.stop()
    return late


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5, help="rounds of the daemon part (default 5)")
    ap.add_argument("--service-only", action="store_true", help="only part 1")
    args = ap.parse_args()
    late = asyncio.run(service_timing())
    print(summary("service: timer end -> ring() called (20 timers)", late))
    if args.service_only:
        return 0
    try:
        from bench.timers_daemon import run_daemon_rounds
    except ImportError as exc:
        print(f"daemon part skipped: {exc}")
        return 0
    return run_daemon_rounds(args.n, summary)


if __name__ == "__main__":
    raise SystemExit(main())
