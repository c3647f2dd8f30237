"""The daemon from outside, as systemd and a household see it: `speaker run` and `speaker check`
on the rig (ALSA FIFO microphone with espeak-ng speech, ALSA file speaker, mosquitto, the realtime
simulator), with MQTT devices and the speaker's own topics."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tests.rig.broker import BrokerSpy, DeviceSimulator, Z2MLightSim
from tests.rig.daemon import run_cli
from tests.rig.home_fixtures import ikea_blind
from tests.rig.simulator import Turn, write_device_config

WAKE = "hey jarvis, turn on the kitchen light"


def _notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    return sock


def _messages(sock: socket.socket, until: float) -> list[str]:
    out: list[str] = []
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    return out


@pytest.mark.timeout(60)
def test_run_notifies_systemd_and_stops_cleanly_on_sigterm(tmp_path, alsa_rig, daemon_factory) -> None:
    alsa_rig.start_mic("test_mic")
    config = tmp_path / "speaker.toml"
    config.write_text(alsa_rig.audio_toml() + f'[state]\ndir = "{tmp_path / "state"}"\n')
    sock = _notify_socket(tmp_path)
    env = dict(alsa_rig.env, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="600000")
    d = daemon_factory(["run", "--config", str(config)], env)
    d.wait_for(r"ready: listening for the wake word", timeout=20)
    msgs = _messages(sock, time.monotonic() + 1.5)
    assert any("READY=1" in m for m in msgs), msgs
    assert sum("WATCHDOG=1" in m for m in msgs) >= 3, msgs  # every 0.2 s from the loop
    t0 = time.monotonic()
    code = d.stop(signal.SIGTERM)
    elapsed = time.monotonic() - t0
    assert code == 0, d.output
    assert elapsed < 2.0, f"shutdown took {elapsed:.2f} s"
    assert "Traceback" not in d.output
    assert any("STOPPING=1" in m for m in _messages(sock, time.monotonic() + 0.3) + msgs)


@pytest.mark.timeout(60)
def test_check_probes_what_the_config_names(tmp_path, alsa_rig, simulator, mosquitto) -> None:
    alsa_rig.start_mic("test_mic")
    sections = {
        "audio": {"input": "test_mic", "output": "test_spk"},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "device_id": "kitchen"},
    }
    good = write_device_config(tmp_path / "good", simulator, sections=sections)
    result = run_cli(["check", "--config", str(good)], env=alsa_rig.env)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("config", "microphone", "speaker", "wake word", "token source", "mqtt broker"):
        assert f"ok    {name}" in result.stdout, result.stdout

    sections["audio"] = {"input": "test_mic", "output": "no_such_speaker"}
    sections["mqtt"] = {"host": "127.0.0.1", "port": 1, "device_id": "kitchen"}
    bad = write_device_config(tmp_path / "bad", simulator, sections=sections)
    result = run_cli(["check", "--config", str(bad)], env=alsa_rig.env)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAIL  speaker") and "no_such_speaker" in line for line in lines), result.stdout
    assert any(line.startswith("FAIL  mqtt broker") for line in lines), result.stdout
    assert any(line.startswith("ok    microphone") for line in lines), result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.timeout(90)
@pytest.mark.simulator(
    script=[
        Turn(
            transcript="turn on the kitchen light",
            call="control_device",
            arguments={"device": "kitchen light", "action": "turn_on"},
            then="The kitchen light is on.",
        )
    ]
)
def test_voice_command_switches_a_zigbee_light(tmp_path, alsa_rig, speech, simulator, mosquitto, daemon_factory) -> None:
    devices = DeviceSimulator(mosquitto)
    light = Z2MLightSim("kitchen light", "0x00124b0001", area="kitchen")
    devices.add(light)
    devices.start()
    try:
        mic = alsa_rig.start_mic("test_mic")
        config = write_device_config(
            tmp_path,
            simulator,
            sections={
                "audio": {"input": "test_mic", "output": "test_spk"},
                "realtime": {"follow_up_s": 1.0},
                "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "device_id": "kitchen"},
                "state": {"dir": str(tmp_path / "state")},
            },
        )
        d = daemon_factory(["run", "--config", str(config)], alsa_rig.env)
        d.wait_for(r"ready: listening", timeout=20)
        d.wait_for(r"[Kk]itchen light", timeout=10)  # discovered (listed in a log line)
        mic.play(np.concatenate([speech.say(WAKE), speech.silence(1.5)]))
        d.wait_for(r"conversation ended", timeout=30)
        assert light.state["state"] == "ON"
        outputs = [json.loads(o["output"]) for s in simulator.sessions for o in s.function_outputs]
        assert outputs and outputs[0]["ok"] is True and outputs[0]["state"]["state"] == "on", outputs
        assert d.stop() == 0
        reply = alsa_rig.speaker_output("test_spk")
        assert len(reply) > 24000 * 2 * 0.8  # the spoken answer (and cues) came out of the speaker
    finally:
        devices.stop()


@pytest.mark.timeout(60)
@pytest.mark.simulator(
    script=[
        Turn(
            transcript="set the blinds in the living room to thirty percent",
            call="control_device",
            arguments={"device": "the blinds in the living room", "action": "set", "position": 30},
            then="The living room blinds are at thirty percent.",
        )
    ]
)
def test_voice_command_sets_a_zigbee2mqtt_blind_by_area(tmp_path, alsa_rig, speech, simulator, mosquitto, daemon_factory) -> None:
    """The blind as Zigbee2MQTT 2.x announces it (name: null cover, battery, linkquality, update...)."""
    devices = DeviceSimulator(mosquitto)
    blind = ikea_blind(device_options={"suggested_area": "Living room"})
    devices.add(blind)
    devices.start()
    try:
        mic = alsa_rig.start_mic("test_mic")
        config = write_device_config(
            tmp_path,
            simulator,
            sections={
                "audio": {"input": "test_mic", "output": "test_spk"},
                "realtime": {"follow_up_s": 1.0, "instructions": "You help at home. Devices:\n{{devices}}"},
                "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "device_id": "kitchen"},
                "state": {"dir": str(tmp_path / "state")},
            },
        )
        d = daemon_factory(["run", "--config", str(config)], alsa_rig.env)
        d.wait_for(r"ready: listening", timeout=20)
        d.wait_for(r"Living room blinds Battery", timeout=10)  # the whole device was discovered
        mic.play(np.concatenate([speech.say("hey jarvis, set the blinds in the living room to thirty percent"),
                                 speech.silence(1.5)]))
        d.wait_for(r"conversation ended", timeout=30)
        assert blind.commands and blind.commands[-1] == ("zigbee2mqtt/Living room blinds/set", '{ "position": 30 }')
        assert blind.state["position"] == 30
        outputs = [json.loads(o["output"]) for s in simulator.sessions for o in s.function_outputs]
        assert outputs and outputs[0]["ok"] is True and outputs[0]["state"]["position"] == 30, outputs
        instructions = simulator.sessions[0].config.get("instructions", "")
        assert "Living room blinds (cover, Living room)" in instructions, instructions
        assert d.stop() == 0
    finally:
        devices.stop()


@pytest.mark.timeout(90)
@pytest.mark.simulator(pace=2.0)
def test_mqtt_mute_announce_and_availability(tmp_path, alsa_rig, simulator, mosquitto, daemon_factory) -> None:
    spy = BrokerSpy(mosquitto)
    spy.start()
    try:
        alsa_rig.start_mic("test_mic")
        config = write_device_config(
            tmp_path,
            simulator,
            sections={
                "audio": {"input": "test_mic", "output": "test_spk"},
                "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "device_id": "kitchen"},
                "state": {"dir": str(tmp_path / "state")},
            },
        )
        d = daemon_factory(["run", "--config", str(config)], alsa_rig.env)
        d.wait_for(r"ready: listening", timeout=20)
        assert spy.wait_for(lambda m: m.topic == "speaker/kitchen/availability" and m.payload == b"online", 10)
        assert spy.wait_for(lambda m: m.topic.startswith("homeassistant/switch/") and m.topic.endswith("/config"), 10)

        spy_pub = DeviceSimulator(mosquitto)
        spy_pub.start()
        spy_pub.publish("speaker/kitchen/mute/set", "ON")
        assert spy.wait_for(lambda m: m.topic == "speaker/kitchen/mute" and m.payload == b"ON", 5)
        assert spy.wait_for(lambda m: m.topic == "speaker/kitchen/state" and m.payload == b"muted", 5)
        spy_pub.publish("speaker/kitchen/announce", "The washing machine is done.")
        dropped = spy.wait_for(lambda m: m.topic == "speaker/kitchen/event" and b"dropped" in m.payload, 5)
        assert dropped is not None
        assert not simulator.sessions  # nothing was spoken while muted

        spy_pub.publish("speaker/kitchen/volume/set", "150")  # out of range: ignored
        spy_pub.publish("speaker/kitchen/mute/set", "OFF")
        assert spy.wait_for(lambda m: m.topic == "speaker/kitchen/state" and m.payload == b"idle", 5)
        spy_pub.publish("speaker/kitchen/announce", json.dumps({"text": "The washing machine is done.", "chime": False}))
        spoken = spy.wait_for(lambda m: m.topic == "speaker/kitchen/event" and b'"spoken"' in m.payload, 30)
        assert spoken is not None, d.output
        creates = [e for s in simulator.sessions for e in s.client_events if e["type"] == "response.create"]
        assert any("The washing machine is done." in json.dumps(e) for e in creates)
        assert not any(m.topic == "speaker/kitchen/volume" and m.payload == b"150" for m in spy.snapshot())
        spy_pub.stop()

        assert d.stop() == 0
        assert spy.wait_for(lambda m: m.topic == "speaker/kitchen/availability" and m.payload == b"offline", 5)
        assert "Traceback" not in d.output
    finally:
        spy.stop()


@pytest.mark.timeout(120)
@pytest.mark.simulator(pace=2.0)
def test_three_speakers_one_wake_word_only_the_loudest_answers(tmp_path, speech, simulator, mosquitto, daemon_factory) -> None:
    from tests.rig.alsa import AlsaRig

    # The loudest is neither the first nor the last device id, so a tie-break cannot pass the test.
    gains = {"a_hall": 0.08, "b_kitchen": 1.0, "c_living": 0.3}
    for name in gains:
        (tmp_path / f"alsa-{name}").mkdir()
    rigs = {name: AlsaRig(tmp_path / f"alsa-{name}") for name in gains}
    try:
        mics = {name: rig.start_mic("test_mic") for name, rig in rigs.items()}
        daemons = {}
        for name, rig in rigs.items():
            config = write_device_config(
                tmp_path / name,
                simulator,
                sections={
                    "audio": {"input": "test_mic", "output": "test_spk"},
                    "realtime": {"follow_up_s": 1.0},
                    "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "device_id": name},
                    "state": {"dir": str(tmp_path / name / "state")},
                },
            )
            daemons[name] = daemon_factory(["run", "--config", str(config)], rig.env)
        for d in daemons.values():
            d.wait_for(r"ready: listening", timeout=30)
        time.sleep(1.0)  # every speaker has seen the others come online
        words = np.concatenate([speech.say("hey jarvis, what time is it?"), speech.silence(1.0)]).astype(np.float64)
        for name, mic in mics.items():
            mic.play((words * gains[name]).astype(np.int16))
        for d in daemons.values():
            d.wait_for(r"wake word hey_jarvis detected", timeout=15)
        time.sleep(2.0)
        answered = [name for name, d in daemons.items() if "state idle -> listening" in d.output]
        assert answered == ["b_kitchen"], {n: d.output[-2000:] for n, d in daemons.items()}
        assert len(simulator.sessions) == 1
        for name, d in daemons.items():
            if name != "b_kitchen":
                assert re.search(r"wake arbitration: lost to b_kitchen|standing down", d.output), d.output[-2000:]
                assert not np.frombuffer(rigs[name].speaker_output("test_spk"), dtype=np.int16).any()  # no cue, nothing
        assert np.frombuffer(rigs["b_kitchen"].speaker_output("test_spk"), dtype=np.int16).any()
    finally:
        for rig in rigs.values():
            rig.close()
