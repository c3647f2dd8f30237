"""ALSA test rig: file PCMs fed through FIFOs at real-time pace (DESIGN.md section 4).

Fixture ``alsa_rig`` (per test) writes an asound.conf into a temporary directory and points
this process at it (``ALSA_CONFIG_PATH``); for a daemon subprocess pass ``rig.env``. PCMs:

- ``test_mic``     microphone, 16 kHz mono S16 (FIFO ``mic.fifo``)
- ``test_mic48``   microphone that only offers 48 kHz stereo S16 (FIFO ``mic48.fifo``)
- ``test_spk``     speaker, 24 kHz mono S16, written to the file ``spk.raw``
- ``test_spk48``   speaker that only takes 48 kHz stereo S16, written to ``spk48.raw``
- ``test_spk_fifo`` speaker, 24 kHz mono S16, into ``spk.fifo`` (read at real-time pace)
- ``test_pulse``   speaker on a private PulseAudio null sink (``rig.start_pulse()`` first): paced
  in real time by a clock and reporting its delay, for played-position tests (the file PCMs'
  ``null`` slave reports no delay, so there "played" equals "written")

``rig.start_mic("test_mic")`` starts the feeder process (silence unless told otherwise);
``mic.play(samples16k)`` queues an utterance and returns an :class:`Utterance` whose
``started``/``ended`` are filled in when its first/last 80 ms chunk was handed to the FIFO.
``rig.start_speaker("test_spk_fifo")`` starts the real-time FIFO reader.
Every process started here is stopped at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soxr

_IO = Path(__file__).with_name("alsa_io.py")


@dataclass(frozen=True)
class PcmSpec:
    name: str
    rate: int
    channels: int
    path: str  # FIFO (mic, spk_fifo) or output file
    capture: bool
    fifo: bool

    @property
    def bytes_per_s(self) -> int:
        return self.rate * self.channels * 2


@dataclass
class Utterance:
    id: int
    seconds: float  # length of the audio played
    started: float | None = None  # time.monotonic() when its first chunk was handed to the FIFO
    ended: float | None = None
    _started: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout: float) -> bool:
        """Wait until the whole utterance was fed; True if it was."""
        return self._done.wait(timeout)

    def wait_started(self, timeout: float) -> bool:
        """Wait until its first chunk was fed; True if it was."""
        return self._started.wait(timeout)


class _Process:
    """A rig helper process reporting JSON events on stdout."""

    def __init__(self, args: list[str], script: Path = _IO) -> None:
        self.proc = subprocess.Popen([sys.executable, str(script), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._cond:
                self.events.append(event)
                self._on_event(event)
                self._cond.notify_all()

    def _on_event(self, event: dict) -> None:
        pass

    def wait_event(self, ev: str, timeout: float, after: int = 0) -> dict | None:
        """The first event named ``ev`` at index >= ``after``; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[after:]:
                    if e["ev"] == ev:
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def send(self, **cmd: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


class MicFeeder(_Process):
    """The microphone: a feeder process writing 80 ms chunks into the FIFO at real-time pace."""

    def __init__(self, spec: PcmSpec, workdir: Path) -> None:
        self.spec = spec
        self._dir = workdir
        self._utterances: dict[int, Utterance] = {}
        self._next_id = 0
        super().__init__(["mic", spec.path, str(spec.bytes_per_s * 8 // 100)])

    def _on_event(self, event: dict) -> None:
        u = self._utterances.get(event.get("id", -1))
        if u is None:
            return
        if event["ev"] == "start":
            u.started = event["t"]
            u._started.set()
        elif event["ev"] == "end":
            u.ended = event["t"]
            u._done.set()

    def play(self, samples16k: np.ndarray | bytes) -> Utterance:
        """Queue 16 kHz S16 mono audio (converted to the PCM's format); returns its handle."""
        x = np.frombuffer(samples16k, dtype=np.int16) if isinstance(samples16k, bytes) else np.asarray(samples16k, dtype=np.int16)
        if self.spec.rate != 16000:
            x = soxr.resample(x, 16000, self.spec.rate, quality="HQ")
        if self.spec.channels > 1:
            x = np.repeat(x, self.spec.channels)
        self._next_id += 1
        uid = self._next_id
        path = self._dir / f"utt-{os.getpid()}-{id(self)}-{uid}.raw"
        path.write_bytes(x.astype("<i2").tobytes())
        u = Utterance(uid, len(x) / self.spec.channels / self.spec.rate)
        with self._cond:
            self._utterances[uid] = u
        self.send(op="play", id=uid, path=str(path))
        return u

    def vanish(self, seconds: float) -> None:
        """Close the FIFO for ``seconds`` (the device disappears), then reopen it."""
        self.send(op="vanish", seconds=seconds)


class SpeakerReader(_Process):
    """The speaker FIFO's reader: consumes at real-time pace into a file."""

    def __init__(self, spec: PcmSpec, out: Path) -> None:
        self.spec = spec
        self.out = out
        out.write_bytes(b"")
        super().__init__(["spk", spec.path, str(out), str(spec.bytes_per_s)])

    def data(self) -> bytes:
        return self.out.read_bytes()


class AlsaRig:
    """The rig's PCM definitions, files and helper processes."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.pcms: dict[str, PcmSpec] = {}
        lines: list[str] = []
        d = workdir
        for name, rate, ch in (("test_mic", 16000, 1), ("test_mic48", 48000, 2)):
            fifo = d / f"{name.removeprefix('test_')}.fifo"
            os.mkfifo(fifo)
            self.pcms[name] = PcmSpec(name, rate, ch, str(fifo), capture=True, fifo=True)
            lines.append(f'pcm.{name}_raw {{ type file slave.pcm "null" file "/dev/null" infile "{fifo}" format "raw" }}')
            lines.append(f'pcm.{name} {{ type plug slave {{ pcm "{name}_raw" rate {rate} channels {ch} format S16_LE }} }}')
        for name, rate, ch, fifo in (("test_spk", 24000, 1, False), ("test_spk48", 48000, 2, False), ("test_spk_fifo", 24000, 1, True)):
            path = d / (f"{name.removeprefix('test_')}" + (".fifo" if fifo else ".raw"))
            if fifo:
                os.mkfifo(path)
            self.pcms[name] = PcmSpec(name, rate, ch, str(path), capture=False, fifo=fifo)
            lines.append(f'pcm.{name}_raw {{ type file slave.pcm "null" file "{path}" format "raw" }}')
            lines.append(f'pcm.{name} {{ type plug slave {{ pcm "{name}_raw" rate {rate} channels {ch} format S16_LE }} }}')
        self.pulse_socket = d / "pulse" / "native"
        lines.append(f'pcm.test_pulse {{ type pulse server "unix:{self.pulse_socket}" device "rig_sink" }}')
        self.conf = d / "asound.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.env = {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.conf}"}
        self._procs: list[_Process] = []
        self._pulse: subprocess.Popen[bytes] | None = None
        self._pulse_keepalive: subprocess.Popen[bytes] | None = None

    def start_mic(self, name: str = "test_mic") -> MicFeeder:
        """Start feeding the microphone FIFO of ``name`` (silence until told otherwise)."""
        spec = self.pcms[name]
        assert spec.capture, f"{name} is not a microphone"
        feeder = MicFeeder(spec, self.dir)
        self._procs.append(feeder)
        return feeder

    def start_speaker(self, name: str = "test_spk_fifo") -> SpeakerReader:
        """Start the real-time reader of a FIFO speaker."""
        spec = self.pcms[name]
        assert spec.fifo and not spec.capture, f"{name} is not a FIFO speaker"
        reader = SpeakerReader(spec, self.dir / f"{name}.out")
        self._procs.append(reader)
        # Ready before any writer: the FIFO is shrunk while it is still empty.
        if reader.wait_event("open", 10) is None:
            raise RuntimeError(f"the speaker reader for {name} did not start")
        return reader

    def start_pulse(self, rate: int = 24000, channels: int = 1) -> None:
        """Start a private PulseAudio server with a null sink behind the ``test_pulse`` PCM."""
        exe = shutil.which("pulseaudio")
        plugin = [*Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_pulse.so"), *Path("/usr/lib/alsa-lib").glob("libasound_module_pcm_pulse.so")]
        if exe is None or not plugin:
            pytest.skip("needs pulseaudio and ALSA's pulse plugin (Debian: pulseaudio libasound2-plugins)")
        home = self.pulse_socket.parent
        (home / "rt").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home / "rt"), PULSE_RUNTIME_PATH=str(home / "rt"))
        proc = subprocess.Popen(
            [exe, "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--disallow-exit", "--log-target=stderr",
             "--log-level=error", "-L", f"module-null-sink sink_name=rig_sink rate={rate} channels={channels}",
             "-L", f"module-native-protocol-unix socket={self.pulse_socket} auth-anonymous=1"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._pulse = proc
        deadline = time.monotonic() + 10
        while not self.pulse_socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pulseaudio did not start for the rig")
            time.sleep(0.05)
        # An idle null sink wakes up only every 2 s, so a new stream can wait that long to start.
        # A quiet low-latency stream keeps it running with short ticks, like a real card.
        keepalive = subprocess.Popen(
            ["aplay", "-q", "-D", "test_pulse", "-r", str(rate), "-c", str(channels), "-f", "S16_LE", "-t", "raw",
             "--buffer-time=40000", "/dev/zero"],
            env=dict(os.environ, **self.env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._pulse_keepalive = keepalive
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until a short stream plays promptly
            t0 = time.monotonic()
            subprocess.run(["aplay", "-q", "-D", "test_pulse", "-r", str(rate), "-c", str(channels), "-f", "S16_LE", "-t", "raw"],
                           input=bytes(rate * channels * 2 // 20), env=dict(os.environ, **self.env), timeout=10,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if time.monotonic() - t0 < 0.5:
                break

    def speaker_output(self, name: str = "test_spk") -> bytes:
        """What a file speaker received (the plugin truncates it whenever the PCM is opened)."""
        return Path(self.pcms[name].path).read_bytes()

    def audio_toml(self, mic: str = "test_mic", speaker: str = "test_spk") -> str:
        """An ``[audio]`` section using the rig's PCMs."""
        return f'[audio]\ninput = "{mic}"\noutput = "{speaker}"\n'

    def close(self) -> None:
        for p in self._procs:
            p.stop()
        self._procs.clear()
        if self._pulse_keepalive is not None:
            self._pulse_keepalive.terminate()
            self._pulse_keepalive.wait(3)
            self._pulse_keepalive = None
        if self._pulse is not None:
            self._pulse.terminate()
            try:
                self._pulse.wait(3)
            except subprocess.TimeoutExpired:
                self._pulse.kill()
                self._pulse.wait(3)
            self._pulse = None


@pytest.fixture
def alsa_rig(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[AlsaRig]:
    """Rig PCMs for this test; this process uses them (ALSA_CONFIG_PATH), subprocesses get ``rig.env``."""
    rig = AlsaRig(tmp_path_factory.mktemp("alsa"))
    for key, value in rig.env.items():
        monkeypatch.setenv(key, value)
    try:
        yield rig
    finally:
        rig.close()
