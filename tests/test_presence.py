"""The speaker as an MQTT citizen (issue 7): HA discovery, plain command/state topics, events.

A real mosquitto on a free loopback port, the real MqttConnection, a fake assistant implementing
the Assistant API (the daemon end-to-end tests live with the lead).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device import __version__
from device.config import MqttConfig, Settings
from device.events import (
    AnnouncementEvent,
    AudioHealth,
    ConversationEnded,
    DndChanged,
    EnabledChanged,
    ErrorEvent,
    EventBus,
    MuteChanged,
    ResponseEvent,
    RingStarted,
    RingStopped,
    State,
    StateChanged,
    ToolCalled,
    Transcript,
    VolumeChanged,
    WakeDetected,
)
from device.mqtt import MqttConnection
from device.presence import Presence, Topics
from tests.rig.broker import Mosquitto

# ------------------------------------------------------------------ rig: an observer client (the broker is tests/rig/broker.py)


class Observer:
    """Another MQTT client (Home Assistant, Node-RED): records every message, publishes commands."""

    def __init__(self, port: int, topic_filter: str = "#") -> None:
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self._ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{uuid.uuid4().hex[:8]}")

        def on_connect(c: paho.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
            c.subscribe(topic_filter, qos=1)

        def on_subscribe(*_a: Any) -> None:
            self._ready.set()

        def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            with self._lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain), time.perf_counter()))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(5):
            raise RuntimeError("observer could not subscribe")

    def of(self, topic: str) -> list[tuple[bytes, bool]]:
        with self._lock:
            return [(p, r) for t, p, r, _ in self.messages if t == topic]

    def last(self, topic: str) -> bytes | None:
        got = self.of(topic)
        return got[-1][0] if got else None

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    async def wait(self, pred: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out after {timeout} s waiting for {what or pred}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------ the fake assistant


class FakeAssistant:
    """Implements the Assistant API presence uses; publishes the events the real one would."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.state = State.IDLE
        self.muted = False
        self.volume = 50
        self.calls: list[tuple[Any, ...]] = []
        self.called = asyncio.Event()

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        self.called.set()

    async def set_muted(self, muted: bool, source: str) -> None:
        self._record("set_muted", muted, source)
        if muted != self.muted:
            self.muted = muted
            self.bus.publish(MuteChanged(muted=muted, source=source))

    async def set_volume(self, volume: int, source: str) -> None:
        self._record("set_volume", volume, source)
        if volume != self.volume:
            self.volume = volume
            self.bus.publish(VolumeChanged(volume=volume, source=source))

    async def announce(self, text: str, *, chime: bool = True, then_listen: bool = False) -> None:
        self._record("announce", text, chime, then_listen)

    async def start_conversation(self, prompt: str | None = None, source: str = "api") -> None:
        self._record("start_conversation", prompt, source)

    async def ask(self, text: str, source: str = "api") -> None:
        self._record("ask", text, source)

    async def stop_conversation(self, source: str = "api") -> None:
        self._record("stop_conversation", source)

    enabled = True
    dnd = False

    async def set_enabled(self, enabled: bool, source: str) -> None:
        self._record("set_enabled", enabled, source)
        if enabled != self.enabled:
            self.enabled = enabled
            self.bus.publish(EnabledChanged(enabled=enabled, source=source))

    async def set_dnd(self, on: bool, source: str) -> None:
        self._record("set_dnd", on, source)
        if on != self.dnd:
            self.dnd = on
            self.bus.publish(DndChanged(on=on, source=source))


def make_settings(port: int, device_id: str = "kitchen", **mqtt: Any) -> Settings:
    cfg = MqttConfig(host="127.0.0.1", port=port, device_id=device_id, **mqtt)
    return Settings(path=Path("speaker.toml"), mqtt=cfg, present=frozenset({"mqtt"}))


class Speaker:
    """Presence + MqttConnection + fake assistant, as the daemon wires them."""

    def __init__(self, port: int, device_id: str = "kitchen") -> None:
        self.settings = make_settings(port, device_id)
        self.topics = Topics.of(self.settings)
        self.bus = EventBus()
        self.assistant = FakeAssistant(self.bus)
        self.mqtt = MqttConnection(
            self.settings.mqtt, asyncio.get_running_loop(), availability_topic=self.topics.availability,
            min_reconnect_s=1, max_reconnect_s=1,
        )
        self.presence = Presence(self.settings, self.mqtt, self.bus, self.assistant)

    async def start(self) -> None:
        self.bus.bind(asyncio.get_running_loop())
        await self.mqtt.start()
        assert await self.mqtt.wait_connected(5), "speaker did not connect to the test broker"
        await self.presence.start()
        # The broker handles one client's packets in order: once this publish is acknowledged, the
        # SUBSCRIBEs sent before it are live, so a test's first command cannot be lost.
        await self.mqtt.publish(f"test/{uuid.uuid4().hex[:8]}/sync", b"", qos=1, wait_ack=True)

    async def stop(self) -> None:
        await self.presence.stop()
        await self.mqtt.stop()


@pytest.fixture
async def speaker(mosquitto: Mosquitto) -> AsyncIterator[Speaker]:
    sp = Speaker(mosquitto.port)
    await sp.start()
    try:
        yield sp
    finally:
        await sp.stop()


@pytest.fixture
def observer(mosquitto: Mosquitto) -> Iterator[Observer]:
    obs = Observer(mosquitto.port)
    try:
        yield obs
    finally:
        obs.close()


# ------------------------------------------------------------------ Home Assistant's documented schema
# Keys of each MQTT platform as documented on home-assistant.io/integrations/<component>.mqtt and
# in homeassistant/components/mqtt/{schemas,config,<component>}.py. HA drops or rejects anything else.

HA_COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "payload_available", "payload_not_available", "device", "origin", "enabled_by_default",
    "entity_category", "entity_picture", "icon", "json_attributes_topic", "json_attributes_template",
    "object_id", "default_entity_id", "unique_id", "qos", "encoding", "group",
}
HA_COMPONENT = {
    "switch": {"command_topic", "command_template", "device_class", "name", "optimistic", "payload_off",
               "payload_on", "retain", "state_off", "state_on", "state_topic", "value_template"},
    "number": {"command_topic", "command_template", "device_class", "max", "min", "mode", "name", "optimistic",
               "payload_reset", "retain", "state_topic", "step", "unit_of_measurement", "value_template"},
    "sensor": {"state_topic", "value_template", "device_class", "expire_after", "force_update",
               "last_reset_value_template", "name", "options", "suggested_display_precision", "state_class",
               "unit_of_measurement"},
    "button": {"command_topic", "command_template", "device_class", "name", "payload_press", "retain"},
    "notify": {"command_topic", "command_template", "name", "retain"},
    "event": {"state_topic", "value_template", "device_class", "event_types", "name"},
}
HA_REQUIRED = {
    "switch": {"command_topic"}, "number": {"command_topic"}, "sensor": {"state_topic"},
    "button": {"command_topic"}, "notify": {"command_topic"}, "event": {"state_topic", "event_types"},
}
HA_DEVICE = {"identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version",
             "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url"}
HA_ORIGIN = {"name", "sw_version", "support_url"}
HA_STATE_CLASSES = {"measurement", "total", "total_increasing"}


def check_ha_entity(component: str, cfg: dict[str, Any]) -> None:
    """Assert one discovery payload against HA's documented rules for its component."""
    unknown = set(cfg) - HA_COMMON - HA_COMPONENT[component]
    assert not unknown, f"{component}: keys HA does not document: {sorted(unknown)}"
    missing = HA_REQUIRED[component] - set(cfg)
    assert not missing, f"{component}: required keys missing: {sorted(missing)}"
    assert not ("availability" in cfg and "availability_topic" in cfg), "availability and availability_topic exclude each other"
    for key in ("name", "unique_id", "icon", "command_topic", "state_topic", "availability_topic", "payload_on",
                "payload_off", "payload_press", "payload_available", "payload_not_available", "value_template",
                "unit_of_measurement", "device_class", "state_class", "mode"):
        if key in cfg:
            assert isinstance(cfg[key], str) and cfg[key], f"{component}.{key} must be a non-empty string"
    for key in ("command_topic", "state_topic", "availability_topic"):
        if key in cfg:
            assert "+" not in cfg[key] and "#" not in cfg[key] or key == "state_topic"
    if "icon" in cfg:
        assert cfg["icon"].startswith("mdi:")
    dev = cfg["device"]
    assert set(dev) <= HA_DEVICE, f"device keys HA does not document: {sorted(set(dev) - HA_DEVICE)}"
    assert dev.get("identifiers") or dev.get("connections"), "device needs identifiers or connections"
    assert all(isinstance(i, str) for i in dev["identifiers"])
    org = cfg["origin"]
    assert set(org) <= HA_ORIGIN and isinstance(org.get("name"), str) and org["name"]
    if "support_url" in org:
        assert org["support_url"].startswith(("http://", "https://"))
    if component == "sensor":
        if "options" in cfg:
            assert cfg.get("device_class") == "enum", "options are only allowed on enum sensors"
            assert cfg["options"] and all(isinstance(o, str) for o in cfg["options"])
        if cfg.get("device_class") == "enum":
            assert "state_class" not in cfg and "unit_of_measurement" not in cfg, "enum sensors take no state_class/unit"
        if "state_class" in cfg:
            assert cfg["state_class"] in HA_STATE_CLASSES
    if component == "number":
        assert isinstance(cfg["min"], (int, float)) and isinstance(cfg["max"], (int, float)) and cfg["min"] < cfg["max"]
        assert cfg.get("step", 1) >= 0.001 and cfg.get("mode", "auto") in {"auto", "box", "slider"}
    if component == "event":
        assert cfg["event_types"] and all(isinstance(e, str) for e in cfg["event_types"])


def discovery_configs(obs: Observer, prefix: str = "homeassistant") -> dict[str, tuple[dict[str, Any], bool]]:
    out = {}
    for topic, payload, retained, _ in list(obs.messages):
        if topic.startswith(prefix + "/") and topic.endswith("/config"):
            out[topic] = (json.loads(payload), retained)
    return out


# ------------------------------------------------------------------ tests


async def test_discovery_announces_one_device_with_every_entity_per_ha_schema(speaker: Speaker, mosquitto: Mosquitto) -> None:
    # Wait until the speaker has announced itself (it does so right after connecting) ...
    first = Observer(mosquitto.port, "homeassistant/#")
    try:
        await first.wait(lambda: len(discovery_configs(first)) >= 16, what="the announcement")
    finally:
        first.close()
    # ... then a client subscribing later gets the retained configs, as HA does at its start.
    obs = Observer(mosquitto.port, "homeassistant/#")
    try:
        configs = await obs.wait(lambda: len(c := discovery_configs(obs)) >= 16 and c, what="16 discovery configs")
    finally:
        obs.close()
    by_object = {t.split("/")[-2]: (t.split("/")[1], cfg, retained) for t, (cfg, retained) in configs.items()}
    assert set(by_object) == {"mute", "volume", "state", "last_heard", "last_said", "tokens_conversation",
                              "tokens_total", "start_conversation", "stop_conversation", "announce", "ask",
                              "assistant", "enabled", "dnd", "audio_processing", "echo_canceller"}
    expected_component = {"mute": "switch", "volume": "number", "state": "sensor", "last_heard": "sensor",
                          "last_said": "sensor", "tokens_conversation": "sensor", "tokens_total": "sensor",
                          "start_conversation": "button", "stop_conversation": "button", "announce": "notify",
                          "ask": "notify", "assistant": "event", "enabled": "switch", "dnd": "switch",
                          "audio_processing": "sensor", "echo_canceller": "sensor"}
    t = speaker.topics
    unique_ids = set()
    for obj, (component, cfg, retained) in by_object.items():
        assert component == expected_component[obj]
        assert retained, f"{obj}: discovery config must be retained"
        check_ha_entity(component, cfg)
        unique_ids.add(cfg["unique_id"])
        assert cfg["availability_topic"] == t.availability
        assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
        assert cfg["device"] == by_object["mute"][1]["device"], "all entities belong to one device"
    assert len(unique_ids) == 16
    dev = by_object["mute"][1]["device"]
    assert dev["identifiers"] == ["realtime_speaker_kitchen"] and dev["name"] == "Kitchen speaker"
    assert dev["sw_version"] == __version__ and dev["model"] and dev["manufacturer"]
    assert by_object["mute"][1]["origin"]["sw_version"] == __version__

    mute = by_object["mute"][1]
    assert (mute["command_topic"], mute["state_topic"]) == (t.mute_set, t.mute)
    vol = by_object["volume"][1]
    assert (vol["min"], vol["max"], vol["step"], vol["command_topic"]) == (0, 100, 1, t.volume_set)
    state = by_object["state"][1]
    assert state["options"] == ["idle", "listening", "thinking", "speaking", "follow_up", "muted", "error", "ringing",
                                "disabled"]
    assert by_object["tokens_total"][1]["state_class"] == "total_increasing"
    assert by_object["announce"][1]["command_topic"] == t.announce
    assert by_object["start_conversation"][1]["command_topic"] == t.conversation_start
    assert by_object["assistant"][1]["event_types"] == ["wake_detected", "conversation_ended", "error"]
    # How the microphone's processing fares: diagnostics, off the device's main card in HA.
    load, echo = by_object["audio_processing"][1], by_object["echo_canceller"][1]
    assert load["state_topic"] == echo["state_topic"] == t.audio
    assert load["entity_category"] == echo["entity_category"] == "diagnostic"
    assert (load["unit_of_measurement"], load["state_class"]) == ("%", "measurement")
    assert echo["options"] == ["off", "learning", "settled"]


async def test_state_topics_are_retained_at_start(speaker: Speaker, observer: Observer) -> None:
    t = speaker.topics
    await observer.wait(lambda: observer.of(t.volume), what="the first state messages")
    late = Observer(speaker.settings.mqtt.port)
    try:
        await late.wait(lambda: late.of(t.volume), what="retained volume")
        assert late.of(t.availability) == [(b"online", True)]
        assert late.of(t.state) == [(b"idle", True)]
        assert late.of(t.mute) == [(b"OFF", True)]
        assert late.of(t.volume) == [(b"50", True)]
    finally:
        late.close()


async def test_reannounced_when_home_assistant_comes_online(speaker: Speaker, observer: Observer) -> None:
    await observer.wait(lambda: len(discovery_configs(observer)) == 16)
    await asyncio.sleep(0.3)
    observer.clear()
    observer.publish("homeassistant/status", "online")
    configs = await observer.wait(lambda: len(c := discovery_configs(observer)) == 16 and c, what="re-announcement")
    assert all(retained is False for _, retained in configs.values())  # live delivery, not replay
    await observer.wait(lambda: observer.of(speaker.topics.availability))
    observer.clear()
    observer.publish("homeassistant/status", "offline")
    await asyncio.sleep(0.3)
    assert not discovery_configs(observer), "HA going offline must not trigger an announcement"


async def test_mute_commands(speaker: Speaker, observer: Observer) -> None:
    t, a = speaker.topics, speaker.assistant
    for payload, want in [("ON", True), ("off", False), ("true", True), ("FALSE", False), ("1", True), ("0", False)]:
        observer.publish(t.mute_set, payload)
        await observer.wait(lambda: a.calls and a.calls[-1] == ("set_muted", want, "mqtt"), what=f"mute {payload}")
        await observer.wait(lambda: observer.last(t.mute) == (b"ON" if want else b"OFF"), what="mute state")
        a.calls.clear()
    observer.publish(t.mute_set, "toggle")
    await observer.wait(lambda: observer.last(t.mute) == b"ON", what="toggle -> ON")
    observer.publish(t.mute_set, "TOGGLE")
    await observer.wait(lambda: observer.last(t.mute) == b"OFF", what="toggle -> OFF")
    assert [c[1] for c in a.calls] == [True, False]


async def test_volume_commands(speaker: Speaker, observer: Observer) -> None:
    t, a = speaker.topics, speaker.assistant
    for payload, want in [("35", 35), (" 0 ", 0), ("100", 100), ("72.0", 72)]:
        observer.publish(t.volume_set, payload)
        await observer.wait(lambda: observer.last(t.volume) == str(want).encode(), what=f"volume {want}")
    assert [c for c in a.calls if c[0] == "set_volume"] == [("set_volume", v, "mqtt") for v in (35, 0, 100, 72)]


async def test_announce_and_conversation_start(speaker: Speaker, observer: Observer) -> None:
    t, a = speaker.topics, speaker.assistant
    await observer.wait(lambda: observer.of(t.state), what="the first state (published after the subscriptions)")
    observer.publish(t.announce, "The washing machine has finished.")
    observer.publish(t.announce, json.dumps({"text": "Dinner is ready", "chime": False, "then_listen": True}))
    observer.publish(t.announce, json.dumps({"text": "Gute Nacht, schlaf schön"}))
    observer.publish(t.conversation_start, "")
    observer.publish(t.conversation_start, "{}")  # what HA's button sends
    observer.publish(t.conversation_start, json.dumps({"prompt": "Ask whether to close the garage"}))
    await observer.wait(lambda: len(a.calls) == 6, what="six calls")
    assert a.calls == [
        ("announce", "The washing machine has finished.", True, False),
        ("announce", "Dinner is ready", False, True),
        ("announce", "Gute Nacht, schlaf schön", True, False),
        ("start_conversation", None, "mqtt"),
        ("start_conversation", None, "mqtt"),
        ("start_conversation", "Ask whether to close the garage", "mqtt"),
    ]


async def test_enabled_and_do_not_disturb_switches(speaker: Speaker, observer: Observer) -> None:
    t, a = speaker.topics, speaker.assistant
    await observer.wait(lambda: observer.of(t.enabled) and observer.of(t.dnd), what="initial enabled and dnd")
    assert observer.last(t.enabled) == b"ON" and observer.last(t.dnd) == b"OFF"
    observer.publish(t.enabled_set, "OFF")
    observer.publish(t.dnd_set, "toggle")
    await observer.wait(lambda: observer.last(t.enabled) == b"OFF" and observer.last(t.dnd) == b"ON", what="switched")
    assert a.calls == [("set_enabled", False, "mqtt"), ("set_dnd", True, "mqtt")]
    observer.publish(t.enabled_set, "maybe")  # logged and ignored
    observer.publish(t.enabled_set, "on")
    await observer.wait(lambda: observer.last(t.enabled) == b"ON", what="enabled again")
    assert len(a.calls) == 3


async def test_ask_and_stop(speaker: Speaker, observer: Observer) -> None:
    t, a = speaker.topics, speaker.assistant
    await observer.wait(lambda: observer.of(t.state), what="the first state (published after the subscriptions)")
    observer.publish(t.ask, "What is the time?")
    observer.publish(t.ask, json.dumps({"text": "Is the garage  door closed?"}))
    observer.publish(t.conversation_stop, "")
    observer.publish(t.conversation_stop, "{}")  # what HA's button sends
    await observer.wait(lambda: len(a.calls) == 4, what="four calls")
    assert sorted(a.calls) == sorted([
        ("ask", "What is the time?", "mqtt"),
        ("ask", "Is the garage door closed?", "mqtt"),
        ("stop_conversation", "mqtt"),
        ("stop_conversation", "mqtt"),
    ])


BAD_INPUTS = [
    ("mute/set", b"maybe"),
    ("mute/set", b""),
    ("mute/set", b"\xff\xfe"),
    ("volume/set", b"101"),
    ("volume/set", b"-1"),
    ("volume/set", b"loud"),
    ("volume/set", b"50.5"),
    ("volume/set", b"nan"),
    ("volume/set", b"1e400"),
    ("announce", b""),
    ("announce", b"   \n "),
    ("announce", b"x" * 1001),
    ("announce", b"\xc3\x28 invalid utf-8"),
    ("announce", b'{"text": "hi"'),
    ("announce", b'{"text": "hi", "volume": 3}'),
    ("announce", b'{"chime": true}'),
    ("announce", b'{"text": 42}'),
    ("announce", b'{"text": "hi", "chime": "yes"}'),
    ("announce", json.dumps({"text": "y" * 1001}).encode()),
    ("announce", b"z" * 70000),
    ("conversation/start", b"go"),
    ("conversation/start", b"[1, 2]"),
    ("conversation/start", b'{"prompt": "hi", "voice": "x"}'),
    ("conversation/start", b'{"prompt": ""}'),
    ("conversation/start", b'{"prompt": 5}'),
    ("conversation/stop", b"now"),
    ("conversation/stop", b'{"force": true}'),
    ("ask", b""),
    ("ask", b'{"question": "what time is it"}'),
    ("ask", b'{"text": 3}'),
]


async def test_bad_inputs_are_logged_with_the_topic_and_ignored(
    speaker: Speaker, observer: Observer, caplog: pytest.LogCaptureFixture
) -> None:
    t, a = speaker.topics, speaker.assistant
    caplog.set_level(logging.WARNING, logger="device.presence")
    for sub, payload in BAD_INPUTS:
        observer.publish(f"{t.base}/{sub}", payload)
    # A good command after all of them still works: nothing crashed, and it proves the bad ones were handled.
    observer.publish(t.volume_set, "33")
    await observer.wait(lambda: a.calls, what="the good command")
    assert a.calls == [("set_volume", 33, "mqtt")], "a bad input reached the assistant"
    ignored = [r.getMessage() for r in caplog.records if "ignored command on" in r.getMessage()]
    assert len(ignored) == len(BAD_INPUTS), "\n".join(ignored)
    for (sub, _), line in zip(BAD_INPUTS, ignored):
        assert f"on {t.base}/{sub}:" in line
    assert all(len(line) < 400 for line in ignored), "log lines must not echo huge payloads"


async def test_retained_commands_are_not_replayed(mosquitto: Mosquitto, observer: Observer) -> None:
    # A retained announce left on the broker must not be spoken at every (re)start.
    t = Topics.of(make_settings(mosquitto.port))
    observer.publish(t.announce, "stale retained announcement", retain=True)
    observer.publish(t.mute_set, "ON", retain=True)
    sp = Speaker(mosquitto.port)
    await sp.start()
    try:
        await asyncio.sleep(0.4)
        assert sp.assistant.calls == []
        observer.publish(t.announce, "fresh")
        await observer.wait(lambda: sp.assistant.calls, what="fresh announcement")
        assert sp.assistant.calls == [("announce", "fresh", True, False)]
    finally:
        await sp.stop()
        observer.publish(t.announce, b"", retain=True)
        observer.publish(t.mute_set, b"", retain=True)


async def test_events_state_and_texts_are_published(speaker: Speaker, observer: Observer) -> None:
    t, bus = speaker.topics, speaker.bus
    await observer.wait(lambda: observer.of(t.state))
    bus.publish(WakeDetected(model="hey_jarvis", score=0.97))
    bus.publish(StateChanged(old=State.IDLE, new=State.LISTENING))
    bus.publish(Transcript(role="user", text="turn on the kitchen light"))
    bus.publish(ToolCalled(name="control_device", arguments={"device": "kitchen light", "action": "turn_on"},
                           result={"ok": True, "state": {"state": "ON"}}, duration_s=0.042))
    bus.publish(Transcript(role="assistant", text="The kitchen light is on. " * 20))
    bus.publish(ConversationEnded(reason="idle", usage={"total_tokens": 1200, "input_tokens": 1000, "output_tokens": 200}))
    bus.publish(ErrorEvent(where="session", message="the server closed the connection"))
    bus.publish(AnnouncementEvent(text="hello", status="dropped", reason="muted"))
    bus.publish(ConversationEnded(reason="idle", usage={"total_tokens": 300, "input_tokens": 250, "output_tokens": 50}))
    bus.publish(ResponseEvent(response_id="resp_1", status="created"))
    bus.publish(ResponseEvent(response_id="resp_1", status="completed", usage={"total_tokens": 9}))
    bus.publish(RingStarted(ring_id="t1", kind="timer", text="The pasta timer is done"))
    bus.publish(RingStopped(ring_ids=("t1",), source="mqtt"))
    lines = await observer.wait(lambda: len(e := observer.of(t.event)) == 12 and e, what="12 event lines")
    await asyncio.sleep(0.1)
    assert len(observer.of(t.event)) == 12, "a state change is not an event line"
    events = [json.loads(p) for p, retained in lines]
    assert not any(retained for _, retained in lines)
    assert [e["event_type"] for e in events] == ["wake_detected", "transcript", "tool_call", "transcript",
                                                 "conversation_ended", "error", "announcement", "conversation_ended",
                                                 "response_created", "response_done", "ring_started", "ring_stopped"]
    assert events[9]["usage"] == {"total_tokens": 9} and events[9]["status"] == "completed" and "usage" not in events[8]
    assert events[10]["kind"] == "timer" and events[11]["ring_ids"] == ["t1"] and events[11]["source"] == "mqtt"
    assert all(e["device_id"] == "kitchen" and e["time"].endswith("Z") for e in events)
    assert events[0]["score"] == 0.97 and events[0]["model"] == "hey_jarvis"
    assert events[2]["result"] == {"ok": True, "state": {"state": "ON"}} and events[2]["duration_ms"] == 42
    assert events[4]["usage"]["total_tokens"] == 1200
    assert events[6] | {"time": ""} == {"event_type": "announcement", "device_id": "kitchen", "time": "",
                                         "status": "dropped", "text": "hello", "reason": "muted"}
    ha = [json.loads(p)["event_type"] for p, _ in observer.of(t.ha_event)]
    assert ha == ["wake_detected", "conversation_ended", "error", "conversation_ended"]
    assert observer.last(t.state) == b"listening"
    assert observer.last(t.last_heard) == b"turn on the kitchen light"
    said = observer.last(t.last_said).decode()
    assert said.startswith("The kitchen light is on.") and len(said) <= 255  # HA's limit for a sensor state
    assert json.loads(observer.last(t.tokens)) == {"conversation": 300, "total": 1500, "input": 250, "output": 50}
    # Retained: a client connecting later (HA restarting, a Node-RED flow deployed) gets the latest values.
    late = Observer(speaker.settings.mqtt.port)
    try:
        for topic in (t.state, t.last_heard, t.last_said, t.tokens):
            await late.wait(lambda: late.of(topic), what=f"retained {topic}")
            assert late.of(topic) == [(observer.last(topic), True)]
    finally:
        late.close()


async def test_token_total_carries_over_a_restart(mosquitto: Mosquitto, observer: Observer) -> None:
    sp = Speaker(mosquitto.port)
    await sp.start()
    sp.bus.publish(ConversationEnded(reason="idle", usage={"total_tokens": 700}))
    await observer.wait(lambda: observer.of(sp.topics.tokens), what="tokens")
    await sp.stop()
    sp2 = Speaker(mosquitto.port)
    await sp2.start()
    try:
        await asyncio.sleep(0.2)  # the retained count arrives
        sp2.bus.publish(ConversationEnded(reason="idle", usage={"total_tokens": 50}))
        await observer.wait(lambda: json.loads(observer.last(sp.topics.tokens) or b"{}").get("total") == 750,
                            what="total 750")
    finally:
        await sp2.stop()


async def test_availability_across_broker_restart_and_clean_stop(mosquitto: Mosquitto) -> None:
    sp = Speaker(mosquitto.port)
    await sp.start()
    t = sp.topics
    sp.bus.publish(AudioHealth(processing=0.092, stages=(("echo cancellation", 0.092), ("wake word", 0.031)),
                               echo="settled", echo_delay_ms=32.04, summary="-"))
    try:
        mosquitto.stop()
        await asyncio.sleep(0.3)
        assert not sp.mqtt.connected
        mosquitto.start()  # no persistence: the retained configs and states are gone with the old broker
        assert await sp.mqtt.wait_connected(10), "no reconnect"
        obs = Observer(mosquitto.port)
        try:
            await obs.wait(lambda: obs.last(t.availability) == b"online", what="online after reconnect")
            await obs.wait(lambda: len(discovery_configs(obs)) == 16, what="configs after reconnect")
            await obs.wait(lambda: obs.last(t.state) == b"idle", what="the state after reconnect")  # published after the configs
            # The microphone's figures too, as last measured (the new broker kept nothing).
            await obs.wait(lambda: obs.last(t.audio), what="the audio figures after reconnect")
            assert json.loads(obs.last(t.audio)) == {"processing": 9.2, "stages": {"echo cancellation": 9.2, "wake word": 3.1},
                                                     "echo_canceller": "settled", "echo_delay_ms": 32.0}
            # Commands work again after the reconnect (subscriptions renewed).
            obs.publish(t.mute_set, "ON")
            await obs.wait(lambda: obs.last(t.mute) == b"ON", what="mute after reconnect")
            await sp.stop()
            await obs.wait(lambda: obs.last(t.availability) == b"offline", what="offline on clean stop")
        finally:
            obs.close()
        late = Observer(mosquitto.port)
        try:
            await late.wait(lambda: late.of(t.availability) == [(b"offline", True)], what="retained offline")
        finally:
            late.close()
    finally:
        if sp.mqtt.connected:
            await sp.stop()


async def test_commands_while_stopped_do_nothing(speaker: Speaker, observer: Observer) -> None:
    await speaker.presence.stop()
    observer.publish(speaker.topics.announce, "nobody home")
    await asyncio.sleep(0.3)
    assert speaker.assistant.calls == []
    await speaker.presence.start()  # the fixture stops it again
