"""Timers on MQTT: Home Assistant discovery, the retained list, commands and events.

Topics (``<base>`` = ``<topic_prefix>/<device_id>``):

- ``<base>/timers`` (retained): JSON list of pending timers and reminders, soonest first
- ``<base>/timers/set``: JSON ``{"duration": 600 | "10m", "label": "pasta"}`` starts a timer
- ``<base>/timers/cancel``: a label, ``all``, or JSON ``{"label": ...}`` / ``{"all": true}``
- ``<base>/ring/stop``: any payload stops the ringing
- ``<base>/event``: timer_set, reminder_set, timer_adjusted, timer_cancelled, timer_finished,
  reminder_due, timer_missed (same envelope as the speaker's other events; the ringing itself is
  reported by presence as ring_started and ring_stopped)
- ``<base>/timers/ha_event``: timer_finished and reminder_due for Home Assistant's event entity

A bad command is logged with its topic and ignored; a retained command is ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from device.config import Settings
from device.events import Event, EventBus
from device.presence import BadCommand, command_callback, entity_common

from .model import Ringer, TimerError, TimerEvent
from .parse import parse_duration
from .service import TimerService

if TYPE_CHECKING:
    from device.mqtt import MqttConnection

_LOG = logging.getLogger("speaker.timers")

MAX_PAYLOAD = 4096
HA_EVENT_TYPES = ("timer_finished", "reminder_due")
_SET_KEYS = {"duration", "label"}
_CANCEL_KEYS = {"label", "all"}

# Home Assistant renders these on the retained list; "None" makes a timestamp sensor unknown.
COUNT_TEMPLATE = "{{ value_json | selectattr('kind', 'equalto', 'timer') | list | length }}"
NEXT_TEMPLATE = (
    "{{ (value_json | selectattr('kind', 'equalto', 'timer') | map(attribute='ends_at') | first)"
    " | default('None', true) }}"
)


class TimerTopics:
    """Every timer topic of one speaker."""

    def __init__(self, settings: Settings) -> None:
        m = settings.mqtt
        base = f"{m.topic_prefix}/{m.device_id}"
        self.base = base
        self.availability = f"{base}/availability"
        self.timers = f"{base}/timers"
        self.set = f"{base}/timers/set"
        self.cancel = f"{base}/timers/cancel"
        self.ring_stop = f"{base}/ring/stop"
        self.event = f"{base}/event"
        self.ha_event = f"{base}/timers/ha_event"
        self.ha_status = f"{m.discovery_prefix}/status"


def discovery_messages(settings: Settings) -> dict[str, dict[str, Any]]:
    """Config topic -> payload of the timer entities (same HA device as the speaker's own)."""
    m = settings.mqtt
    t = TimerTopics(settings)
    node = f"speaker_{m.device_id}"
    common = entity_common(settings, t.availability)
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("sensor", "active_timers", {
            "name": "Active timers", "icon": "mdi:timer-outline", "state_topic": t.timers,
            "value_template": COUNT_TEMPLATE, "state_class": "measurement",
        }),
        ("sensor", "next_timer", {
            "name": "Next timer", "icon": "mdi:timer-sand", "state_topic": t.timers,
            "value_template": NEXT_TEMPLATE, "device_class": "timestamp",
        }),
        ("event", "timers", {
            "name": "Timers", "icon": "mdi:timer-alert-outline", "state_topic": t.ha_event,
            "event_types": list(HA_EVENT_TYPES),
        }),
        ("button", "stop_ringing", {
            "name": "Stop ringing", "icon": "mdi:alarm-off", "command_topic": t.ring_stop, "payload_press": "STOP",
        }),
    ]
    out: dict[str, dict[str, Any]] = {}
    for component, object_id, fields in entities:
        out[f"{m.discovery_prefix}/{component}/{node}/{object_id}/config"] = {
            **fields, "unique_id": f"{node}_{object_id}", **common,
        }
    return out


def _json_or_text(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD:
        raise BadCommand(f"payload of {len(payload)} bytes is larger than {MAX_PAYLOAD}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadCommand("payload is not UTF-8 text") from None
    if text.startswith(("{", "[", '"')):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadCommand(f"invalid JSON ({exc.msg} at character {exc.pos})") from None
    return text


def parse_set(payload: bytes) -> tuple[float, str | None]:
    """``{"duration": ..., "label": ...}`` -> (seconds, label)."""
    value = _json_or_text(payload)
    if not isinstance(value, dict):
        raise BadCommand('expected a JSON object like {"duration": "10m", "label": "pasta"}')
    unknown = sorted(set(value) - _SET_KEYS)
    if unknown:
        raise BadCommand(f"unknown field {unknown[0]!r} (known: duration, label)")
    if "duration" not in value:
        raise BadCommand("no 'duration'")
    label = value.get("label")
    if label is not None and not isinstance(label, str):
        raise BadCommand("'label' must be a string")
    try:
        return parse_duration(value["duration"]), label
    except TimerError as exc:
        raise BadCommand(str(exc)) from None


def parse_cancel(payload: bytes) -> tuple[str | None, bool]:
    """A label, ``all``, or ``{"label": ...}`` / ``{"all": true}`` -> (label, all)."""
    value = _json_or_text(payload)
    if isinstance(value, str):
        if not value:
            raise BadCommand('empty payload; send a label, "all", or {"label": ...}')
        return (None, True) if value.casefold() == "all" else (value, False)
    if not isinstance(value, dict):
        raise BadCommand('expected a label, "all", or a JSON object {"label": ...} / {"all": true}')
    unknown = sorted(set(value) - _CANCEL_KEYS)
    if unknown:
        raise BadCommand(f"unknown field {unknown[0]!r} (known: all, label)")
    every = value.get("all", False)
    if not isinstance(every, bool):
        raise BadCommand("'all' must be true or false")
    label = value.get("label")
    if label is not None and not isinstance(label, str):
        raise BadCommand("'label' must be a string")
    if not every and not label:
        raise BadCommand("give 'label' or \"all\": true")
    return label, every


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class TimersMqtt:
    """Publishes the timers' discovery, list and events; executes timer commands from MQTT."""

    def __init__(self, settings: Settings, mqtt: MqttConnection, bus: EventBus, service: TimerService, ringer: Ringer) -> None:
        self._settings = settings
        self._mqtt = mqtt
        self._bus = bus
        self._service = service
        self._ringer = ringer
        self.topics = TimerTopics(settings)
        self._device_id = settings.mqtt.device_id
        self._queue: asyncio.Queue[tuple[str, str, bool, int]] = asyncio.Queue(2000)
        self._task: asyncio.Task[None] | None = None
        self._unsubs: list[Callable[[], None]] = []
        self._started = False
        self._hooked = False
        self._announced_at = -1e9

    async def start(self) -> None:
        """Subscribe to the command topics and announce once connected."""
        self._task = asyncio.get_running_loop().create_task(self._publisher(), name="timers-mqtt")
        t = self.topics
        self._unsubs += [
            self._mqtt.subscribe(t.set, self._guard(self._on_set)),
            self._mqtt.subscribe(t.cancel, self._guard(self._on_cancel)),
            self._mqtt.subscribe(t.ring_stop, self._guard(self._on_stop)),
            self._mqtt.subscribe(t.ha_status, self._on_ha_status),
            self._bus.subscribe(self._on_event, TimerEvent),
        ]
        self._service.on_change(self._publish_list)
        self._started = True
        if not self._hooked:
            self._hooked = True
            self._mqtt.on_connected(self._on_connected)

    async def stop(self) -> None:
        """Stop taking commands; flush what is queued (bounded)."""
        self._started = False
        for unsub in self._unsubs:
            try:
                unsub()
            except Exception:
                pass
        self._unsubs.clear()
        deadline = time.monotonic() + 1.0
        while not self._queue.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # -- outgoing

    def _publish(self, topic: str, payload: str, *, retain: bool = False, qos: int = 0) -> None:
        try:
            self._queue.put_nowait((topic, payload, retain, qos))
        except asyncio.QueueFull:
            _LOG.warning("MQTT timer queue full: dropped a message to %s", topic)

    async def _publisher(self) -> None:
        while True:
            topic, payload, retain, qos = await self._queue.get()
            try:
                await self._mqtt.publish(topic, payload, qos=qos, retain=retain)
            except Exception as exc:  # broker away: the list is re-sent on reconnect
                _LOG.debug("not published to %s: %s", topic, exc)

    def _on_connected(self) -> None:
        if self._started:
            self._announce()

    def _on_ha_status(self, topic: str, payload: bytes, retained: bool) -> None:
        # Home Assistant's birth message: it (re)subscribed, announce again (not for the retained
        # copy replayed right after our own connect, which already announced).
        if self._started and payload.strip().lower() == b"online" and time.monotonic() - self._announced_at > 2.0:
            _LOG.info("Home Assistant came online (%s): announcing the timer entities again", topic)
            self._announce()

    def _announce(self) -> None:
        self._announced_at = time.monotonic()
        for topic, payload in discovery_messages(self._settings).items():
            self._publish(topic, json.dumps(payload, separators=(",", ":")), retain=True, qos=1)
        self._publish_list()

    def _publish_list(self) -> None:
        if self._started:
            self._publish(self.topics.timers, json.dumps(self._service.published(), separators=(",", ":")), retain=True, qos=1)

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, TimerEvent) or not self._started:
            return
        fields = dict(event.item)
        if event.source:
            fields["source"] = event.source
        self._emit(event.event_type, fields)

    def _emit(self, event_type: str, fields: dict[str, Any]) -> None:
        line = {"event_type": event_type, "device_id": self._device_id, "time": _now_iso(), **fields}
        payload = json.dumps(line, separators=(",", ":"), ensure_ascii=False, default=str)
        self._publish(self.topics.event, payload)
        if event_type in HA_EVENT_TYPES:
            self._publish(self.topics.ha_event, payload)

    # -- incoming

    def _guard(self, handler: Callable[[str, bytes], None]) -> Callable[[str, bytes, bool], None]:
        return command_callback(handler, active=lambda: self._started, log=_LOG, rejected=(BadCommand, TimerError))

    def _on_set(self, topic: str, payload: bytes) -> None:
        seconds, label = parse_set(payload)
        self._service.set_timer(seconds, label, source="mqtt")

    def _on_cancel(self, topic: str, payload: bytes) -> None:
        label, every = parse_cancel(payload)
        self._service.cancel(label, all_timers=every, source="mqtt")

    def _on_stop(self, topic: str, payload: bytes) -> None:
        if len(payload) > MAX_PAYLOAD:
            raise BadCommand(f"payload of {len(payload)} bytes is larger than {MAX_PAYLOAD}")
        stopped = self._ringer.stop_ringing("mqtt")
        _LOG.info("ring stop from MQTT: %s", "stopped" if stopped else "nothing was ringing")


__all__ = ["BadCommand", "TimerTopics", "TimersMqtt", "discovery_messages", "parse_cancel", "parse_set"]
