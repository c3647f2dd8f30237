"""The speaker as an MQTT citizen: Home Assistant discovery and plain command/state topics.

Everything runs on the event loop, over the one :class:`~device.mqtt.MqttConnection`.

Topics (``<base>`` = ``<topic_prefix>/<device_id>``):

- ``<base>/availability``: ``online``/``offline``, retained (the connection's last will)
- ``<base>/state``: idle, listening, thinking, speaking, follow_up, muted, error (retained)
- ``<base>/mute`` (``ON``/``OFF``, retained) and ``<base>/mute/set`` (ON/OFF/true/false/1/0/toggle)
- ``<base>/volume`` (0-100, retained) and ``<base>/volume/set`` (an integer 0-100)
- ``<base>/announce``: plain text, or JSON ``{"text": ..., "chime": bool, "then_listen": bool}``
- ``<base>/conversation/start``: empty, or JSON ``{"prompt": ...}``
- ``<base>/event``: one JSON object per message (``event_type`` wake_detected, transcript,
  tool_call, conversation_ended, error, announcement)
- ``<base>/ha/event``: the subset Home Assistant's event entity takes
- ``<base>/last_heard``, ``<base>/last_said`` (text, retained), ``<base>/tokens`` (JSON, retained)
- ``<base>/audio``: how the microphone's processing fares (JSON, retained): ``processing`` (% of real
  time it takes this CPU, null until measured), ``stages`` (each stage's %), ``echo_canceller``
  (off, learning, settled) and ``echo_delay_ms``

Command messages that arrive retained are ignored: a stale retained command would otherwise
be replayed at every reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import __version__
from .config import Settings
from .events import (
    AnnouncementEvent,
    AudioHealth,
    ConversationEnded,
    DndChanged,
    EnabledChanged,
    ErrorEvent,
    Event,
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

if TYPE_CHECKING:
    from .mqtt import MqttConnection

_LOG = logging.getLogger(__name__)

#: Where people report problems with this software (HA shows it on the device page).
SUPPORT_URL = ""
MODEL = "realtime-speaker"
MANUFACTURER = "realtime-speaker"

MAX_TEXT = 1000  # characters of an announcement or a prompt
MAX_PAYLOAD = 16 * 1024  # bytes of any command payload, checked before decoding
HA_STATE_MAX = 255  # Home Assistant rejects sensor states longer than this
HA_EVENT_TYPES = ("wake_detected", "conversation_ended", "error")
_MUTE_WORDS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
_ANNOUNCE_KEYS = {"text", "chime", "then_listen"}
_START_KEYS = {"prompt"}


class AssistantAPI(Protocol):
    """What presence needs from the assistant (device/assistant.py implements it)."""

    @property
    def state(self) -> State: ...
    @property
    def muted(self) -> bool: ...
    @property
    def volume(self) -> int: ...

    async def set_muted(self, muted: bool, source: str) -> None: ...
    async def set_volume(self, volume: int, source: str) -> None: ...
    async def announce(self, text: str, *, chime: bool = True, then_listen: bool = False) -> None: ...
    async def start_conversation(self, prompt: str | None = None, source: str = "api") -> None: ...
    async def ask(self, text: str, source: str = "api") -> None: ...
    async def set_enabled(self, enabled: bool, source: str) -> None: ...
    async def set_dnd(self, on: bool, source: str) -> None: ...
    async def stop_conversation(self, source: str = "api") -> None: ...


class BadCommand(ValueError):
    """A command payload that is ignored; the message says why."""


def command_callback(handler: Callable[[str, bytes], None], *, active: Callable[[], bool], log: logging.Logger,
                     rejected: tuple[type[Exception], ...] = (BadCommand,)) -> Callable[[str, bytes, bool], None]:
    """An MQTT callback for a command topic: retained commands and ``rejected`` payloads are
    logged with their topic and ignored; nothing a payload does escapes to the MQTT thread's caller."""
    def callback(topic: str, payload: bytes, retained: bool) -> None:
        if not active():
            return
        if retained:
            log.warning("ignored a retained command on %s (commands must not be retained)", topic)
            return
        try:
            handler(topic, payload)
        except rejected as exc:
            log.warning("ignored command on %s: %s", topic, exc)
        except Exception:
            log.exception("command on %s failed", topic)

    return callback


@dataclass(frozen=True)
class Topics:
    """Every topic of one speaker."""

    base: str
    availability: str
    state: str
    mute: str
    mute_set: str
    volume: str
    volume_set: str
    announce: str
    conversation_start: str
    conversation_stop: str
    ask: str
    enabled: str
    enabled_set: str
    dnd: str
    dnd_set: str
    event: str
    ha_event: str
    last_heard: str
    last_said: str
    tokens: str
    audio: str
    ha_status: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        m = settings.mqtt
        base = f"{m.topic_prefix}/{m.device_id}"
        return cls(
            base=base,
            availability=f"{base}/availability",
            state=f"{base}/state",
            mute=f"{base}/mute",
            mute_set=f"{base}/mute/set",
            volume=f"{base}/volume",
            volume_set=f"{base}/volume/set",
            announce=f"{base}/announce",
            conversation_start=f"{base}/conversation/start",
            conversation_stop=f"{base}/conversation/stop",
            ask=f"{base}/ask",
            enabled=f"{base}/enabled",
            enabled_set=f"{base}/enabled/set",
            dnd=f"{base}/dnd",
            dnd_set=f"{base}/dnd/set",
            event=f"{base}/event",
            ha_event=f"{base}/ha/event",
            last_heard=f"{base}/last_heard",
            last_said=f"{base}/last_said",
            tokens=f"{base}/tokens",
            audio=f"{base}/audio",
            ha_status=f"{m.discovery_prefix}/status",
        )


# ---------------------------------------------------------------- command parsing (pure)


def _text(payload: bytes) -> str:
    if len(payload) > MAX_PAYLOAD:
        raise BadCommand(f"payload of {len(payload)} bytes is larger than {MAX_PAYLOAD}")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadCommand("payload is not UTF-8 text") from None


def _json_object(text: str, allowed: set[str]) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadCommand(f"invalid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise BadCommand("JSON payload must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise BadCommand(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return value


def _spoken_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadCommand(f"{what} must be a string")
    text = " ".join(value.split())  # control characters and runs of whitespace -> one space
    if not text:
        raise BadCommand(f"{what} is empty")
    if len(text) > MAX_TEXT:
        raise BadCommand(f"{what} is {len(text)} characters, more than {MAX_TEXT}")
    return text


def parse_mute(payload: bytes, current: bool) -> bool:
    """ON/OFF/true/false/1/0/toggle (any case) -> the wanted mute state."""
    word = _text(payload).strip().lower()
    if word == "toggle":
        return not current
    if word not in _MUTE_WORDS:
        raise BadCommand(f"expected ON, OFF, true, false, 1, 0 or toggle, got {word[:40]!r}")
    return _MUTE_WORDS[word]


def parse_volume(payload: bytes) -> int:
    """An integer 0-100 ("55", or "55.0" as some tools send)."""
    text = _text(payload).strip()
    try:
        value = float(text)
    except ValueError:
        raise BadCommand(f"expected an integer 0-100, got {text[:40]!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise BadCommand(f"expected an integer 0-100, got {text[:40]!r}")
    if not 0 <= value <= 100:
        raise BadCommand(f"volume {text[:40]} is outside 0-100")
    return int(value)


@dataclass(frozen=True)
class Announcement:
    text: str
    chime: bool = True
    then_listen: bool = False


def parse_announce(payload: bytes) -> Announcement:
    """Plain text, or a JSON object {"text", "chime", "then_listen"}."""
    text = _text(payload)
    if not text.lstrip().startswith("{"):
        return Announcement(_spoken_text(text, "announcement"))
    obj = _json_object(text, _ANNOUNCE_KEYS)
    if "text" not in obj:
        raise BadCommand("JSON announcement has no 'text'")
    for key in ("chime", "then_listen"):
        if key in obj and not isinstance(obj[key], bool):
            raise BadCommand(f"'{key}' must be true or false")
    return Announcement(
        _spoken_text(obj["text"], "'text'"), chime=obj.get("chime", True), then_listen=obj.get("then_listen", False)
    )


def parse_ask(payload: bytes) -> str:
    """Plain text, or a JSON object {"text"}: a question to answer aloud."""
    text = _text(payload)
    if not text.lstrip().startswith("{"):
        return _spoken_text(text, "question")
    obj = _json_object(text, {"text"})
    if "text" not in obj:
        raise BadCommand("JSON question has no 'text'")
    return _spoken_text(obj["text"], "'text'")


def parse_stop(payload: bytes) -> None:
    """Empty or ``{}``: anything else is a mistake worth a log line."""
    text = _text(payload).strip()
    if text:
        _json_object(text, set())


def parse_start(payload: bytes) -> str | None:
    """Empty, or a JSON object with an optional "prompt"; returns the prompt."""
    text = _text(payload).strip()
    if not text:
        return None
    obj = _json_object(text, _START_KEYS)
    if obj.get("prompt") is None:
        return None
    return _spoken_text(obj["prompt"], "'prompt'")


# ---------------------------------------------------------------- discovery (pure)


def device_info(settings: Settings) -> dict[str, Any]:
    """The ``device`` block shared by every entity (one device in HA)."""
    m = settings.mqtt
    words = re.sub(r"[_-]+", " ", m.device_id).strip()
    return {
        "identifiers": [f"realtime_speaker_{m.device_id}"],
        "name": f"{words[:1].upper()}{words[1:]} speaker",
        "model": MODEL,
        "manufacturer": MANUFACTURER,
        "sw_version": __version__,
    }


def entity_common(settings: Settings, availability_topic: str) -> dict[str, Any]:
    """What every discovery payload of the speaker's own entities shares."""
    return {
        "availability_topic": availability_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device_info(settings),
        "origin": origin_info(),
    }


def origin_info() -> dict[str, Any]:
    """The ``origin`` block: which software announced these entities."""
    origin: dict[str, Any] = {"name": MODEL, "sw_version": __version__}
    if SUPPORT_URL:
        origin["support_url"] = SUPPORT_URL
    return origin


def discovery_messages(settings: Settings) -> dict[str, dict[str, Any]]:
    """Config topic -> payload for every entity, each with only keys HA documents."""
    m = settings.mqtt
    t = Topics.of(settings)
    node = f"speaker_{m.device_id}"
    common = entity_common(settings, t.availability)
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("switch", "mute", {
            "name": "Mute", "icon": "mdi:microphone-off",
            "command_topic": t.mute_set, "state_topic": t.mute,
            "payload_on": "ON", "payload_off": "OFF",
        }),
        ("switch", "enabled", {
            "name": "Assistant enabled", "icon": "mdi:power",
            "command_topic": t.enabled_set, "state_topic": t.enabled,
            "payload_on": "ON", "payload_off": "OFF",
        }),
        ("switch", "dnd", {
            "name": "Do not disturb", "icon": "mdi:volume-off",
            "command_topic": t.dnd_set, "state_topic": t.dnd,
            "payload_on": "ON", "payload_off": "OFF",
        }),
        ("number", "volume", {
            "name": "Volume", "icon": "mdi:volume-high",
            "command_topic": t.volume_set, "state_topic": t.volume,
            "min": 0, "max": 100, "step": 1, "mode": "slider", "unit_of_measurement": "%",
        }),
        ("sensor", "state", {
            "name": "State", "icon": "mdi:account-voice",
            "state_topic": t.state, "device_class": "enum", "options": [s.value for s in State],
        }),
        ("sensor", "last_heard", {"name": "Last heard", "icon": "mdi:ear-hearing", "state_topic": t.last_heard}),
        ("sensor", "last_said", {"name": "Last said", "icon": "mdi:message-reply-text", "state_topic": t.last_said}),
        ("sensor", "tokens_conversation", {
            "name": "Tokens last conversation", "icon": "mdi:counter",
            "state_topic": t.tokens, "value_template": "{{ value_json.conversation }}",
            "unit_of_measurement": "tokens", "state_class": "measurement",
        }),
        ("sensor", "tokens_total", {
            "name": "Tokens used", "icon": "mdi:counter",
            "state_topic": t.tokens, "value_template": "{{ value_json.total }}",
            "unit_of_measurement": "tokens", "state_class": "total_increasing",
        }),
        ("sensor", "audio_processing", {
            "name": "Audio processing", "icon": "mdi:cpu-64-bit", "entity_category": "diagnostic",
            "state_topic": t.audio, "value_template": "{{ value_json.processing }}",
            "unit_of_measurement": "%", "state_class": "measurement", "suggested_display_precision": 0,
        }),
        ("sensor", "echo_canceller", {
            "name": "Echo canceller", "icon": "mdi:microphone-message", "entity_category": "diagnostic",
            "state_topic": t.audio, "value_template": "{{ value_json.echo_canceller }}",
            "device_class": "enum", "options": ["off", "learning", "settled"],
        }),
        ("button", "start_conversation", {
            "name": "Start conversation", "icon": "mdi:microphone-message",
            "command_topic": t.conversation_start, "payload_press": "{}",
        }),
        ("button", "stop_conversation", {
            "name": "Stop", "icon": "mdi:stop-circle",
            "command_topic": t.conversation_stop, "payload_press": "{}",
        }),
        ("notify", "announce", {"name": "Announce", "icon": "mdi:bullhorn", "command_topic": t.announce}),
        ("notify", "ask", {"name": "Ask", "icon": "mdi:chat-question", "command_topic": t.ask}),
        ("event", "assistant", {
            "name": "Assistant", "icon": "mdi:account-voice",
            "state_topic": t.ha_event, "event_types": list(HA_EVENT_TYPES),
        }),
    ]
    out: dict[str, dict[str, Any]] = {}
    for component, object_id, fields in entities:
        topic = f"{m.discovery_prefix}/{component}/{node}/{object_id}/config"
        out[topic] = {**fields, "unique_id": f"{node}_{object_id}", **common}
    return out


def audio_payload(ev: AudioHealth) -> dict[str, Any]:
    """What ``<base>/audio`` carries: shares in % of real time, one decimal."""
    return {
        "processing": None if ev.processing is None else round(ev.processing * 100, 1),
        "stages": {name: round(share * 100, 1) for name, share in ev.stages},
        "echo_canceller": ev.echo,
        "echo_delay_ms": None if ev.echo_delay_ms is None else round(ev.echo_delay_ms, 1),
    }


def is_speaker_discovery(config: dict[str, Any]) -> bool:
    """True for a discovery config announced by a speaker (this one or another): not a home device."""
    origin = config.get("origin") or config.get("o") or {}
    return isinstance(origin, dict) and origin.get("name") == MODEL


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- the component


class _Lane:
    """Runs queued jobs one after another, so effects keep the order the messages came in."""

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self._queue: asyncio.Queue[tuple[str, Callable[[], Awaitable[Any]]]] = asyncio.Queue(maxsize)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"presence-{self.name}")

    def put(self, label: str, job: Callable[[], Awaitable[Any]]) -> bool:
        try:
            self._queue.put_nowait((label, job))
            return True
        except asyncio.QueueFull:
            _LOG.warning("MQTT %s queue full: dropped %s", self.name, label)
            return False

    async def _run(self) -> None:
        while True:
            label, job = await self._queue.get()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _LOG.error("MQTT %s: %s failed: %s: %s", self.name, label, type(exc).__name__, exc)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until the queue is empty and the last job has been taken."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


class Presence:
    """Publishes the speaker's discovery, state and events; executes MQTT commands."""

    def __init__(self, settings: Settings, mqtt: MqttConnection, bus: EventBus, assistant: AssistantAPI) -> None:
        self._settings = settings
        self._mqtt = mqtt
        self._bus = bus
        self._assistant = assistant
        self.topics = Topics.of(settings)
        self._device_id = settings.mqtt.device_id
        self._out = _Lane("publish", 2000)
        self._control = _Lane("control", 100)  # mute, volume
        self._speech = _Lane("speech", 20)  # announcements, conversation starts
        self._unsubs: list[Callable[[], None]] = []
        self._last_heard = ""
        self._last_said = ""
        self._tokens: dict[str, int] | None = None
        self._tokens_seeded = False
        self._audio: str | None = None  # the last audio health payload
        self._started = False
        self._connected_at = -1e9
        self._announced_at = -1e9
        self._hooked = False

    # -- lifecycle

    async def start(self) -> None:
        """Subscribe to the command topics and HA's birth message; announce if connected."""
        for lane in (self._out, self._control, self._speech):
            lane.start()
        t = self.topics
        sub = self._mqtt.subscribe
        self._unsubs += [
            sub(t.mute_set, self._guard(self._on_mute)),
            sub(t.volume_set, self._guard(self._on_volume)),
            sub(t.announce, self._guard(self._on_announce)),
            sub(t.conversation_start, self._guard(self._on_start)),
            sub(t.conversation_stop, self._guard(self._on_stop)),
            sub(t.ask, self._guard(self._on_ask)),
            sub(t.enabled_set, self._guard(self._on_enabled)),
            sub(t.dnd_set, self._guard(self._on_dnd)),
            sub(t.ha_status, self._on_ha_status),
            sub(t.tokens, self._on_own_tokens),
        ]
        if t.ha_status != "homeassistant/status":  # HA's birth topic stays this unless changed in HA
            self._unsubs.append(sub("homeassistant/status", self._on_ha_status))
        self._unsubs.append(self._bus.subscribe(self._on_event))
        self._started = True
        if not self._hooked:  # the connection offers no way to unregister: hook once
            self._hooked = True
            self._mqtt.on_connected(self._on_connected)  # also runs now if already connected
        elif self._mqtt.connected:
            self._on_connected()

    async def stop(self) -> None:
        """Stop executing commands; flush what is queued for publishing (bounded)."""
        self._started = False
        for unsub in self._unsubs:
            try:
                unsub()
            except Exception:  # an unsubscribe on a closing connection is harmless
                pass
        self._unsubs.clear()
        await self._control.close()
        await self._speech.close()
        await self._out.drain(1.0)
        await self._out.close()

    # -- outgoing

    def _publish(self, topic: str, payload: str | bytes, *, retain: bool = False, qos: int = 0) -> None:
        async def job() -> None:
            try:
                await self._mqtt.publish(topic, payload, qos=qos, retain=retain)
            except Exception as exc:  # MqttUnavailable while the broker is away: state is re-sent on reconnect
                _LOG.debug("not published to %s: %s", topic, exc)

        self._out.put(f"publish {topic}", job)

    def _on_connected(self) -> None:
        if self._started:
            self.announce_discovery()
            self._connected_at = time.monotonic()

    def announce_discovery(self) -> None:
        """(Re)publish discovery configs, availability and the current state, in that order."""
        self._announced_at = time.monotonic()
        for topic, payload in discovery_messages(self._settings).items():
            self._publish(topic, json.dumps(payload, separators=(",", ":")), retain=True, qos=1)
        t = self.topics
        self._publish(t.availability, "online", retain=True, qos=1)
        a = self._assistant
        self._publish(t.state, State(a.state).value, retain=True)
        self._publish(t.mute, "ON" if a.muted else "OFF", retain=True)
        self._publish(t.enabled, "ON" if getattr(a, "enabled", True) else "OFF", retain=True)
        self._publish(t.dnd, "ON" if getattr(a, "dnd", False) else "OFF", retain=True)
        self._publish(t.volume, str(int(a.volume)), retain=True)
        # An empty retained payload would delete the retained value: publish only what is known.
        if self._last_heard:
            self._publish(t.last_heard, self._last_heard, retain=True)
        if self._last_said:
            self._publish(t.last_said, self._last_said, retain=True)
        if self._tokens is not None:
            self._publish(t.tokens, json.dumps(self._tokens), retain=True)
        if self._audio is not None:
            self._publish(t.audio, self._audio, retain=True)

    def _emit(self, event_type: str, **fields: Any) -> None:
        line = {"event_type": event_type, "device_id": self._device_id, "time": _now_iso(), **fields}
        payload = json.dumps(line, separators=(",", ":"), default=str, ensure_ascii=False)
        self._publish(self.topics.event, payload)
        if event_type in HA_EVENT_TYPES:
            self._publish(self.topics.ha_event, payload)

    def _on_event(self, ev: Event) -> None:
        t = self.topics
        if isinstance(ev, StateChanged):
            self._publish(t.state, State(ev.new).value, retain=True)
        elif isinstance(ev, MuteChanged):
            self._publish(t.mute, "ON" if ev.muted else "OFF", retain=True)
        elif isinstance(ev, EnabledChanged):
            self._publish(t.enabled, "ON" if ev.enabled else "OFF", retain=True)
        elif isinstance(ev, DndChanged):
            self._publish(t.dnd, "ON" if ev.on else "OFF", retain=True)
        elif isinstance(ev, VolumeChanged):
            self._publish(t.volume, str(int(ev.volume)), retain=True)
        elif isinstance(ev, WakeDetected):
            self._emit("wake_detected", model=ev.model, score=round(float(ev.score), 4))
        elif isinstance(ev, Transcript):
            self._emit("transcript", role=ev.role, text=ev.text)
            text = _clip(" ".join(ev.text.split()), HA_STATE_MAX)
            if not text:
                return
            if ev.role == "user":
                self._last_heard = text
                self._publish(t.last_heard, text, retain=True)
            else:
                self._last_said = text
                self._publish(t.last_said, text, retain=True)
        elif isinstance(ev, ToolCalled):
            self._emit("tool_call", name=ev.name, arguments=ev.arguments, result=ev.result,
                       duration_ms=round(ev.duration_s * 1000))
        elif isinstance(ev, ConversationEnded):
            self._emit("conversation_ended", reason=ev.reason, usage=ev.usage)
            self._count_tokens(ev.usage)
        elif isinstance(ev, ErrorEvent):
            self._emit("error", where=ev.where, message=ev.message)
        elif isinstance(ev, AnnouncementEvent):
            self._emit("announcement", status=ev.status, text=ev.text, reason=ev.reason)
        elif isinstance(ev, ResponseEvent):
            fields: dict[str, Any] = {"response_id": ev.response_id, "status": ev.status}
            if ev.status != "created":
                fields["usage"] = ev.usage
            self._emit("response_created" if ev.status == "created" else "response_done", **fields)
        elif isinstance(ev, RingStarted):
            self._emit("ring_started", ring_id=ev.ring_id, kind=ev.kind, text=ev.text)
        elif isinstance(ev, RingStopped):
            self._emit("ring_stopped", ring_ids=list(ev.ring_ids), source=ev.source)
        elif isinstance(ev, AudioHealth):
            self._audio = json.dumps(audio_payload(ev), separators=(",", ":"), ensure_ascii=False)
            self._publish(t.audio, self._audio, retain=True)

    def _count_tokens(self, usage: dict[str, Any]) -> None:
        def num(key: str) -> int:
            v = usage.get(key)
            return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else 0

        total = num("total_tokens") or num("input_tokens") + num("output_tokens")
        prev = self._tokens or {"total": 0}
        self._tokens = {
            "conversation": total,
            "total": prev["total"] + total,
            "input": num("input_tokens"),
            "output": num("output_tokens"),
        }
        self._tokens_seeded = True
        self._publish(self.topics.tokens, json.dumps(self._tokens), retain=True)

    def _on_own_tokens(self, topic: str, payload: bytes, retained: bool) -> None:
        # The retained value from the last run carries the running total over a restart.
        if not retained or self._tokens_seeded:
            return
        self._tokens_seeded = True
        try:
            value = json.loads(payload)
            total = value["total"]
            if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
                self._tokens = {"conversation": int(value.get("conversation", 0) or 0), "total": total,
                                "input": 0, "output": 0}
        except (ValueError, KeyError, TypeError):
            _LOG.info("ignored the retained token count on %s: not the expected JSON", topic)

    # -- incoming

    def _on_ha_status(self, topic: str, payload: bytes, retained: bool) -> None:
        if payload.strip().lower() != b"online" or not self._started:
            return
        now = time.monotonic()
        if retained and now - self._connected_at < 2.0:
            return  # a retained birth message replayed right after our own (re)connect announcement
        if now - self._announced_at < 0.25:
            return  # the same birth message delivered twice (overlapping subscriptions on this connection)
        _LOG.info("Home Assistant came online (%s): announcing the speaker again", topic)
        self.announce_discovery()

    def _guard(self, handler: Callable[[str, bytes], None]) -> Callable[[str, bytes, bool], None]:
        return command_callback(handler, active=lambda: self._started, log=_LOG)

    def _on_mute(self, topic: str, payload: bytes) -> None:
        word = _text(payload).strip().lower()
        if word != "toggle":
            parse_mute(payload, False)  # validate now: a bad payload is logged, never queued

        async def job() -> None:
            a = self._assistant
            await a.set_muted(parse_mute(payload, bool(a.muted)), "mqtt")

        self._control.put(f"mute {word}", job)

    def _on_enabled(self, topic: str, payload: bytes) -> None:
        word = _text(payload).strip().lower()
        if word != "toggle":
            parse_mute(payload, False)  # the same words as mute/set; a bad payload is logged, never queued

        async def job() -> None:
            a = self._assistant
            await a.set_enabled(parse_mute(payload, bool(a.enabled)), "mqtt")  # type: ignore[attr-defined]

        self._control.put(f"enabled {word}", job)

    def _on_dnd(self, topic: str, payload: bytes) -> None:
        word = _text(payload).strip().lower()
        if word != "toggle":
            parse_mute(payload, False)

        async def job() -> None:
            a = self._assistant
            await a.set_dnd(parse_mute(payload, bool(a.dnd)), "mqtt")  # type: ignore[attr-defined]

        self._control.put(f"dnd {word}", job)

    def _on_volume(self, topic: str, payload: bytes) -> None:
        volume = parse_volume(payload)
        self._control.put(f"volume {volume}", lambda: self._assistant.set_volume(volume, "mqtt"))

    def _on_announce(self, topic: str, payload: bytes) -> None:
        a = parse_announce(payload)
        self._speech.put(
            "announcement", lambda: self._assistant.announce(a.text, chime=a.chime, then_listen=a.then_listen)
        )

    def _on_start(self, topic: str, payload: bytes) -> None:
        prompt = parse_start(payload)
        self._speech.put("conversation start", lambda: self._assistant.start_conversation(prompt, "mqtt"))

    def _on_stop(self, topic: str, payload: bytes) -> None:
        parse_stop(payload)
        # The control lane, not the speech lane: a stop must not wait behind queued speech.
        self._control.put("conversation stop", lambda: self._assistant.stop_conversation("mqtt"))

    def _on_ask(self, topic: str, payload: bytes) -> None:
        text = parse_ask(payload)
        self._speech.put("question", lambda: self._assistant.ask(text, "mqtt"))


__all__ = [
    "Announcement",
    "AssistantAPI",
    "BadCommand",
    "HA_EVENT_TYPES",
    "Presence",
    "Topics",
    "device_info",
    "discovery_messages",
    "is_speaker_discovery",
    "origin_info",
    "parse_announce",
    "parse_ask",
    "parse_mute",
    "parse_start",
    "parse_stop",
    "parse_volume",
]
