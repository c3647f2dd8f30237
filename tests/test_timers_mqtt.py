"""Timers on MQTT (issue 12): HA discovery, the retained list, set/cancel/stop commands, events.

A real mosquitto, the real MqttConnection and TimerService; a recording ringer stands in for the
Assistant's RINGING state (the daemon tests ring through the real one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jinja2
import pytest

from device.config import HostConfig, MqttConfig, Settings, StateConfig
from device.events import EventBus
from device.mqtt import MqttConnection
from device.timers.mqtt import TimersMqtt, TimerTopics
from device.timers.service import TimerService
from tests.rig.broker import BrokerSpy, DeviceSimulator, Mosquitto
from tests.test_presence import check_ha_entity
from tests.timer_fakes import FakeRinger

pytestmark = pytest.mark.timeout(60)


class Speaker:
    """TimerService + TimersMqtt over one MqttConnection, as the daemon wires them."""

    def __init__(self, port: int, state_dir: Path) -> None:
        self.settings = Settings(
            path=Path("speaker.toml"), present=frozenset({"mqtt"}),
            mqtt=MqttConfig(host="127.0.0.1", port=port, device_id="kitchen"),
            state=StateConfig(dir=str(state_dir)), device=HostConfig(timezone="Europe/Berlin"),
        )
        self.topics = TimerTopics(self.settings)
        self.bus = EventBus()
        self.ringer = FakeRinger()
        self.service = TimerService.for_settings(self.settings, bus=self.bus, ringer=self.ringer)
        self.mqtt = MqttConnection(self.settings.mqtt, asyncio.get_running_loop(),
                                   availability_topic=self.topics.availability)
        self.timers_mqtt = TimersMqtt(self.settings, self.mqtt, self.bus, self.service, self.ringer)

    async def start(self) -> None:
        self.bus.bind(asyncio.get_running_loop())
        await self.service.start()
        await self.timers_mqtt.start()
        await self.mqtt.start()
        assert await self.mqtt.wait_connected(5)
        # Acknowledged in order after the SUBSCRIBEs: the command topics are live from here on.
        await self.mqtt.publish("test/timers/sync", b"", qos=1, wait_ack=True)

    async def stop(self) -> None:
        await self.timers_mqtt.stop()
        await self.service.stop()
        await self.mqtt.stop()


@pytest.fixture
async def speaker(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Speaker]:
    sp = Speaker(mosquitto.port, tmp_path / "state")
    await sp.start()
    try:
        yield sp
    finally:
        await sp.stop()


async def until(pred: Any, timeout: float = 5.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what or pred}")


def last(spy: BrokerSpy, topic: str) -> Any:
    msgs = [m for m in spy.snapshot() if m.topic == topic]
    return msgs[-1] if msgs else None


def events(spy: BrokerSpy, event_type: str, topic: str = "speaker/kitchen/event") -> list[dict[str, Any]]:
    out = []
    for m in spy.snapshot():
        if m.topic == topic:
            line = json.loads(m.payload)
            if line["event_type"] == event_type:
                out.append(line)
    return out


def render(template: str, payload: str) -> str:
    """Render a value_template as Home Assistant does (Jinja2 with value and value_json)."""
    return jinja2.Environment().from_string(template).render(value=payload, value_json=json.loads(payload))


async def test_discovery_entities_follow_ha_rules_and_render_the_list(speaker: Speaker, mqtt_spy: BrokerSpy) -> None:
    def configs_of(spy: BrokerSpy) -> dict[str, Any] | None:
        got = {m.topic: m for m in spy.snapshot() if m.topic.startswith("homeassistant/") and m.topic.endswith("/config")}
        return got if len(got) >= 4 else None

    await until(lambda: configs_of(mqtt_spy), what="the announcement")
    late = BrokerSpy(mqtt_spy.broker)  # subscribing later, as Home Assistant does at its start
    late.start()
    try:
        configs = await until(lambda: configs_of(late), what="the retained discovery configs")
    finally:
        late.stop()
    by_object = {t.split("/")[-2]: (t.split("/")[1], json.loads(m.payload), m.retained) for t, m in configs.items()}
    assert {k: v[0] for k, v in by_object.items()} == {
        "active_timers": "sensor", "next_timer": "sensor", "timers": "event", "stop_ringing": "button"}
    for component, cfg, retained in by_object.values():
        assert retained
        check_ha_entity(component, cfg)
        assert cfg["device"]["identifiers"] == ["realtime_speaker_kitchen"], "the speaker's own HA device"
        assert cfg["availability_topic"] == "speaker/kitchen/availability"
    assert by_object["next_timer"][1]["device_class"] == "timestamp"
    assert by_object["timers"][1]["event_types"] == ["timer_finished", "reminder_due"]
    assert by_object["stop_ringing"][1]["command_topic"] == "speaker/kitchen/ring/stop"

    count_tpl = by_object["active_timers"][1]["value_template"]
    next_tpl = by_object["next_timer"][1]["value_template"]
    empty = await until(lambda: last(mqtt_spy, "speaker/kitchen/timers"), what="the timer list")
    assert json.loads(empty.payload) == []
    assert render(count_tpl, "[]") == "0" and render(next_tpl, "[]") == "None"  # HA: unknown, not an error
    speaker.service.set_timer(600, "pasta", source="test")
    speaker.service.set_timer(300, "eggs", source="test")
    from datetime import datetime, timedelta
    speaker.service.set_reminder(datetime.now().astimezone() + timedelta(minutes=2), "bins", source="test")
    msg = await until(lambda: (m := last(mqtt_spy, "speaker/kitchen/timers")) and len(json.loads(m.payload)) == 3 and m)
    items = json.loads(msg.payload)
    assert [i["label"] for i in items] == [None, "eggs", "pasta"] and items[0]["text"] == "bins"
    assert render(count_tpl, msg.payload.decode()) == "2"
    nxt = datetime.fromisoformat(render(next_tpl, msg.payload.decode()))
    assert nxt.tzinfo is not None and abs(nxt.timestamp() - (time.time() + 300)) < 2

    # Home Assistant restarts: its birth message makes the speaker announce the timers again.
    await asyncio.sleep(2.1)
    before = len([m for m in mqtt_spy.snapshot() if m.topic.endswith("/stop_ringing/config")])
    ha = DeviceSimulator(mqtt_spy.broker)
    ha.start()
    try:
        ha.publish("homeassistant/status", "online")
        await until(lambda: len([m for m in mqtt_spy.snapshot() if m.topic.endswith("/stop_ringing/config")]) > before,
                    what="the discovery announced again")
    finally:
        ha.stop()


async def test_set_cancel_and_bad_commands_from_an_automation(speaker: Speaker, mqtt_spy: BrokerSpy,
                                                               device_sim: DeviceSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="speaker.timers")
    device_sim.publish("speaker/kitchen/timers/set", json.dumps({"duration": "10m", "label": "pasta"}))
    device_sim.publish("speaker/kitchen/timers/set", json.dumps({"duration": 90}))
    await until(lambda: len(speaker.service.entries()) == 2, what="two timers")
    set_events = await until(lambda: len(e := events(mqtt_spy, "timer_set")) == 2 and e)
    assert set_events[0]["label"] == "pasta" and set_events[0]["duration"] == "10 minutes" and set_events[0]["source"] == "mqtt"
    await until(lambda: (m := last(mqtt_spy, "speaker/kitchen/timers")) and len(json.loads(m.payload)) == 2)
    late = BrokerSpy(device_sim.broker)  # a client connecting later (HA after a restart) gets the list
    late.start()
    try:
        got = await until(lambda: last(late, "speaker/kitchen/timers"), what="the retained list")
        assert got.retained and [i["label"] for i in json.loads(got.payload)] == [None, "pasta"]
    finally:
        late.stop()

    bad = [
        ("speaker/kitchen/timers/set", '{"duration": "30h"}', "24-hour limit"),
        ("speaker/kitchen/timers/set", '{"duration": -5}', "negative"),
        ("speaker/kitchen/timers/set", '{"duration": "10m", "colour": 1}', "unknown field 'colour'"),
        ("speaker/kitchen/timers/set", '{"duration": ', "invalid JSON"),
        ("speaker/kitchen/timers/set", "10m", "expected a JSON object"),
        ("speaker/kitchen/timers/set", b"\xff\xfe", "not UTF-8"),
        ("speaker/kitchen/timers/cancel", "risotto", "no timer or reminder called 'risotto'"),
        ("speaker/kitchen/timers/cancel", '{"all": "yes"}', "'all' must be true or false"),
        ("speaker/kitchen/timers/set", '{"duration": "10m", "label": "pasta"}', "already running"),
    ]
    for topic, payload, _ in bad:
        device_sim.publish(topic, payload)
    for topic, _, message in bad:
        await until(lambda topic=topic, message=message: any(
                        topic in r.getMessage() and message in r.getMessage() for r in caplog.records),
                    what=f"a warning naming {topic} and {message!r}")
    assert len(speaker.service.entries()) == 2

    device_sim.publish("speaker/kitchen/timers/cancel", "Pasta")
    await until(lambda: len(speaker.service.entries()) == 1)
    cancelled = await until(lambda: events(mqtt_spy, "timer_cancelled"))
    assert cancelled[0]["label"] == "pasta" and cancelled[0]["source"] == "mqtt"
    device_sim.publish("speaker/kitchen/timers/cancel", '{"all": true}')
    await until(lambda: not speaker.service.entries())
    await until(lambda: (m := last(mqtt_spy, "speaker/kitchen/timers")) and json.loads(m.payload) == [])


async def test_finished_timers_are_events_and_ring_stop_reaches_the_ringer(speaker: Speaker, mqtt_spy: BrokerSpy,
                                                                            device_sim: DeviceSimulator) -> None:
    device_sim.publish("speaker/kitchen/timers/set", json.dumps({"duration": 1, "label": "tea"}))
    ha = await until(lambda: events(mqtt_spy, "timer_finished", "speaker/kitchen/timers/ha_event"), 5)
    assert ha[0]["label"] == "tea" and ha[0]["text"] == "The tea timer is done." and ha[0]["late_s"] < 0.1
    assert events(mqtt_spy, "timer_finished") and speaker.ringer.rings[0][1:] == ("timer", "The tea timer is done.")
    device_sim.publish("speaker/kitchen/ring/stop", "STOP")  # the HA button's payload_press
    await until(lambda: speaker.ringer.stops == ["mqtt"], what="stop_ringing('mqtt')")
    assert not speaker.ringer.ringing


async def test_a_retained_command_is_not_replayed(mosquitto: Mosquitto, device_sim: DeviceSimulator, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    device_sim.publish("speaker/kitchen/timers/set", json.dumps({"duration": "5m"}), retain=True)
    await asyncio.sleep(0.2)
    sp = Speaker(mosquitto.port, tmp_path / "state")
    await sp.start()
    try:
        await until(lambda: "ignored a retained command on speaker/kitchen/timers/set" in caplog.text)
        assert sp.service.entries() == []
    finally:
        await sp.stop()
