"""Benchmark (issue 7): MQTT command -> effect latency, and wake arbitration's added delay.

Starts its own mosquitto on a free loopback port. Measures, on loopback:

- mute / volume: from a client publishing ``<base>/mute/set`` (``volume/set``) to the assistant
  API call that applies it (``set_muted``/``set_volume``: "effect"), and to the client receiving
  the state echo on ``<base>/mute`` (``volume``: "confirmed", what Home Assistant waits for);
- arbitration: :meth:`Arbiter.claim` time alone on the broker (target 0), with three speakers
  detecting together, with three speakers detecting 0/25/50 ms apart, and with a silent peer
  (the worst case: the whole window).

Usage: ``python -m bench.mqtt_commands [--n 200] [--rounds 10] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device.arbitration import LATE_S, Arbiter
from device.config import MqttConfig, Settings
from device.events import EventBus, MuteChanged, State, VolumeChanged
from device.mqtt import MqttConnection
from device.presence import Presence, Topics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(port: int, workdir: str) -> subprocess.Popen[bytes]:
    conf = Path(workdir, "mosquitto.conf")
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"mosquitto did not start on port {port}")


def settings(port: int, device_id: str, arbitration_ms: int = 150) -> Settings:
    return Settings(path=Path("bench.toml"), present=frozenset({"mqtt"}),
                    mqtt=MqttConfig(host="127.0.0.1", port=port, device_id=device_id, arbitration_ms=arbitration_ms))


class TimedAssistant:
    """Records when the assistant API is called (perf_counter), publishing the events the real one does."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.state = State.IDLE
        self.muted = False
        self.volume = 50
        self.applied: asyncio.Queue[float] = asyncio.Queue()

    async def set_muted(self, muted: bool, source: str) -> None:
        self.applied.put_nowait(time.perf_counter())
        if muted != self.muted:
            self.muted = muted
            self.bus.publish(MuteChanged(muted=muted, source=source))

    async def set_volume(self, volume: int, source: str) -> None:
        self.applied.put_nowait(time.perf_counter())
        if volume != self.volume:
            self.volume = volume
            self.bus.publish(VolumeChanged(volume=volume, source=source))

    async def announce(self, text: str, *, chime: bool = True, then_listen: bool = False) -> None: ...
    async def start_conversation(self, prompt: str | None = None, source: str = "api") -> None: ...


class Commander:
    """The automation side (HA, Node-RED): publishes commands, timestamps state echoes."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.echo: dict[str, list[tuple[bytes, float]]] = {t: [] for t in topics}
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-commander")

        def on_connect(c: paho.Client, *_a: Any) -> None:
            for t in topics:
                c.subscribe(t, qos=0)
            ready.set()

        def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            with self._lock:
                self.echo[msg.topic].append((bytes(msg.payload), time.perf_counter()))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        ready.wait(5)

    def publish(self, topic: str, payload: str) -> float:
        t0 = time.perf_counter()
        self.client.publish(topic, payload, qos=0)
        return t0

    def echo_after(self, topic: str, payload: bytes, t0: float) -> float | None:
        with self._lock:
            for p, t in self.echo[topic]:
                if p == payload and t >= t0:
                    return t
        return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def summary(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {
        "n": len(s),
        "median_ms": round(statistics.median(s), 3),
        "p95_ms": round(s[min(len(s) - 1, int(0.95 * len(s)))], 3),
        "max_ms": round(s[-1], 3),
    }


async def bench_commands(port: int, n: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    s = settings(port, "bench")
    t = Topics.of(s)
    bus = EventBus()
    bus.bind(loop)
    assistant = TimedAssistant(bus)
    mqtt = MqttConnection(s.mqtt, loop, availability_topic=t.availability)
    await mqtt.start()
    assert await mqtt.wait_connected(5)
    presence = Presence(s, mqtt, bus, assistant)
    await presence.start()
    cmd = await asyncio.to_thread(Commander, port, [t.mute, t.volume])
    await asyncio.sleep(0.3)  # startup announcement done
    out: dict[str, Any] = {}
    try:
        for name, topic, state_topic, values in [
            ("mute", t.mute_set, t.mute, [("ON", b"ON"), ("OFF", b"OFF")]),
            ("volume", t.volume_set, t.volume, [("20", b"20"), ("80", b"80")]),
        ]:
            effect, confirmed = [], []
            for i in range(n):
                payload, echo = values[i % 2]
                t0 = cmd.publish(topic, payload)
                t1 = await asyncio.wait_for(assistant.applied.get(), 5)
                deadline = time.monotonic() + 5
                while (t2 := cmd.echo_after(state_topic, echo, t0)) is None:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"no state echo on {state_topic}")
                    await asyncio.sleep(0.0005)
                effect.append((t1 - t0) * 1000)
                confirmed.append((t2 - t0) * 1000)
                await asyncio.sleep(0.005)
            out[name] = {"effect": summary(effect), "confirmed": summary(confirmed)}
    finally:
        cmd.close()
        await presence.stop()
        await mqtt.stop()
    return out


async def _arbiters(port: int, ids: list[str]) -> tuple[list[MqttConnection], list[Arbiter]]:
    loop = asyncio.get_running_loop()
    conns, arbs = [], []
    for i in ids:
        s = settings(port, i)
        c = MqttConnection(s.mqtt, loop, availability_topic=f"{s.mqtt.topic_prefix}/{i}/availability")
        arbs.append(Arbiter(s, c))
        conns.append(c)
    for c in conns:
        await c.start()
        assert await c.wait_connected(5)
    deadline = time.monotonic() + 5
    while any(len(a.peers) != len(ids) - 1 for a in arbs):
        if time.monotonic() > deadline:
            raise SystemExit("speakers did not see each other")
        await asyncio.sleep(0.01)
    return conns, arbs


async def _close(conns: list[MqttConnection], arbs: list[Arbiter]) -> None:
    for a in arbs:
        a.close()
    for c in conns:
        await c.stop()


async def bench_arbitration(port: int, n: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    conns, arbs = await _arbiters(port, ["solo"])
    alone = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert await arbs[0].claim(0.9)
        alone.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.002)
    out["alone"] = summary(alone)
    await _close(conns, arbs)
    await asyncio.sleep(0.2)

    conns, arbs = await _arbiters(port, ["hall", "kitchen", "office"])
    for label, offsets in [("three_together", (0.0, 0.0, 0.0)), ("three_staggered_0_25_50ms", (0.0, 0.025, 0.05))]:
        winner_ms, all_ms, wins_ok = [], [], 0
        for r in range(rounds):
            scores = [(0.6, 0.9, 0.7), (0.95, 0.5, 0.8), (0.7, 0.75, 0.9)][r % 3]

            async def one(a: Arbiter, score: float, delay: float) -> tuple[bool, float]:
                await asyncio.sleep(delay)
                t0 = time.perf_counter()
                won = await a.claim(score)
                return won, (time.perf_counter() - t0) * 1000

            results = await asyncio.gather(*(one(a, s, d) for a, s, d in zip(arbs, scores, offsets)))
            wins = [w for w, _ in results]
            if sum(wins) == 1 and wins[scores.index(max(scores))]:
                wins_ok += 1
            winner_ms += [ms for w, ms in results if w]
            all_ms += [ms for _, ms in results]
            await asyncio.sleep(LATE_S + 0.2)
        out[label] = {"rounds": rounds, "exactly_one_loudest": wins_ok, "winner": summary(winner_ms),
                      "every_speaker": summary(all_ms)}
    await _close(conns, arbs)
    await asyncio.sleep(0.2)

    conns, arbs = await _arbiters(port, ["kitchen", "hall"])
    silent = []
    for _ in range(max(3, rounds // 2)):
        t0 = time.perf_counter()
        await arbs[0].claim(0.8)
        silent.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.01)
    out["silent_peer_online"] = summary(silent)
    await _close(conns, arbs)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("mosquitto") is None:
        raise SystemExit("mosquitto is not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as workdir:
        broker = start_broker(port, workdir)
        try:
            return {
                "commands": await bench_commands(port, args.n),
                "arbitration": await bench_arbitration(port, args.n, args.rounds),
                "arbitration_window_ms": 150,
            }
        finally:
            broker.terminate()
            broker.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="commands per kind, and lone claims")
    parser.add_argument("--rounds", type=int, default=10, help="three-speaker rounds per scenario")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for kind, r in result["commands"].items():
        for what, s in r.items():
            print(f"{kind:8s} command -> {what:9s}: median {s['median_ms']:7.3f} ms  p95 {s['p95_ms']:7.3f} ms  "
                  f"max {s['max_ms']:7.3f} ms  (n={s['n']})")
    arb = result["arbitration"]
    s = arb["alone"]
    print(f"arbitration alone            : median {s['median_ms']:7.3f} ms  p95 {s['p95_ms']:7.3f} ms  max {s['max_ms']:7.3f} ms  (n={s['n']})")
    for label in ("three_together", "three_staggered_0_25_50ms"):
        r = arb[label]
        w, e = r["winner"], r["every_speaker"]
        print(f"arbitration {label:26s}: exactly one (the loudest) won {r['exactly_one_loudest']}/{r['rounds']}; "
              f"winner's delay median {w['median_ms']:.1f} ms max {w['max_ms']:.1f} ms; "
              f"all speakers max {e['max_ms']:.1f} ms")
    s = arb["silent_peer_online"]
    print(f"arbitration, a silent peer   : median {s['median_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms (window 150 ms)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
