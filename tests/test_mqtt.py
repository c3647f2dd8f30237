"""The daemon's MQTT connection against a real mosquitto: start with the broker down, availability
with last will, reconnect + re-subscribe after a broker restart, fail-fast publishing, user/password
and TLS with a client certificate."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from device.config import MqttConfig, Secret
from device.mqtt import MqttConnection, MqttUnavailable
from tests.rig.broker import BrokerSpy, Mosquitto, free_port, make_tls_files

pytestmark = pytest.mark.timeout(60)

AVAIL = "speaker/kitchen/availability"


def conn(broker: Mosquitto, **kw: object) -> MqttConnection:
    cfg = MqttConfig(host=broker.host, port=broker.port, device_id="kitchen", **kw)  # type: ignore[arg-type]
    return MqttConnection(cfg, asyncio.get_running_loop(), availability_topic=AVAIL, min_reconnect_s=0.1, max_reconnect_s=0.5)


def retained(broker: Mosquitto, topic: str, timeout: float = 3.0) -> bytes | None:
    """What a fresh subscriber gets as the retained message of ``topic``. A message published
    while the subscriber starts comes to it live, not as retained: another one then asks again."""
    deadline = time.monotonic() + timeout
    while True:
        spy = BrokerSpy(broker)
        spy.start()
        try:
            seen = spy.wait_for(lambda m: m.topic == topic, deadline - time.monotonic())
        finally:
            spy.stop()
        if seen is None or seen.retained:
            return None if seen is None else seen.payload
        if time.monotonic() >= deadline:
            return None


async def test_start_with_broker_down_connects_later_and_fails_fast_meanwhile(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "b")  # configured, not started
    c = conn(broker)
    try:
        t0 = time.monotonic()
        await c.start()
        assert time.monotonic() - t0 < 0.5, "start() must not wait for the broker"
        assert not c.connected
        t0 = time.monotonic()
        with pytest.raises(MqttUnavailable, match=f"127.0.0.1:{broker.port}"):
            await c.publish("home/x/set", "ON", qos=1)
        assert time.monotonic() - t0 < 0.05, "publishing while down must fail at once"
        await asyncio.sleep(0.3)
        broker.start()
        assert await c.wait_connected(5), "did not connect once the broker came up"
        assert await asyncio.to_thread(retained, broker, AVAIL) == b"online"
    finally:
        await c.stop()
        broker.stop()


async def test_availability_online_retained_and_offline_on_clean_stop(mosquitto: Mosquitto) -> None:
    c = conn(mosquitto)
    await c.start()
    assert await c.wait_connected(5)
    assert await asyncio.to_thread(retained, mosquitto, AVAIL) == b"online"
    await c.stop()
    assert await asyncio.to_thread(retained, mosquitto, AVAIL) == b"offline"


def test_last_will_offline_when_the_process_dies(mosquitto: Mosquitto, tmp_path: Path) -> None:
    script = tmp_path / "speaker.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from device.config import MqttConfig
        from device.mqtt import MqttConnection
        async def main():
            cfg = MqttConfig(host="127.0.0.1", port={mosquitto.port}, device_id="kitchen", keepalive_s=5)
            c = MqttConnection(cfg, asyncio.get_running_loop(), availability_topic={AVAIL!r})
            await c.start()
            assert await c.wait_connected(5)
            await asyncio.sleep(0.2)
            print("up", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline() if proc.stdout else b""
        assert line.strip() == b"up", proc.stderr.read().decode() if proc.stderr else ""
        assert retained(mosquitto, AVAIL) == b"online"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        deadline = time.monotonic() + 5
        value = None
        while time.monotonic() < deadline:
            value = retained(mosquitto, AVAIL, timeout=1.0)
            if value == b"offline":
                break
        assert value == b"offline", "the broker did not publish the last will"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_restart_reconnects_resubscribes_and_fails_fast_while_down(mosquitto: Mosquitto) -> None:
    c = conn(mosquitto)
    got: list[tuple[str, bytes, bool, int]] = []
    connects: list[str] = []

    async def async_cb() -> None:
        connects.append("async")

    c.subscribe("home/+/state", lambda t, p, r: got.append((t, p, r, threading.get_ident())))
    c.on_connected(lambda: connects.append("sync"))
    c.on_connected(async_cb)
    other = BrokerSpy(mosquitto)  # used here only as a second client that publishes
    other.start()
    try:
        await c.start()
        assert await c.wait_connected(5)
        for _ in range(50):  # until our SUBSCRIBE has reached the broker
            other.client.publish("home/lamp/state", "on", qos=1)
            await asyncio.sleep(0.1)
            if got:
                break
        assert got and got[0][:3] == ("home/lamp/state", b"on", False)
        assert got[0][3] == threading.get_ident(), "callbacks must run on the event loop's thread"

        await asyncio.to_thread(mosquitto.stop)
        for _ in range(100):
            if not c.connected:
                break
            await asyncio.sleep(0.02)
        assert not c.connected
        t0 = time.monotonic()
        with pytest.raises(MqttUnavailable):
            await c.publish("home/lamp/set", "ON", qos=1)
        assert time.monotonic() - t0 < 0.05
        await asyncio.sleep(0.5)
        await asyncio.to_thread(mosquitto.start)
        assert await c.wait_connected(5), "no reconnect after the broker came back"
        assert other.connected.wait(5)
        await asyncio.sleep(0.2)
        got.clear()
        for _ in range(50):  # the other client may still be reconnecting: retry until it gets through
            other.client.publish("home/fan/state", "off", qos=1)
            await asyncio.sleep(0.1)
            if got:
                break
        assert ("home/fan/state", b"off") in [(t, p) for t, p, *_ in got], "subscription was not renewed after reconnect"
        assert connects.count("sync") == 2 and connects.count("async") == 2
        await c.publish("home/lamp/set", "ON", qos=1, wait_ack=True)
    finally:
        other.stop()
        await c.stop()


async def test_unsubscribe_stops_delivery(mosquitto: Mosquitto) -> None:
    c = conn(mosquitto)
    a: list[bytes] = []
    b: list[bytes] = []
    un_a = c.subscribe("x/y", lambda t, p, r: a.append(p))
    c.subscribe("x/#", lambda t, p, r: b.append(p))
    await c.start()
    try:
        assert await c.wait_connected(5)
        await c.publish("x/y", "1", qos=1, wait_ack=True)
        await asyncio.sleep(0.2)
        un_a()
        await c.publish("x/y", "2", qos=1, wait_ack=True)
        await asyncio.sleep(0.2)
        assert a == [b"1"]
        assert b"2" in b
    finally:
        await c.stop()


async def test_user_password_and_no_secret_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    broker = Mosquitto(tmp_path / "auth", passwords={"speaker": "s3cret-pw-xyz"})
    broker.start()
    good = conn(broker, username="speaker", password=Secret("s3cret-pw-xyz", "test"))
    bad = conn(broker, username="speaker", password=Secret("wrong-pw-abc", "test"), client_id="bad-client")
    try:
        await good.start()
        await bad.start()
        assert await good.wait_connected(5)
        await good.publish("a/b", "c", qos=1, wait_ack=True)
        assert not await bad.wait_connected(1.5), "a wrong password must not connect"
        assert "connected" in await good.probe()
        with pytest.raises(OSError, match="refused"):
            await bad.probe()
    finally:
        await good.stop()
        await bad.stop()
        broker.stop()
    text = caplog.text + repr([r.args for r in caplog.records])
    assert "s3cret-pw-xyz" not in text and "wrong-pw-abc" not in text


async def test_tls_with_ca_and_client_certificate(tmp_path: Path) -> None:
    try:
        tls = await asyncio.to_thread(make_tls_files, tmp_path / "tls")
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make test certificates: {exc}")
    broker = Mosquitto(tmp_path / "tlsb", tls=tls, require_certificate=True)
    broker.start()
    c = conn(broker, tls=True, ca_file=str(tls.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key))
    no_cert = conn(broker, tls=True, ca_file=str(tls.ca), client_id="nocert")
    try:
        await c.start()
        assert await c.wait_connected(5), broker.log_tail()
        await c.publish("t/x", "1", qos=1, wait_ack=True)
        assert "with TLS" in await c.probe()
        with pytest.raises(OSError):
            await no_cert.probe(timeout_s=1.5)
    finally:
        await c.stop()
        broker.stop()


async def test_probe_names_the_broker_when_nothing_listens() -> None:
    cfg = MqttConfig(host="127.0.0.1", port=free_port(), device_id="kitchen")
    c = MqttConnection(cfg, asyncio.get_running_loop(), availability_topic=AVAIL)
    with pytest.raises(OSError, match=f"127.0.0.1:{cfg.port}.*cannot connect"):
        await c.probe(timeout_s=2)


async def test_invalid_topics_are_rejected(mosquitto: Mosquitto) -> None:
    c = conn(mosquitto)
    await c.start()
    try:
        assert await c.wait_connected(5)
        for bad in ("", "a/#", "+/set", "a\x00b"):
            with pytest.raises(ValueError):
                await c.publish(bad, "x")
    finally:
        await c.stop()
