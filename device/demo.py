"""`speaker demo`: the real daemon, offline, with no hardware and no API key.

The microphone and speaker are ALSA `file` PCMs (a FIFO fed with espeak-ng speech at real-time pace,
and a WAV file); the cloud model is the local realtime simulator; where mosquitto is installed a
local broker and a simulated kitchen light show the home-device path. Everything between those
stand-ins is the daemon's own code path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import events as ev

DEFAULT_SCRIPT = [
    "hey jarvis, turn on the kitchen light",
    "hey jarvis, what's the weather like today?",
]
RATE = 16000
CHUNK = 1280 * 2  # 80 ms of 16 kHz S16 mono: the capture period divides it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthesize(text: str, workdir: Path) -> bytes:
    """Speech for the simulated person: espeak-ng, converted to 16 kHz S16 mono by sox."""
    wav = workdir / "say.wav"
    raw = workdir / "say.raw"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True, capture_output=True)
    subprocess.run(["sox", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", str(raw)], check=True, capture_output=True)
    return raw.read_bytes()


class MicFeeder(threading.Thread):
    """Writes silence and the utterances into the microphone FIFO at real-time pace."""

    def __init__(self, fifo: Path, utterances: list[bytes], gap_s: float) -> None:
        super().__init__(daemon=True, name="demo-mic")
        self.fifo, self.utterances, self.gap_s = fifo, utterances, gap_s
        self.done = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        silence = bytes(CHUNK)
        plan = [bytes(int(RATE * 2 * 1.5))]
        for u in self.utterances:
            plan += [u, bytes(int(RATE * 2 * self.gap_s) // CHUNK * CHUNK)]
        data = b"".join(plan)
        data += bytes(-len(data) % CHUNK)
        try:
            with open(self.fifo, "wb", buffering=0) as f:
                start = time.monotonic()
                sent = 0
                for i in range(0, len(data), CHUNK):
                    if self.stop.is_set():
                        return
                    f.write(data[i : i + CHUNK])
                    sent += 1
                    time.sleep(max(0.0, start + sent * 0.08 - time.monotonic()))
                self.done.set()
                while not self.stop.is_set():  # keep the microphone alive with silence
                    f.write(silence)
                    sent += 1
                    time.sleep(max(0.0, start + sent * 0.08 - time.monotonic()))
        except (BrokenPipeError, OSError):
            self.done.set()


class DemoLight:
    """A Zigbee2MQTT-style light on the local broker: applies commands and reports its state."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.state: dict[str, Any] = {"state": "OFF", "brightness": 0}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-kitchen-light")
        self.client.on_connect = lambda c, *_: (c.subscribe("zigbee2mqtt/kitchen_light/set", 1), self._report())
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _report(self) -> None:
        self.client.publish("zigbee2mqtt/kitchen_light", json.dumps(self.state), qos=1, retain=True)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with contextlib.suppress(ValueError, TypeError):
            cmd = json.loads(msg.payload)
            if isinstance(cmd, dict):
                if "state" in cmd:
                    s = str(cmd["state"]).upper()
                    self.state["state"] = ("OFF" if self.state["state"] == "ON" else "ON") if s == "TOGGLE" else s
                    if self.state["state"] == "ON" and not self.state["brightness"]:
                        self.state["brightness"] = 254
                if "brightness" in cmd:
                    self.state["brightness"] = int(cmd["brightness"])
                self._report()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not exe:
        return None
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, port
        time.sleep(0.05)
    proc.kill()
    return None


def _write_config(workdir: Path, sim: Any, mqtt_port: int | None) -> Path:
    key_file = workdir / "openai.key"
    key_file.write_text(sim.api_key + "\n")
    key_file.chmod(0o600)
    text = f"""
[audio]
input = "demo_mic"
output = "demo_spk"
input_rate = 16000
input_channels = 1
output_rate = 24000
output_channels = 1
[wake]
model = "hey_jarvis"
[realtime]
url = "{sim.ws_url}"
instructions = "You are a helpful voice assistant in the kitchen. Today is {{{{today}}}}. Devices: {{{{devices}}}}"
follow_up_s = 3.0
[auth]
api_base = "{sim.api_base}"
api_key_file = "{key_file}"
[state]
dir = "{workdir / 'state'}"
"""
    if mqtt_port:
        text += f"""
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
device_id = "demo"
[[devices]]
name = "kitchen light"
type = "light"
area = "kitchen"
schema = "json"
command_topic = "zigbee2mqtt/kitchen_light/set"
state_topic = "zigbee2mqtt/kitchen_light"
"""
    path = workdir / "speaker.toml"
    path.write_text(text)
    return path


def _script(says: list[str], *, with_light: bool) -> list[Any]:
    """What the simulated model answers to each utterance."""
    from services.simulator import Turn

    turns = []
    for text in says:
        heard = text.split(",", 1)[1].strip() if text.lower().startswith("hey jarvis,") else text
        if with_light and "kitchen light" in text.lower():
            action = "turn_off" if " off" in text.lower() else "turn_on"
            turns.append(
                Turn(
                    transcript=heard,
                    call="control_device",
                    arguments={"device": "kitchen light", "action": action},
                    then=f"Done, the kitchen light is {'off' if action == 'turn_off' else 'on'}.",
                )
            )
        elif "weather" in text.lower():
            turns.append(Turn(transcript=heard, say="I can't see outside from the kitchen, but the forecast says sunny and mild."))
        else:
            turns.append(Turn(transcript=heard, say="This is the offline simulator answering. With a real key, the model would."))
    return turns


def _printer(start: float) -> Any:
    def show(event: ev.Event) -> None:
        stamp = f"[{time.monotonic() - start:6.2f}s]"
        match event:
            case ev.StateChanged(new=new):
                print(f"{stamp} state: {new.value}")
            case ev.WakeDetected(model=model, score=score):
                print(f"{stamp} wake word {model!r} heard (score {score:.2f})")
            case ev.Transcript(role=role, text=text):
                print(f"{stamp} {'you' if role == 'user' else 'assistant'}: {text}")
            case ev.ToolCalled(name=name, arguments=args, result=result):
                print(f"{stamp} tool {name}({json.dumps(args)}) -> {json.dumps(result)}")
            case ev.ConversationEnded(reason=reason, usage=usage):
                print(f"{stamp} conversation ended ({reason}), tokens: {usage.get('total_tokens', '?')}")
            case ev.ErrorEvent(where=where, message=message):
                print(f"{stamp} error ({where}): {message}")
        sys.stdout.flush()

    return show


async def _demo(args: argparse.Namespace, workdir: Path, out: Path) -> int:
    from services.simulator import RealtimeSimulator

    from .app import App
    from .config import load_settings
    from .logs import settings_secrets, setup_logging

    says = args.say or DEFAULT_SCRIPT
    print("synthesizing the person's speech with espeak-ng ...")
    utterances = [synthesize(t, workdir) for t in says]

    fifo = workdir / "mic.fifo"
    os.mkfifo(fifo)
    reply = out / "reply.wav"
    asound = workdir / "asound.conf"
    asound.write_text(
        f'pcm.demo_mic {{ type file slave.pcm "null" file "/dev/null" infile "{fifo}" format "raw" }}\n'
        f'pcm.demo_spk {{ type file slave.pcm "null" file "{reply}" format "wav" }}\n'
    )
    os.environ["ALSA_CONFIG_PATH"] = f"/usr/share/alsa/alsa.conf:{asound}"

    broker = await asyncio.to_thread(_start_mosquitto, workdir)
    sim = RealtimeSimulator(api_key="sk-demo-local-simulator", script=_script(says, with_light=broker is not None))
    await sim.start()
    light = None
    if broker:
        light = await asyncio.to_thread(DemoLight, broker[1])
        print(f"local mosquitto on port {broker[1]} with a simulated 'kitchen light'")
    else:
        print("mosquitto is not installed: the demo runs without home devices")
    config = _write_config(workdir, sim, broker[1] if broker else None)
    settings = load_settings(config)
    setup_logging("info" if args.verbose else "error", settings_secrets(settings))

    app = App(settings)
    start = time.monotonic()
    app.bus.subscribe(_printer(start))
    feeder = MicFeeder(fifo, utterances, gap_s=9.0)
    print(f"the person says: {' ... '.join(repr(s) for s in says)}")
    run = asyncio.create_task(app.run())
    feeder.start()
    try:
        while not feeder.done.is_set() and not run.done():
            await asyncio.sleep(0.2)
        # Let the last conversation finish.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not run.done():
            a = app.assistant
            if a is not None and a.state in (ev.State.IDLE, ev.State.ERROR):
                break
            await asyncio.sleep(0.2)
    finally:
        app.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 10)
        feeder.stop.set()
        if light:
            light.close()
        if broker:
            broker[0].terminate()
            broker[0].wait(5)
        await sim.stop()
    seconds = max(0, reply.stat().st_size - 44) / 2 / 24000 if reply.exists() else 0
    print(f"the speaker's output ({seconds:.1f} s of audio) is in {reply}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of `speaker demo`."""
    for tool in ("espeak-ng", "sox"):
        if not shutil.which(tool):
            print(f"speaker demo: needs {tool} to speak for the simulated person (apt-get install {tool})", file=sys.stderr)
            return 1
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="speaker-demo-") as tmp:
        try:
            return asyncio.run(_demo(args, Path(tmp), out))
        except KeyboardInterrupt:
            return 130
