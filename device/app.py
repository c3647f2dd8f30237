"""Wires the parts together and owns the event loop: signals, readiness and the watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from . import events as ev
from .config import Settings
from .sdnotify import Notifier
from .tools.registry import ToolRegistry

_LOG = logging.getLogger("speaker")

READY_TIMEOUT_S = 10.0  # report ready even if the microphone is slow, so systemd does not loop


def mqtt_wanted(settings: Settings) -> bool:
    """MQTT is used when the config file has an [mqtt] section that is not disabled."""
    return "mqtt" in settings.present and settings.mqtt.enabled


def gpio_wanted(settings: Settings) -> bool:
    """GPIO is used when a button or LEDs are configured."""
    g, leds = settings.gpio, settings.leds
    return g.mute_pin >= 0 or g.talk_pin >= 0 or leds.kind != "none"


def log_event(event: ev.Event) -> None:
    """The daemon's narrative on stderr: what it is doing, in one line per event."""
    match event:
        case ev.StateChanged(old=old, new=new, reason=reason):
            _LOG.info("state %s -> %s%s", old.value, new.value, f" ({reason})" if reason else "")
        case ev.WakeDetected(model=model, score=score):
            _LOG.info("wake word %s detected (score %.2f)", model, score)
        case ev.Transcript(role=role, text=text):
            _LOG.info("%s said: %s", "user" if role == "user" else "assistant", text)
        case ev.ToolCalled(name=name, arguments=args, result=result, duration_s=d):
            _LOG.info("tool %s(%s) -> %s in %.0f ms", name, args, result, d * 1000)
        case ev.ConversationEnded(reason=reason, usage=usage):
            _LOG.info("conversation ended (%s); usage %s", reason, usage)
        case ev.ErrorEvent(where=where, message=message):
            # Whoever publishes an error has logged it already (one line per fault).
            _LOG.debug("%s error published: %s", where, message)
        case ev.MuteChanged(muted=muted, source=source):
            _LOG.info("microphone %s (%s)", "muted" if muted else "unmuted", source)
        case ev.VolumeChanged(volume=volume, source=source):
            _LOG.info("volume %d (%s)", volume, source)
        case ev.AnnouncementEvent(text=text, status=status, reason=reason):
            _LOG.info("announcement %s: %r%s", status, text[:80], f" ({reason})" if reason else "")
        case ev.AudioHealth(summary=summary):
            _LOG.debug("microphone: %s", summary)


class App:
    """The daemon: builds every part from the settings, runs until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, *, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.bus = ev.EventBus()
        self.tools = ToolRegistry()
        self._stop = asyncio.Event()
        self._cleanups: list[Callable[[], Awaitable[Any] | Any]] = []
        self._first_frame = asyncio.Event()
        self.assistant: Any = None

    def request_stop(self) -> None:
        """Ask the daemon to shut down (signal handlers call this)."""
        self._stop.set()

    async def run(self) -> int:
        """Start everything, wait for a stop request, shut down cleanly. Returns the exit code."""
        loop = asyncio.get_running_loop()
        self.bus.bind(loop)
        self.bus.subscribe(log_event)
        from .status_file import StatusFile

        status = StatusFile(self.settings.state_dir)
        status.attach(self.bus)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        watchdog = loop.create_task(self._watchdog()) if self.notifier.watchdog_s else None
        try:
            await self._start(loop)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._first_frame.wait(), READY_TIMEOUT_S)
            if self._first_frame.is_set():
                self.notifier.notify("READY=1\nSTATUS=listening for the wake word")
                _LOG.info("ready: listening for the wake word %r", self.settings.wake.model)
            else:
                self.notifier.notify("READY=1\nSTATUS=waiting for the microphone")
                _LOG.warning("no audio from microphone %r yet; still trying", self.settings.audio.input)
            await self._stop.wait()
            _LOG.info("shutting down")
            self.notifier.notify("STOPPING=1")
        finally:
            if watchdog:
                watchdog.cancel()
            await self._shutdown()
            status.stopped()
            self.notifier.close()
        return 0

    async def _watchdog(self) -> None:
        # Sent from the loop itself: a hung loop stops the pings and systemd restarts us.
        assert self.notifier.watchdog_s
        interval = self.notifier.watchdog_s / 3
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _on_cleanup(self, fn: Callable[[], Awaitable[Any] | Any]) -> None:
        self._cleanups.append(fn)

    async def _shutdown(self) -> None:
        for fn in reversed(self._cleanups):
            try:
                result = fn()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, 1.5)
            except Exception:
                _LOG.exception("error during shutdown of %s", getattr(fn, "__qualname__", fn))
        self._cleanups.clear()

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        from .assistant import Assistant
        from .audio.capture import Capture
        from .audio.playback import Playback
        from .realtime.session_setup import SessionSetup
        from .tools.local import register_local_tools
        from .wakeword import WakeWord

        s = self.settings
        wake = WakeWord(s.wake)

        playback = Playback(s.audio, loop)
        playback.on_problem = lambda msg: self.bus.publish(ev.ErrorEvent(where="speaker", message=msg))
        frontend = _frontend(s, playback, loop)  # software echo cancellation and noise front-end (or None)
        playback.start()
        self._on_cleanup(playback.close)

        tokens = None
        if s.auth.mode != "none":
            from .realtime.tokens import TokenSource

            tokens = TokenSource(s)
            await tokens.start()
            self._on_cleanup(tokens.close)
        else:
            _LOG.warning("no [auth] token_url, api_key_file or OPENAI_API_KEY: the wake word will only play a cue")

        mqtt = None
        devices_summary: Callable[[], str] = lambda: ""
        vocabulary: Callable[[], list[str]] = lambda: []
        arbiter = None
        if mqtt_wanted(s):
            from .arbitration import Arbiter
            from .mqtt import MqttConnection
            from .tools.home import HomeDevices

            availability = f"{s.mqtt.topic_prefix}/{s.mqtt.device_id}/availability"
            mqtt = MqttConnection(s.mqtt, loop, availability_topic=availability)
            home = HomeDevices(s, mqtt, self.tools)
            devices_summary = home.summary
            vocabulary = home.vocabulary
            arbiter = Arbiter(s, mqtt)
            await home.start()
            await mqtt.start()
            self._on_cleanup(mqtt.stop)
            self._on_cleanup(home.stop)

        # ---- MCP: local servers bridged by the device (the daemon runs on if one is down) ----
        if any(server.local for server in s.mcp):
            from .tools.mcp_bridge import McpBridges

            bridges = McpBridges(s.mcp, self.tools, call_timeout_s=s.realtime.tool_timeout_s)
            await bridges.start()
            self._on_cleanup(bridges.stop)
        # ---- end MCP ----

        from .audio.health import AudioHealthMonitor
        from .audio.load import available_cores

        health = AudioHealthMonitor(self.bus.publish, frontend, cores=available_cores())

        def on_frame(frame: Any) -> None:
            if not self._first_frame.is_set():
                self._first_frame.set()
            health.on_frame(frame)
            assistant.on_frame(frame)

        mic_failing = False

        def mic_failed(msg: str) -> None:
            # Once per outage in the log and on MQTT; the retries in between at debug level.
            nonlocal mic_failing
            if mic_failing:
                _LOG.debug("microphone: %s", msg)
                return
            mic_failing = True
            _LOG.warning("microphone: %s", msg)
            self.bus.publish(ev.ErrorEvent(where="microphone", message=msg))

        def mic_back(msg: str) -> None:
            nonlocal mic_failing
            mic_failing = False
            _LOG.info("microphone: %s", msg)

        capture = Capture(s.audio, on_frame, loop, on_status=mic_failed, on_recovered=mic_back)
        capture.frontend = frontend
        capture.on_load = health.on_load
        assistant = Assistant(
            s,
            bus=self.bus,
            capture=capture,
            playback=playback,
            wake=wake,
            tokens=tokens,
            tools=self.tools,
            arbiter=arbiter,
            devices_summary=devices_summary,
            session_setup=SessionSetup(s, self.tools, devices_summary=devices_summary, vocabulary=vocabulary),
        )
        self.assistant = assistant
        register_local_tools(self.tools, assistant)
        await assistant.start()
        self._on_cleanup(assistant.stop)

        from .timers import TimerService, register_timer_tools

        # The assistant rings: its RINGING state plays the alarm until a button, the wake word,
        # MQTT or ring_max_s stops it, and waits for a running conversation to end first.
        timers = TimerService.for_settings(s, bus=self.bus, ringer=assistant)
        register_timer_tools(self.tools, timers)
        await timers.start()
        self._on_cleanup(timers.stop)

        if mqtt is not None:
            from .presence import Presence
            from .timers.mqtt import TimersMqtt

            presence = Presence(s, mqtt, self.bus, assistant)
            await presence.start()
            self._on_cleanup(presence.stop)
            timers_mqtt = TimersMqtt(s, mqtt, self.bus, timers, assistant)
            await timers_mqtt.start()
            self._on_cleanup(timers_mqtt.stop)

        if gpio_wanted(s):
            from .controls import Controls
            from .leds import StatusLeds

            # No GPIO on this machine is survivable: run on without buttons or LEDs, and say so.
            controls = Controls(s.gpio, assistant, loop)
            try:
                controls.start()
                self._on_cleanup(controls.close)
            except Exception as exc:
                _LOG.error("buttons unavailable (%s); running without them", exc)
            if s.leds.kind != "none":
                try:
                    leds = StatusLeds(s.leds, self.bus, pin_factory=controls.pin_factory or s.gpio.pin_factory or None)
                    leds.start(initial=assistant.state)
                    self._on_cleanup(leds.close)
                except Exception as exc:
                    _LOG.error("status LEDs unavailable (%s); running without them", exc)

        capture.start()
        self._on_cleanup(capture.stop)


def _frontend(s: Settings, playback: Any, loop: asyncio.AbstractEventLoop) -> Any:
    """The microphone front-end of ``[audio]`` (None when off); taps ``playback`` for echo cancellation,
    and keeps what the echo canceller learnt (the speaker's pace against the microphone, the echo
    path) across restarts."""
    from .audio.echo import frontend_for

    reference = paces = None
    if s.audio.echo_cancellation:
        from .audio.echo_memory import PaceMemory
        from .audio.reference import PlaybackReference

        reference = playback.reference = PlaybackReference()
        paces = PaceMemory(s.state_dir, microphone=s.audio.input, speaker=s.audio.output)
        kept = paces.load()
        if kept:
            reference.adjust_pace(kept)
            _LOG.info("echo reference: the speaker runs %+.1f ppm off the microphone's pace, as measured before "
                      "(%s)", kept, paces.path)
    elif s.realtime.barge_in == "voice":
        _LOG.warning("barge_in = \"voice\" without audio.echo_cancellation: unless the sound card cancels "
                     "its own echo, the speaker will hear and interrupt itself")
    fe = frontend_for(s.audio, reference)
    if fe is not None and paces is not None:
        from .audio.echo_memory import PathMemory

        paths = PathMemory(s.state_dir, microphone=s.audio.input, speaker=s.audio.output, taps=fe.path_taps)
        path = paths.load()
        if path is not None:
            fe.start_from(path)
            _LOG.info("echo canceller: starts from the echo path learnt before (the echo %.0f ms after the reference; "
                      "%s), to be tried on the first reply", path.delay_ms, paths.path)
        fe.on_pace = _in_loop(loop, paces.save)
        fe.on_path = _in_loop(loop, paths.save)
    return fe


def _in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[Any], Any]) -> Callable[[Any], None]:
    """``fn`` for another thread to call: it runs in ``loop`` (not at all once the loop has closed)."""
    def call(arg: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
            loop.call_soon_threadsafe(fn, arg)
    return call


async def run_daemon(settings: Settings) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit code."""
    return await App(settings).run()
