"""Benchmark: function_call_arguments.done -> function_call_output, through the whole daemon.

`speaker run` (a subprocess, ALSA file PCMs), the realtime simulator as the model, a real
mosquitto on a free loopback port and a simulated Zigbee2MQTT light that answers at once. Each
round starts a conversation over MQTT (`speaker/<id>/conversation/start` with a prompt); the
simulator calls control_device; the figure is the time between the simulator sending
`response.function_call_arguments.done` and receiving the `function_call_output` item: websocket
both ways, argument parsing, the MQTT command, the light's state report and the answer.

Run: ``python bench/function_call.py [-n 40]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.simulator import SimulatorThread, Turn  # noqa: E402
from tests.rig.alsa import AlsaRig  # noqa: E402
from tests.rig.broker import DeviceSimulator, Mosquitto, Z2MLightSim  # noqa: E402
from tests.rig.daemon import Daemon  # noqa: E402
from tests.rig.simulator import write_device_config  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=40, help="rounds (default 40)")
    args = ap.parse_args()
    turns = [
        Turn(call="control_device", arguments={"device": "bench light", "action": "turn_on" if i % 2 == 0 else "turn_off"}, then="Done.")
        for i in range(args.n)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        broker = Mosquitto(d / "broker")
        broker.start()
        devices = DeviceSimulator(broker)
        light = Z2MLightSim("bench light", "0x00124b00000000bb", "office")
        devices.add(light)
        devices.start()
        runner = SimulatorThread(pace=0, script=turns)
        sim = runner.start()
        (d / "alsa").mkdir()
        rig = AlsaRig(d / "alsa")
        rig.start_mic("test_mic")
        config = write_device_config(d / "device", sim, sections={
            "audio": {"input": "test_mic", "output": "test_spk"},
            "realtime": {"follow_up_s": 0.0},
            "mqtt": {"host": broker.host, "port": broker.port, "device_id": "bench"},
            "state": {"dir": str(d / "state")},
        })
        daemon = Daemon(["run", "--config", str(config)], rig.env)
        try:
            daemon.wait_for(r"ready: listening", timeout=30)
            daemon.wait_for(r"[Bb]ench light", timeout=10)
            for i in range(args.n):
                mark = daemon.mark()
                devices.publish("speaker/bench/conversation/start", json.dumps({"prompt": "Switch the bench light."}))
                wait(lambda: len(sim.sessions) > i and sim.sessions[i].function_outputs, 10, f"function output {i}")
                daemon.wait_for(r"state \S+ -> idle", timeout=10, start=mark)
            lat: list[float] = []
            for s in sim.sessions:
                done = {e["call_id"]: t for e, t in zip(s.server_events, s.server_times)
                        if e["type"] == "response.function_call_arguments.done"}
                for e, t in zip(s.client_events, s.client_times):
                    item = e.get("item") or {}
                    if e["type"] == "conversation.item.create" and item.get("type") == "function_call_output":
                        lat.append((t - done[item["call_id"]]) * 1000)
                        assert json.loads(item["output"])["ok"] is True, item["output"]
        finally:
            daemon.stop()
            rig.close()
            runner.stop()
            devices.stop()
            broker.stop()
    print(f"function_call_arguments.done -> function_call_output at the simulator, {len(lat)} calls, "
          f"device answering at once over loopback:")
    print(f"  p50 {statistics.median(lat):.1f} ms   p90 {pct(lat, 90):.1f} ms   p99 {pct(lat, 99):.1f} ms   max {max(lat):.1f} ms")
    print("target: p50 <= 30 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
