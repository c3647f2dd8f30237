"""Benchmark (issue 10): a home of 80 devices as Zigbee2MQTT, Tasmota and device-based discovery
announce them (300 entities kept of about 540 announced), through a real mosquitto.

Prints:
- load: from the speaker's start to every entity known (and to the tools refreshed), with the
  retained discovery configs already on the broker, as after a restart;
- the list the model reads: characters of the ``list_devices`` answer (JSON, as sent) and of the
  ``{{devices}}`` text, with every device's state reported; and one area's / one type's list;
- parsing alone: all announcements through discovery and the registry, no broker.

Usage: ``python -m bench.home_devices [--rooms 8] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from device.tools.device_registry import DeviceRegistry
from device.tools.discovery import parse_message
from tests.rig.broker import DeviceSimulator, HomeRig, Mosquitto
from tests.rig.home_fixtures import BIG_HOME_ROOMS, big_home


def parse_only(sims: list[Any]) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    reg = DeviceRegistry()
    announced = 0
    for sim in sims:
        for topic, payload in sim.discovery_messages():
            announced += 1
            for _, spec in parse_message(topic, json.dumps(payload).encode() if payload else b"", "homeassistant"):
                if spec is not None:
                    reg.put(spec)
    return time.perf_counter() - t0, announced, len(reg)


async def through_broker(broker: Mosquitto, sims: list[Any], kept: int) -> dict[str, Any]:
    devices = DeviceSimulator(broker)
    devices.add(*sims)
    devices.start()
    try:
        await asyncio.sleep(0.5)  # every retained config is on the broker before the speaker starts
        t0 = time.perf_counter()
        async with HomeRig(broker) as rig:
            reg = rig.home.registry
            while len(reg) < kept:
                if time.perf_counter() - t0 > 30:
                    raise SystemExit(f"only {len(reg)} of {kept} entities arrived")
                await asyncio.sleep(0.005)
            t_known = time.perf_counter() - t0
            while rig.home._update_handle is not None or "control_device" not in rig.tools:
                await asyncio.sleep(0.005)
            t_tools = time.perf_counter() - t0
            for sim in sims:  # the devices report (their states are not retained)
                for topic, payload, retain in sim.state_messages():
                    if not retain:
                        devices.publish(topic, payload)
            with_state = [d for d in reg.all() if d.spec.state_topic]
            deadline = time.perf_counter() + 10
            while sum(1 for d in with_state if {k for k in d.state if k != "available"}) < len(with_state):
                if time.perf_counter() > deadline:
                    break
                await asyncio.sleep(0.02)
            listing = await rig.call("list_devices")
            area = await rig.call("list_devices", {"area": BIG_HOME_ROOMS[0]})
            kind = await rig.call("list_devices", {"type": "sensor"})
            summary = rig.home.summary()
            return {
                "devices": len(listing["devices"]),
                "entities": len(reg),
                "load_s": round(t_known, 3),
                "tools_ready_s": round(t_tools, 3),
                "list_chars": len(json.dumps(listing, ensure_ascii=False)),
                "summary_chars": len(summary),
                "area_list_chars": len(json.dumps(area, ensure_ascii=False)),
                "sensor_list_chars": len(json.dumps(kind, ensure_ascii=False)),
                "example_lines": listing["devices"][:10],
            }
    finally:
        devices.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rooms", type=int, default=len(BIG_HOME_ROOMS), help="rooms of ten devices (8: 80 devices)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rooms = tuple(BIG_HOME_ROOMS[i % len(BIG_HOME_ROOMS)] + ("" if i < len(BIG_HOME_ROOMS) else f" {i}") for i in range(args.rooms))
    sims = big_home(rooms)
    parse_s, announced, kept = parse_only(sims)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            figures = asyncio.run(through_broker(broker, big_home(rooms), kept))
        finally:
            broker.stop()
    figures.update(announced=announced, parse_only_s=round(parse_s, 3))
    if args.json:
        print(json.dumps(figures, ensure_ascii=False))
        return 0
    print(f"home: {len(sims)} devices, {announced} discovery configs announced, {figures['entities']} entities kept")
    print(f"load through mosquitto: all entities known in {figures['load_s']:.3f} s, tools refreshed in "
          f"{figures['tools_ready_s']:.3f} s (parsing alone {figures['parse_only_s']:.3f} s)")
    print(f"list_devices: {figures['devices']} lines, {figures['list_chars']} chars as JSON; "
          f"{{{{devices}}}}: {figures['summary_chars']} chars")
    print(f"list_devices(area={rooms[0]!r}): {figures['area_list_chars']} chars; "
          f"list_devices(type='sensor'): {figures['sensor_list_chars']} chars")
    print("first lines:")
    for line in figures["example_lines"]:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
