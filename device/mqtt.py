"""The daemon's one MQTT connection (paho-mqtt 2.x, callback API version 2).

paho runs its network loop in its own thread (``loop_start``). Every paho callback only hands what
happened to the asyncio loop with ``loop.call_soon_threadsafe``; all state (connected flag,
subscriptions, pending acknowledgements) lives on the loop.

The connection carries the speaker's availability topic: a last will ``offline`` (retained), an
``online`` (retained) after each connect and an ``offline`` on a clean stop. Reconnects back off
exponentially and renew every subscription. While the broker is away, :meth:`MqttConnection.publish`
raises :class:`MqttUnavailable` at once, so a tool call fails fast instead of hanging a conversation.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from device.config import MqttConfig

_LOG = logging.getLogger(__name__)

MessageCallback = Callable[[str, bytes, bool], None]


class MqttUnavailable(Exception):
    """The broker is not connected (or did not acknowledge in time); the message names the broker."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True if ``topic`` matches the MQTT subscription filter ``topic_filter`` (+ and # wildcards)."""
    try:
        return paho.topic_matches_sub(topic_filter, topic)
    except Exception:  # paho raises on malformed filters
        return False


def valid_publish_topic(topic: object) -> bool:
    """A topic a message may be published to: non-empty text, no wildcards, no NUL, <= 65535 bytes."""
    if not isinstance(topic, str) or not topic:
        return False
    if "+" in topic or "#" in topic or "\x00" in topic:
        return False
    return len(topic.encode("utf-8", "surrogatepass")) <= 65535


class _Subscription:
    __slots__ = ("filter", "qos", "callbacks")

    def __init__(self, topic_filter: str, qos: int) -> None:
        self.filter = topic_filter
        self.qos = qos
        self.callbacks: list[MessageCallback] = []


class MqttConnection:
    """The one MQTT connection of the daemon.

    ``availability_topic`` gets a retained ``offline`` last will and a retained ``online`` after each
    connect. ``min_reconnect_s``/``max_reconnect_s`` bound paho's exponential reconnect backoff.
    """

    ONLINE = "online"
    OFFLINE = "offline"

    def __init__(
        self,
        cfg: MqttConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        availability_topic: str,
        min_reconnect_s: float = 1.0,
        max_reconnect_s: float = 30.0,
        ack_timeout_s: float = 2.0,
    ) -> None:
        self.cfg = cfg
        self._loop = loop
        self.availability_topic = availability_topic
        self.client_id = cfg.client_id or f"speaker-{cfg.device_id}"
        self._ack_timeout_s = ack_timeout_s
        self._subs: dict[str, _Subscription] = {}
        self._connected_cbs: list[Callable[[], Any]] = []
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._connected = False
        self._started = False
        self._stopping = False
        self._failures = 0
        self._connected_event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connects = 0  # successful connects so far (1 + reconnects)
        self._client = self._make_client(self.client_id)
        self._client.will_set(availability_topic, self.OFFLINE, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=min_reconnect_s, max_delay=max_reconnect_s)  # type: ignore[arg-type]
        self._client.on_connect = self._paho_on_connect
        self._client.on_connect_fail = self._paho_on_connect_fail
        self._client.on_disconnect = self._paho_on_disconnect
        self._client.on_message = self._paho_on_message
        self._client.on_publish = self._paho_on_publish
        self._client.on_socket_open = self._paho_on_socket_open

    # ------------------------------------------------------------------ setup
    def _make_client(self, client_id: str) -> paho.Client:
        cfg = self.cfg
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.reveal() if cfg.password is not None else None)
        if cfg.tls:
            client.tls_set(
                ca_certs=cfg.ca_file or None,
                certfile=cfg.cert_file or None,
                keyfile=cfg.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        return client

    @property
    def broker(self) -> str:
        """host:port of the broker, for messages."""
        return f"{self.cfg.host}:{self.cfg.port}"

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect (as seen on the loop)."""
        return self._connected

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start connecting in the background; returns at once even if the broker is down."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        _LOG.info("MQTT: connecting to %s as %s%s", self.broker, self.client_id, " (TLS)" if self.cfg.tls else "")

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the connection; True if connected."""
        if self._connected:
            return True
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return self._connected

    async def stop(self) -> None:
        """Publish ``offline`` (retained), disconnect cleanly and end paho's thread."""
        if not self._started:
            return
        self._stopping = True
        if self._connected:
            try:
                await self.publish(self.availability_topic, self.OFFLINE, qos=1, retain=True, wait_ack=True)
            except MqttUnavailable as exc:
                _LOG.warning("MQTT: could not publish offline before stopping: %s", exc)
        self._client.disconnect()
        # loop_stop joins paho's thread, which may sit in a reconnect wait for up to 1 s.
        await asyncio.to_thread(self._client.loop_stop)
        self._started = False
        self._set_disconnected("stopped")
        for task in list(self._tasks):
            task.cancel()
        _LOG.info("MQTT: disconnected from %s", self.broker)

    # ---------------------------------------------------------- subscribing
    def subscribe(self, topic_filter: str, callback: MessageCallback, qos: int = 1) -> Callable[[], None]:
        """Call ``callback(topic, payload, retained)`` on the loop for every message matching the filter.

        Subscriptions are renewed after every reconnect. Returns a function that removes this
        callback (and unsubscribes the filter once no callback is left).
        """
        if not isinstance(topic_filter, str) or not topic_filter or "\x00" in topic_filter:
            raise ValueError(f"invalid MQTT topic filter {topic_filter!r}")
        sub = self._subs.get(topic_filter)
        if sub is None:
            sub = self._subs[topic_filter] = _Subscription(topic_filter, qos)
        sub.qos = max(sub.qos, qos)
        sub.callbacks.append(callback)
        if self._connected:
            # Subscribing again to an existing filter makes the broker resend its retained messages,
            # which the new callback needs.
            self._client.subscribe(topic_filter, qos=sub.qos)

        def unsubscribe() -> None:
            current = self._subs.get(topic_filter)
            if current is None or callback not in current.callbacks:
                return
            current.callbacks.remove(callback)
            if not current.callbacks:
                del self._subs[topic_filter]
                if self._connected:
                    self._client.unsubscribe(topic_filter)

        return unsubscribe

    def on_connected(self, callback: Callable[[], Any]) -> None:
        """Run ``callback()`` on the loop after every (re)connect; a coroutine function is awaited in a task."""
        self._connected_cbs.append(callback)
        if self._connected:
            self._run_callback(callback)

    # ------------------------------------------------------------ publishing
    async def publish(
        self,
        topic: str,
        payload: str | bytes,
        qos: int = 0,
        retain: bool = False,
        *,
        wait_ack: bool = False,
    ) -> None:
        """Publish a message; raises :class:`MqttUnavailable` at once when not connected.

        With ``wait_ack`` and QoS 1/2, waits for the broker's acknowledgement (bounded).
        """
        if not valid_publish_topic(topic):
            raise ValueError(f"invalid MQTT topic for publishing: {topic!r}")
        if not self._connected or not self._client.is_connected():
            raise MqttUnavailable(f"MQTT broker {self.broker} is not connected")
        if qos > 0:
            self._quickack()
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot publish to {topic!r}: {exc}") from None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttUnavailable(f"MQTT broker {self.broker}: publish to {topic} failed ({paho.error_string(info.rc)})")
        if not (wait_ack and qos > 0):
            return
        if info.is_published():
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._acks[info.mid] = fut
        try:
            await asyncio.wait_for(fut, self._ack_timeout_s)
        except asyncio.TimeoutError:
            raise MqttUnavailable(
                f"MQTT broker {self.broker} did not acknowledge the message to {topic} within {self._ack_timeout_s:g} s"
            ) from None
        finally:
            self._acks.pop(info.mid, None)

    # ----------------------------------------------------------------- probe
    async def probe(self, timeout_s: float = 5.0) -> str:
        """Connect once with a separate short-lived client (for ``speaker check``); raise OSError with the cause."""
        return await asyncio.to_thread(self._probe_blocking, timeout_s)

    def _probe_blocking(self, timeout_s: float) -> str:
        client = self._make_client(f"{self.client_id}-check")
        done = threading.Event()
        result: dict[str, Any] = {}

        def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            result["reason"] = reason
            done.set()

        client.on_connect = on_connect
        where = f"MQTT broker {self.broker}"
        try:
            client.connect(self.cfg.host, self.cfg.port, keepalive=max(5, self.cfg.keepalive_s))
        except ssl.SSLError as exc:
            raise OSError(f"{where}: TLS handshake failed: {exc.reason or exc}") from None
        except socket.gaierror as exc:
            raise OSError(f"{where}: cannot resolve host {self.cfg.host!r}: {exc.strerror}") from None
        except OSError as exc:
            raise OSError(f"{where}: cannot connect: {exc.strerror or exc}") from None
        client.loop_start()
        try:
            if not done.wait(timeout_s):
                raise OSError(f"{where}: no answer to CONNECT within {timeout_s:g} s")
            reason = result["reason"]
            if reason.is_failure:
                raise OSError(f"{where}: connection refused: {reason}")
        finally:
            client.disconnect()
            client.loop_stop()
        auth = f" as user {self.cfg.username!r}" if self.cfg.username else ""
        return f"MQTT broker {self.broker}: connected{auth}{' with TLS' if self.cfg.tls else ''}"

    # --------------------------------------------- paho thread -> loop hand-off
    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the daemon is shutting down
            pass

    def _paho_on_connect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._to_loop(self._handle_connect, bool(reason.is_failure), str(reason))

    def _paho_on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        self._to_loop(self._handle_connect_fail)

    def _paho_on_disconnect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._drop_unsent(client)
        self._to_loop(self._handle_disconnect, str(reason))

    def _paho_on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self._to_loop(self._handle_message, msg._topic, bytes(msg.payload), bool(msg.retain))

    def _paho_on_publish(self, _client: paho.Client, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        # Setting quick-ACK now sends the ACK of this PUBACK at once (see _quickack).
        self._quickack()
        self._to_loop(self._handle_ack, mid)

    def _quickack(self) -> None:
        # Brokers leave Nagle on by default (mosquitto: set_tcp_nodelay false): the device's answer,
        # queued right behind the broker's PUBACK, waits until we ACK that PUBACK, and Linux delays
        # ACKs by up to 40 ms. Quick-ACK mode (Linux only, not sticky) removes that wait.
        quickack = getattr(socket, "TCP_QUICKACK", None)
        sock = self._client.socket()
        if quickack is None or sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except (OSError, AttributeError, ValueError):
            pass

    @staticmethod
    def _paho_on_socket_open(_client: paho.Client, _userdata: Any, sock: Any) -> None:
        # Commands are small messages sent back to back (state, then brightness): without this,
        # Nagle's algorithm holds the second one until the broker's delayed ACK, ~40 ms.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    @staticmethod
    def _drop_unsent(client: paho.Client) -> None:
        # paho re-sends unacknowledged QoS>0 messages after a reconnect, even with a clean session.
        # A command (say "unlock") delivered minutes later, after the conversation has told the
        # person it failed, would be worse than none: drop them. Uses paho internals, hence guarded.
        try:
            with client._out_message_mutex:
                client._out_messages.clear()
                client._inflight_messages = 0
        except AttributeError:
            pass

    # --------------------------------------------------------- on the loop
    def _handle_connect(self, failed: bool, reason: str) -> None:
        if failed:
            self._failures += 1
            log = _LOG.warning if self._failures == 1 else _LOG.debug
            log("MQTT: broker %s refused the connection: %s (retrying with backoff)", self.broker, reason)
            return
        self._connected = True
        self.connects += 1
        self._connected_event.set()
        if self._failures or self.connects > 1:
            _LOG.info("MQTT: connected to %s again", self.broker)
        else:
            _LOG.info("MQTT: connected to %s", self.broker)
        self._failures = 0
        for sub in self._subs.values():
            try:
                self._client.subscribe(sub.filter, qos=sub.qos)
            except ValueError as exc:  # one bad filter must not cost the others or the announcement
                _LOG.error("MQTT: cannot subscribe to %r: %s", sub.filter, exc)
        if not self._stopping:
            self._client.publish(self.availability_topic, self.ONLINE, qos=1, retain=True)
        for cb in list(self._connected_cbs):
            self._run_callback(cb)

    def _handle_connect_fail(self) -> None:
        self._failures += 1
        if self._failures == 1:
            _LOG.warning("MQTT: cannot connect to broker %s (retrying with backoff)", self.broker)
        else:
            _LOG.debug("MQTT: connection attempt %d to %s failed", self._failures, self.broker)

    def _handle_disconnect(self, reason: str) -> None:
        if self._connected and not self._stopping:
            _LOG.warning("MQTT: lost connection to %s (%s); reconnecting", self.broker, reason)
        self._set_disconnected(reason)

    def _set_disconnected(self, reason: str) -> None:
        self._connected = False
        self._connected_event.clear()
        acks, self._acks = self._acks, {}
        for fut in acks.values():
            if not fut.done():
                fut.set_exception(MqttUnavailable(f"MQTT broker {self.broker} went away before acknowledging ({reason})"))

    def _handle_message(self, raw_topic: bytes, payload: bytes, retained: bool) -> None:
        try:
            topic = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            _LOG.warning("MQTT: ignoring a message whose topic is not UTF-8: %r", raw_topic[:80])
            return
        for sub in list(self._subs.values()):
            f = sub.filter
            # Most filters are plain topics (a home's state topics): compare them, match only wildcards.
            if f != topic and not (("+" in f or "#" in f) and topic_matches(f, topic)):
                continue
            for cb in list(sub.callbacks):
                try:
                    cb(topic, payload, retained)
                except Exception:  # one bad handler must not stop the others
                    _LOG.exception("MQTT: handler for %s failed on a message from %s", sub.filter, topic)

    def _handle_ack(self, mid: int) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _run_callback(self, cb: Callable[[], Any]) -> None:
        try:
            result = cb()
        except Exception:
            _LOG.exception("MQTT: on_connected callback %r failed", cb)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOG.error("MQTT: on_connected callback failed: %r", task.exception())


__all__ = ["MessageCallback", "MqttConnection", "MqttUnavailable", "topic_matches", "valid_publish_topic"]
