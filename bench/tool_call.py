"""Benchmark: a control_device call through the tool registry to its output, with a device answering at once.

A real mosquitto on a free loopback port, a simulated Zigbee2MQTT light (another paho client that
applies the command and publishes its new state at once), and the daemon's MqttConnection +
HomeDevices + ToolRegistry. Each sample: ``ToolRegistry.call("control_device", <arguments JSON>)``
until the output (what goes into function_call_output) is ready; alternates on/off with a
brightness so every call really changes the light. Run: ``python -m bench.tool_call [-n 300]``.

The broker runs with mosquitto's default ``set_tcp_nodelay false`` (as most installations do);
``--broker-nodelay`` shows the figure with Nagle off on the broker side too; ``--plain-device`` a
device that, like most, does not quick-ACK (then some calls wait for one 40 ms delayed ACK).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.config import MqttConfig, Settings  # noqa: E402
from device.mqtt import MqttConnection  # noqa: E402
from device.tools.home import HomeDevices  # noqa: E402
from device.tools.registry import ToolRegistry  # noqa: E402
from tests.rig.broker import DeviceSimulator, Mosquitto, Z2MLightSim  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


async def run(n: int, broker_nodelay: bool, device_quickack: bool = True) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp), tcp_nodelay=broker_nodelay)
        broker.start()
        sim = DeviceSimulator(broker, quickack=device_quickack)
        sim.start()
        light = Z2MLightSim("Bench light", "0x00124b0000000001", "Office")
        sim.add(light)
        cfg = MqttConfig(host=broker.host, port=broker.port, device_id="bench", command_timeout_s=3.0)
        settings = Settings(path=Path(tmp) / "bench.toml", mqtt=cfg)
        mqtt = MqttConnection(cfg, asyncio.get_running_loop(), availability_topic="speaker/bench/availability")
        tools = ToolRegistry()
        home = HomeDevices(settings, mqtt, tools)
        try:
            await home.start()
            await mqtt.start()
            if not await mqtt.wait_connected(5):
                raise SystemExit("could not connect to the test broker")
            for _ in range(100):
                if home.registry.find("bench light").device is not None:
                    break
                await asyncio.sleep(0.05)
            samples: list[float] = []
            failures = 0
            for i in range(n + 10):
                args = {"device": "bench light", "action": "turn_on", "brightness": 20 + (i % 7) * 10} if i % 2 == 0 else {
                    "device": "Bench Light", "action": "turn_off"}
                t0 = time.perf_counter()
                result = await tools.call("control_device", json.dumps(args), 5.0)
                _ = result.output_json
                dt = (time.perf_counter() - t0) * 1000
                if not result.output.get("ok"):
                    failures += 1
                if i >= 10:  # warm-up
                    samples.append(dt)
            return {
                "n": len(samples),
                "failures": failures,
                "p50_ms": statistics.median(samples),
                "p90_ms": pct(samples, 90),
                "p99_ms": pct(samples, 99),
                "max_ms": max(samples),
                "mean_ms": statistics.fmean(samples),
            }
        finally:
            await home.stop()
            await mqtt.stop()
            sim.stop()
            broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300, help="measured calls (after 10 warm-up calls)")
    ap.add_argument("--broker-nodelay", action="store_true", help="run mosquitto with set_tcp_nodelay true")
    ap.add_argument("--plain-device", action="store_true",
                    help="the simulated device does not quick-ACK (like most real devices): shows the broker's Nagle delays")
    args = ap.parse_args()
    res = asyncio.run(run(args.n, args.broker_nodelay, not args.plain_device))
    mode = "broker set_tcp_nodelay true" if args.broker_nodelay else "broker default (Nagle on)"
    if args.plain_device:
        mode += ", device without quick-ACK"
    print(f"control_device -> output, device answering at once over loopback ({mode}):")
    print(f"  n={res['n']} failures={res['failures']}  p50={res['p50_ms']:.2f} ms  p90={res['p90_ms']:.2f} ms  "
          f"p99={res['p99_ms']:.2f} ms  max={res['max_ms']:.2f} ms  mean={res['mean_ms']:.2f} ms  (target p50 <= 30 ms)")


if __name__ == "__main__":
    main()
