"""A real mosquitto on a free loopback port, a wildcard spy, and simulated home devices.

Fixtures:
- ``mosquitto``: a started :class:`Mosquitto` (stopped after the test); ``restart()`` keeps the port.
- ``mqtt_spy``: a :class:`BrokerSpy` subscribed to ``#`` on that broker (sees every publish).
- ``device_sim``: an empty, started :class:`DeviceSimulator`; add devices with ``add_standard_devices``
  or the ``*Sim`` classes below.

The simulators are plain paho clients in their own network thread, like devices on the network:
they answer commands by publishing their new state, (re)publish their discovery configs and states
after every (re)connect.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now, below the kernel's ephemeral range.

    A client that keeps reconnecting to a stopped broker's port inside that range is sooner or
    later handed that very port as its own (a TCP self-connect) and holds it: the broker then
    cannot listen on it again ("Address already in use").
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randrange(20000, low) if low > 21000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free TCP port below the ephemeral range")


@dataclass
class TlsFiles:
    """Paths of a throw-away CA, server and client certificate (see :func:`make_tls_files`)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Create a CA, a server certificate for 127.0.0.1 and a client certificate with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, cwd=d)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "speaker-client")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.crt", "-extfile", "san.ext")
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


class Mosquitto:
    """A mosquitto broker on 127.0.0.1:<port>, anonymous unless ``passwords`` is given, no persistence."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        passwords: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        require_certificate: bool = False,
        tcp_nodelay: bool = False,
    ) -> None:
        if shutil.which("mosquitto") is None:
            pytest.skip("mosquitto is not installed")
        self.host = HOST
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log_path = workdir / f"mosquitto-{self.port}.log"
        lines = [f"listener {self.port} {HOST}", "persistence false", "log_type error", "log_type warning",
                 "log_type notice", "log_type information", "connection_messages true", "log_dest stderr"]
        if tcp_nodelay:
            lines.append("set_tcp_nodelay true")
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and cannot read our files
        if passwords:
            pwfile = workdir / f"passwd-{self.port}"
            pwfile.write_text("")
            for user, pw in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, pw], check=True, capture_output=True, timeout=10)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}"]
            if require_certificate:
                lines += ["require_certificate true", "use_identity_as_username false"]
        self.conf.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self.running:
            return
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on {HOST}:{self.port} within {timeout} s: {self.log_tail()}")
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Kill the broker abruptly (SIGKILL), as a crash or power cut would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self.stop()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class _PahoClient:
    """A paho client in its own network thread, reconnecting quickly, for rig parts."""

    def __init__(self, broker: Mosquitto, client_id: str, *, quickack: bool = True) -> None:
        self.broker = broker
        self.quickack = quickack
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.connected = threading.Event()
        self._subacks = threading.Condition()
        self._acked: set[int] = set()  # message ids of the subscriptions the broker acknowledged

    def _on_subscribe(self, _c: paho.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        with self._subacks:
            self._acked.add(mid)
            self._subacks.notify_all()

    def wait_subscribed(self, mids: list[int], timeout: float = 5.0) -> None:
        """Wait until the broker acknowledged these subscriptions (call from another thread than
        paho's): a message published after that reaches them, whoever publishes it."""
        with self._subacks:
            if not self._subacks.wait_for(lambda: set(mids) <= self._acked, timeout):
                raise RuntimeError(f"the broker did not acknowledge {len(set(mids) - self._acked)} subscriptions")

    def _on_publish(self, client: paho.Client, _u: Any, _mid: int, _r: Any, _p: Any) -> None:
        # Acknowledge the broker's PUBACK at once, so the broker's Nagle does not hold the next
        # command to this device for a delayed-ACK period: a device that "answers at once".
        sock = client.socket()
        if self.quickack and sock is not None and hasattr(socket, "TCP_QUICKACK"):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                pass

    def start(self, timeout: float = 5.0) -> None:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise RuntimeError(f"rig client could not connect to {self.broker.host}:{self.broker.port}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        self.connected.set()
        self.on_connect()

    def on_connect(self) -> None:  # overridden
        pass

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self.on_message(msg.topic, bytes(msg.payload), bool(msg.retain))

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:  # overridden
        pass


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retained: bool
    t: float


class BrokerSpy(_PahoClient):
    """Subscribes to ``#`` and records every message the broker routes."""

    def __init__(self, broker: Mosquitto) -> None:
        super().__init__(broker, f"spy-{os.getpid()}-{id(self)}")
        self.messages: list[Seen] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def on_connect(self) -> None:
        self.client.subscribe("#", qos=1)

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._cond:
            self.messages.append(Seen(topic, payload, retained, time.monotonic()))
            self._cond.notify_all()

    def topics(self) -> set[str]:
        with self._lock:
            return {m.topic for m in self.messages}

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, pred: Callable[[Seen], bool], timeout: float = 5.0) -> Seen | None:
        """The first recorded message satisfying ``pred`` (waiting up to ``timeout`` s), else None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


# --------------------------------------------------------------------------- device simulators

Out = tuple[str, str, bool]  # topic, payload, retain


@dataclass
class SimDevice:
    """Base of a simulated device: its discovery config, command topics and reaction to commands."""

    name: str
    discovery_topic: str = ""
    discovery: dict[str, Any] | None = None
    commands: list[tuple[str, str]] = field(default_factory=list)
    delay_s: float = 0.0  # answer this long after a command

    def command_topics(self) -> list[str]:
        return []

    def state_messages(self) -> list[Out]:
        """Messages that describe the current state (published on connect and after commands)."""
        return []

    def handle(self, topic: str, payload: str) -> list[Out]:
        """Apply a command; return what to publish in answer."""
        return self.state_messages()

    def discovery_messages(self) -> list[tuple[str, dict[str, Any]]]:
        """Every discovery config this device announces (retained): (topic, payload)."""
        return [(self.discovery_topic, self.discovery)] if self.discovery_topic and self.discovery is not None else []

    def topics_published(self) -> set[str]:
        topics = {t for t, _, _ in self.state_messages()}
        topics |= {t for t, _ in self.discovery_messages()}
        if self.discovery_topic:
            topics.add(self.discovery_topic)
        return topics


def _hex_to_xy(rgb: tuple[int, int, int]) -> tuple[float, float]:
    def lin(c: float) -> float:
        c /= 255.0
        return ((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92

    r, g, b = (lin(v) for v in rgb)
    x = r * 0.4124 + g * 0.3576 + b * 0.1805
    y = r * 0.2126 + g * 0.7152 + b * 0.0722
    z = r * 0.0193 + g * 0.1192 + b * 0.9505
    s = x + y + z
    return (0.3127, 0.329) if s == 0 else (round(x / s, 4), round(y / s, 4))


class Z2MLightSim(SimDevice):
    """A Zigbee2MQTT light: JSON schema, discovery with full key names, xy colour, brightness 0-254."""

    def __init__(self, name: str, ieee: str, area: str = "", *, prefix: str = "homeassistant") -> None:
        super().__init__(name)
        self.base = f"zigbee2mqtt/{name}"
        self.state = {"state": "OFF", "brightness": 254, "color_mode": "xy", "color": {"x": 0.3127, "y": 0.329}}
        self.discovery_topic = f"{prefix}/light/{ieee}/light/config"
        dev: dict[str, Any] = {"identifiers": [f"zigbee2mqtt_{ieee}"], "manufacturer": "IKEA", "model": "LED1545G12", "name": name}
        if area:
            dev["suggested_area"] = area
        self.discovery = {
            "availability": [{"topic": "zigbee2mqtt/bridge/state", "value_template": "{{ value_json.state }}"}],
            "brightness": True,
            "brightness_scale": 254,
            "command_topic": f"{self.base}/set",
            "device": dev,
            "name": None,
            "object_id": name.lower().replace(" ", "_"),
            "origin": {"name": "Zigbee2MQTT", "sw": "1.40.0"},
            "schema": "json",
            "state_topic": self.base,
            "supported_color_modes": ["xy"],
            "unique_id": f"{ieee}_light_zigbee2mqtt",
        }

    def command_topics(self) -> list[str]:
        return [f"{self.base}/set"]

    def state_messages(self) -> list[Out]:
        return [("zigbee2mqtt/bridge/state", json.dumps({"state": "online"}), True), (self.base, json.dumps(self.state), False)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        cmd = json.loads(payload)
        st = cmd.get("state")
        if st == "TOGGLE":
            st = "OFF" if self.state["state"] == "ON" else "ON"
        if st in ("ON", "OFF"):
            self.state["state"] = st
        if "brightness" in cmd:
            self.state["brightness"] = int(cmd["brightness"])
            self.state["state"] = "ON" if cmd["brightness"] else "OFF"
        color = cmd.get("color")
        if isinstance(color, dict):
            if "x" in color:
                self.state["color"] = {"x": color["x"], "y": color["y"]}
            elif "r" in color:
                x, y = _hex_to_xy((color["r"], color["g"], color["b"]))
                self.state["color"] = {"x": x, "y": y}
            elif "hex" in color:
                h = color["hex"].lstrip("#")
                x, y = _hex_to_xy((int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)))
                self.state["color"] = {"x": x, "y": y}
        return [(self.base, json.dumps(self.state), False)]


class HaLightSim(SimDevice):
    """A Home Assistant default-schema light announced with abbreviations and a '~' base topic."""

    def __init__(self, name: str, base: str, area: str = "", *, prefix: str = "homeassistant", node: str = "esp") -> None:
        super().__init__(name)
        self.base = base
        self.on = False
        self.level = 100  # device scale 0-100
        obj = name.lower().replace(" ", "_")
        self.discovery_topic = f"{prefix}/light/{node}/{obj}/config"
        self.discovery = {
            "~": base,
            "name": None,
            "uniq_id": f"{node}_{obj}",
            "cmd_t": "~/set",
            "stat_t": "~/state",
            "bri_cmd_t": "~/brightness/set",
            "bri_stat_t": "~/brightness",
            "bri_scl": 100,
            "pl_on": "on",
            "pl_off": "off",
            "avty_t": "~/status",
            "dev": {"name": name, "ids": [f"{node}-{obj}"], "sa": area, "mf": "espressif"},
        }

    def command_topics(self) -> list[str]:
        return [f"{self.base}/set", f"{self.base}/brightness/set"]

    def state_messages(self) -> list[Out]:
        return [
            (f"{self.base}/status", "online", True),
            (f"{self.base}/state", "on" if self.on else "off", True),
            (f"{self.base}/brightness", str(self.level), True),
        ]

    def handle(self, topic: str, payload: str) -> list[Out]:
        if topic.endswith("/brightness/set"):
            self.level = int(float(payload))
            self.on = self.level > 0
            return [(f"{self.base}/brightness", str(self.level), True), (f"{self.base}/state", "on" if self.on else "off", True)]
        if payload in ("on", "off"):
            self.on = payload == "on"
        return [(f"{self.base}/state", "on" if self.on else "off", True)]


class SwitchSim(SimDevice):
    """A plain switch: ON/OFF on <base>/set, state on <base>/state. ``liar`` reports the opposite."""

    def __init__(self, name: str, base: str, area: str = "", *, prefix: str = "homeassistant", liar: bool = False,
                 discovered: bool = True) -> None:
        super().__init__(name)
        self.base = base
        self.on = False
        self.liar = liar
        obj = name.lower().replace(" ", "_")
        if discovered:
            self.discovery_topic = f"{prefix}/switch/{obj}/config"
            self.discovery = {"name": name, "uniq_id": f"sw_{obj}", "cmd_t": f"{base}/set", "stat_t": f"{base}/state",
                              "dev": {"name": name, "ids": [f"sw-{obj}"], "sa": area}}

    def command_topics(self) -> list[str]:
        return [f"{self.base}/set"]

    def state_messages(self) -> list[Out]:
        return [(f"{self.base}/state", "ON" if self.on else "OFF", True)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        if payload in ("ON", "OFF"):
            self.on = (payload == "ON") != self.liar
        return self.state_messages()


class DeadSim(SwitchSim):
    """A switch that is announced but never answers a command."""

    def handle(self, topic: str, payload: str) -> list[Out]:
        return []


class CoverSim(SimDevice):
    """A cover with position: reports opening/closing at once, then the end state after ``travel_s``."""

    def __init__(self, name: str, base: str, area: str = "", *, prefix: str = "homeassistant", travel_s: float = 0.2,
                 device_class: str = "") -> None:
        super().__init__(name)
        self.base = base
        self.position = 0
        self.travel_s = travel_s
        obj = name.lower().replace(" ", "_")
        self.discovery_topic = f"{prefix}/cover/{obj}/config"
        self.discovery = {
            "name": name, "uniq_id": f"cv_{obj}", "cmd_t": f"{base}/set", "stat_t": f"{base}/state",
            "pos_t": f"{base}/position", "set_pos_t": f"{base}/position/set",
            "pl_open": "OPEN", "pl_cls": "CLOSE", "pl_stop": "STOP",
            "dev": {"name": name, "ids": [f"cv-{obj}"], "sa": area},
        }
        if device_class:
            self.discovery["dev_cla"] = device_class
        self._target: int | None = None

    def command_topics(self) -> list[str]:
        return [f"{self.base}/set", f"{self.base}/position/set"]

    def _state_word(self) -> str:
        return "open" if self.position > 0 else "closed"

    def state_messages(self) -> list[Out]:
        return [(f"{self.base}/state", self._state_word(), True), (f"{self.base}/position", str(self.position), True)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        if topic.endswith("/position/set"):
            target = int(float(payload))
        elif payload == "OPEN":
            target = 100
        elif payload == "CLOSE":
            target = 0
        else:  # STOP
            self._target = None
            return [(f"{self.base}/state", "stopped", True)]
        moving = "opening" if target > self.position else "closing"
        self._target = target
        return [(f"{self.base}/state", moving, True)]

    def finish(self) -> list[Out]:
        """The end of the travel (the simulator calls it ``travel_s`` after a move)."""
        if self._target is None:
            return []
        self.position, self._target = self._target, None
        return self.state_messages()


class LockSim(SimDevice):
    def __init__(self, name: str, base: str, area: str = "", *, prefix: str = "homeassistant") -> None:
        super().__init__(name)
        self.base = base
        self.locked = True
        obj = name.lower().replace(" ", "_")
        self.discovery_topic = f"{prefix}/lock/{obj}/config"
        self.discovery = {"name": name, "uniq_id": f"lk_{obj}", "cmd_t": f"{base}/set", "stat_t": f"{base}/state",
                          "pl_lock": "LOCK", "pl_unlk": "UNLOCK", "stat_locked": "LOCKED", "stat_unlocked": "UNLOCKED",
                          "dev": {"name": name, "ids": [f"lk-{obj}"], "sa": area}}

    def command_topics(self) -> list[str]:
        return [f"{self.base}/set"]

    def state_messages(self) -> list[Out]:
        return [(f"{self.base}/state", "LOCKED" if self.locked else "UNLOCKED", True)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        if payload in ("LOCK", "UNLOCK"):
            self.locked = payload == "LOCK"
        return self.state_messages()


class ClimateSim(SimDevice):
    def __init__(self, name: str, base: str, area: str = "", *, prefix: str = "homeassistant") -> None:
        super().__init__(name)
        self.base = base
        self.mode = "heat"
        self.target = 20.0
        self.current = 19.5
        obj = name.lower().replace(" ", "_")
        self.discovery_topic = f"{prefix}/climate/{obj}/config"
        self.discovery = {
            "name": name, "uniq_id": f"cl_{obj}",
            "temp_cmd_t": f"{base}/target/set", "temp_stat_t": f"{base}/state", "temp_stat_tpl": "{{ value_json.target }}",
            "mode_cmd_t": f"{base}/mode/set", "mode_stat_t": f"{base}/state", "mode_stat_tpl": "{{ value_json['mode'] }}",
            "curr_temp_t": f"{base}/state", "curr_temp_tpl": "{{ value_json.current | float }}",
            "modes": ["off", "heat", "auto"], "min_temp": 7, "max_temp": 28, "temp_step": 0.5,
            "dev": {"name": name, "ids": [f"cl-{obj}"], "sa": area},
        }

    def command_topics(self) -> list[str]:
        return [f"{self.base}/target/set", f"{self.base}/mode/set"]

    def state_messages(self) -> list[Out]:
        return [(f"{self.base}/state", json.dumps({"target": self.target, "mode": self.mode, "current": self.current}), True)]

    def handle(self, topic: str, payload: str) -> list[Out]:
        if topic.endswith("/target/set"):
            self.target = float(payload)
        elif payload in ("off", "heat", "auto"):
            self.mode = payload
        return self.state_messages()


class DeviceSimulator(_PahoClient):
    """Runs simulated devices on one paho client; records the commands they receive."""

    def __init__(self, broker: Mosquitto, *, quickack: bool = True) -> None:
        super().__init__(broker, f"devsim-{os.getpid()}-{id(self)}", quickack=quickack)
        self.devices: list[SimDevice] = []
        self.received: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._timers: list[threading.Timer] = []
        self.mute = False  # True: receive but never answer (a network partition of the devices)

    def add(self, *devices: SimDevice) -> None:
        with self._lock:
            self.devices.extend(devices)
        if self.client.is_connected():
            mids = [mid for dev in devices for mid in self._announce(dev)]
            self.wait_subscribed(mids)  # (a command sent right after must not beat the subscription)

    def remove(self, dev: SimDevice) -> None:
        """Withdraw a device: empty retained discovery config, as Home Assistant expects."""
        with self._lock:
            self.devices.remove(dev)
        for topic in {t for t, _ in dev.discovery_messages()} | ({dev.discovery_topic} if dev.discovery_topic else set()):
            self.client.publish(topic, b"", qos=1, retain=True)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    def topics_published(self) -> set[str]:
        with self._lock:
            out: set[str] = set()
            for d in self.devices:
                out |= d.topics_published()
            return out

    def command_topics(self) -> set[str]:
        with self._lock:
            return {t for d in self.devices for t in d.command_topics()}

    def on_connect(self) -> None:
        with self._lock:
            devices = list(self.devices)
        for dev in devices:
            self._announce(dev)

    def _announce(self, dev: SimDevice) -> list[int]:
        """Subscribe to the device's command topics and publish its discovery and state; the
        subscriptions' message ids."""
        subscribed = [self.client.subscribe(topic, qos=1) for topic in dev.command_topics()]
        mids = [mid for rc, mid in subscribed if rc == paho.MQTT_ERR_SUCCESS]
        for topic, config in dev.discovery_messages():
            self.client.publish(topic, json.dumps(config) if config else b"", qos=1, retain=True)
        for topic, payload, retain in dev.state_messages():
            self.client.publish(topic, payload, qos=1, retain=retain)
        return mids

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        text = payload.decode("utf-8", "replace")
        with self._lock:
            self.received.append((topic, text))
            targets = [d for d in self.devices if topic in d.command_topics()]
        if self.mute or retained:
            return
        for dev in targets:
            dev.commands.append((topic, text))
            try:
                out = dev.handle(topic, text)
            except Exception:  # a malformed command: a real device ignores it
                continue
            self._send(out, dev.delay_s)
            if isinstance(dev, CoverSim):
                t = threading.Timer(dev.delay_s + dev.travel_s, lambda d=dev: self._send(d.finish(), 0))
                t.daemon = True
                self._timers.append(t)
                t.start()

    def _send(self, out: list[Out], delay: float) -> None:
        def go() -> None:
            for topic, payload, retain in out:
                self.client.publish(topic, payload, qos=1, retain=retain)

        if delay:
            t = threading.Timer(delay, go)
            t.daemon = True
            self._timers.append(t)
            t.start()
        else:
            go()

    def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        super().stop()


@dataclass
class StandardDevices:
    """The usual cast of :func:`add_standard_devices`."""

    kitchen: Z2MLightSim
    lamp: HaLightSim
    fan: SwitchSim
    blinds: CoverSim
    garage: CoverSim
    front_door: LockSim
    thermostat: ClimateSim
    dead: DeadSim
    liar: SwitchSim


def add_standard_devices(sim: DeviceSimulator, prefix: str = "homeassistant") -> StandardDevices:
    """Kitchen light (Z2M JSON), living room lamp (HA default schema, '~'), coffee machine (switch),
    living room blinds (cover), garage door (cover, device_class garage), front door (lock),
    hallway thermostat (climate), porch light (never answers), heater plug (answers the opposite)."""
    devs = StandardDevices(
        kitchen=Z2MLightSim("Kitchen light", "0x00158d0001a2b3c4", "Kitchen", prefix=prefix),
        lamp=HaLightSim("Living room lamp", "home/livingroom/lamp", "Living room", prefix=prefix),
        fan=SwitchSim("Coffee machine", "home/kitchen/coffee", "Kitchen", prefix=prefix),
        blinds=CoverSim("Living room blinds", "home/livingroom/blinds", "Living room", prefix=prefix),
        garage=CoverSim("Garage door", "home/garage/door", "Garage", prefix=prefix, device_class="garage"),
        front_door=LockSim("Front door", "home/hall/frontdoor", "Hall", prefix=prefix),
        thermostat=ClimateSim("Hallway thermostat", "home/hall/thermostat", "Hall", prefix=prefix),
        dead=DeadSim("Porch light", "home/porch/light", "Porch", prefix=prefix),
        liar=SwitchSim("Heater plug", "home/office/heater", "Office", prefix=prefix, liar=True),
    )
    sim.add(*(getattr(devs, f) for f in devs.__dataclass_fields__))
    return devs


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running mosquitto on a free loopback port (anonymous, no persistence)."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mqtt_spy(mosquitto: Mosquitto) -> Iterator[BrokerSpy]:
    """Every message routed by the test broker."""
    spy = BrokerSpy(mosquitto)
    spy.start()
    try:
        yield spy
    finally:
        spy.stop()


@pytest.fixture
def device_sim(mosquitto: Mosquitto) -> Iterator[DeviceSimulator]:
    """An empty device simulator connected to the test broker."""
    sim = DeviceSimulator(mosquitto)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


__all__ = [
    "BrokerSpy",
    "ClimateSim",
    "CoverSim",
    "DeadSim",
    "DeviceSimulator",
    "HaLightSim",
    "LockSim",
    "Mosquitto",
    "SimDevice",
    "StandardDevices",
    "SwitchSim",
    "TlsFiles",
    "HomeRig",
    "Z2MLightSim",
    "add_standard_devices",
    "free_port",
    "make_tls_files",
]


# --------------------------------------------------------------------------- the speaker side


class HomeRig:
    """The daemon's MQTT side as the app wires it: MqttConnection + HomeDevices + ToolRegistry.

    ``async with HomeRig(broker, devices=..., **mqtt_keys) as rig`` starts and stops it; ``rig.call``
    runs a tool like the assistant does and returns its output dict.
    """

    def __init__(self, broker: Mosquitto, *, devices: tuple[Any, ...] = (), device_id: str = "kitchen", **mqtt: Any) -> None:
        from device.config import MqttConfig, Settings

        mqtt.setdefault("command_timeout_s", 1.0)
        self.broker = broker
        self.cfg = MqttConfig(host=broker.host, port=broker.port, device_id=device_id, **mqtt)
        self.settings = Settings(path=Path("speaker.toml"), mqtt=self.cfg, devices=devices, present=frozenset({"mqtt"}))
        self.availability_topic = f"{self.cfg.topic_prefix}/{device_id}/availability"
        self.published: list[tuple[str, bytes | str]] = []

    async def __aenter__(self) -> "HomeRig":
        import asyncio

        from device.mqtt import MqttConnection
        from device.tools.home import HomeDevices
        from device.tools.registry import ToolRegistry

        self.mqtt = MqttConnection(self.cfg, asyncio.get_running_loop(), availability_topic=self.availability_topic,
                                   min_reconnect_s=0.1, max_reconnect_s=0.5)
        original = self.mqtt.publish

        async def recording_publish(topic: str, payload: str | bytes, qos: int = 0, retain: bool = False, **kw: Any) -> None:
            self.published.append((topic, payload))
            await original(topic, payload, qos, retain, **kw)

        self.mqtt.publish = recording_publish  # type: ignore[method-assign]
        self.tools = ToolRegistry()
        self.home = HomeDevices(self.settings, self.mqtt, self.tools)
        await self.home.start()
        await self.mqtt.start()
        if not await self.mqtt.wait_connected(5):
            raise RuntimeError(f"speaker could not connect to the test broker: {self.broker.log_tail()}")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.home.stop()
        await self.mqtt.stop()

    async def call(self, name: str, args: Any = None, *, raw: str | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
        result = await self.tools.call(name, raw if raw is not None else json.dumps(args or {}), timeout_s)
        json.dumps(result.output)  # what the session sends must serialise
        return result.output

    async def wait_devices(self, *names: str, timeout: float = 5.0) -> None:
        """Wait until every named device is known (discovery is asynchronous)."""
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            missing = [n for n in names if self.home.registry.find(n).device is None]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"devices never discovered: {missing}; known: {self.home.registry.names()}")
            await asyncio.sleep(0.02)

    async def wait_state(self, name: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            dev = self.home.registry.find(name).device
            st = dev.snapshot() if dev is not None else {}
            if dev is not None and pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: state never satisfied the condition; last {st}")
            await asyncio.sleep(0.02)
