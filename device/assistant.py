"""The assistant: the public face of the conversation core.

:class:`Assistant` keeps the API that the daemon, buttons, MQTT, tools and tests use, and hands
everything to the conversation machine (device/conversation/machine.py, the rules) through its
runner (device/conversation/runner.py, the sockets, tasks and deadlines). It owns what is not the
conversation's: the microphone's pre-roll, the wake word, volume and the saved mute/volume state.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .arbitration import claim_score
from .audio.cues import cue_ms
from .audio.ringbuffer import PreRoll
from .config import Settings
from .conversation import inputs as ip
from .conversation.inputs import Announcement
from .conversation.machine import Conv, Model, Params, wants_audio
from .conversation.runner import Hooks, Interruption, Runner
from .events import EventBus, State, VolumeChanged
from .realtime.session_setup import SessionSetup
from .tools.registry import ToolRegistry

if TYPE_CHECKING:
    from .arbitration import Arbiter
    from .audio.capture import Capture
    from .audio.frames import AudioFrame
    from .audio.playback import Playback
    from .realtime.tokens import TokenSource
    from .wakeword import Detection, WakeWord

_LOG = logging.getLogger("speaker.assistant")

PREROLL_S = 3.0  # recent microphone audio kept for the words after the wake word
# openWakeWord fires 200-550 ms after the end of the wake word, while the person is already
# saying the next words: the session's input starts this long before the detection.
LOOKBACK_S = 0.6
WAKE_WORD_S = 1.5  # audio that holds the whole wake word, for the arbitration score
BUTTON_LOOKBACK_S = 0.2  # people start talking while pressing the talk button
ANNOUNCEMENT_MAX_CHARS = 2000
ERROR_HOLD_MAX_S = 1.2  # the error state is shown while its cue plays, at least ERROR_MIN_S
ERROR_MIN_S = 0.5
ALARM_GAP_S = 0.6  # silence between alarm bursts
RING_MAX_S = 300.0


def machine_params(settings: Settings, *, arbitration: bool, ring_max_s: float | None = None) -> Params:
    """The machine's parameters from the settings."""
    rt = settings.realtime
    if ring_max_s is None:
        ring_max_s = float(getattr(getattr(settings, "timers", None), "ring_max_s", RING_MAX_S))
    return Params(
        barge_in=rt.barge_in,
        follow_up_s=rt.follow_up_s,
        response_timeout_s=rt.response_timeout_s,
        max_session_s=rt.max_session_s,
        arbitration=arbitration,
        dnd_announcements=settings.audio.dnd_announcements,
        error_hold_s=min(ERROR_HOLD_MAX_S, max(ERROR_MIN_S, cue_ms("error") / 1000 + 0.25)),
        ring_max_s=ring_max_s,
        alarm_period_s=cue_ms("alarm") / 1000 + ALARM_GAP_S,
    )


class Assistant:
    """The conversation state machine (DESIGN.md section 1); lives on the event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: EventBus,
        capture: Capture,
        playback: Playback,
        wake: WakeWord,
        tokens: TokenSource | None,
        tools: ToolRegistry,
        arbiter: Arbiter | None = None,
        devices_summary: Callable[[], str] = lambda: "",
        lookback_s: float = LOOKBACK_S,
        ring_max_s: float | None = None,
        session_setup: SessionSetup | None = None,
    ) -> None:
        self.settings = settings
        self.rt = settings.realtime
        self.bus = bus
        self.capture = capture
        self.playback = playback
        self.wake = wake
        self.tokens = tokens
        self.tools = tools
        self.arbiter = arbiter
        self.devices_summary = devices_summary
        self.setup = session_setup or SessionSetup(settings, tools, devices_summary=devices_summary)
        self.lookback_s = lookback_s
        self.volume = settings.audio.volume
        self._preroll = PreRoll(PREROLL_S)
        self._store: Any = None
        params = machine_params(settings, arbitration=arbiter is not None, ring_max_s=ring_max_s)
        self._runner = Runner(
            Model(params=params), rt=self.rt, bus=bus, playback=playback, tokens=tokens, tools=tools, arbiter=arbiter,
            setup=self.setup,
            hooks=Hooks(
                set_capture_muted=self._set_capture_muted,
                clear_preroll=self._preroll.clear,
                reset_wake=self._reset_wake,
                persist=self._persist,
            ),
        )
        self.interruptions = self._runner.interruptions
        # The wake word's inference runs in the capture's analysis thread, beside the echo canceller
        # (on a small Pi it would stall the loop every 80 ms); only detections come to the loop, on the frame.
        self._wake_lock = threading.Lock()
        capture.analyze = self._analyze
        tools.on_change(lambda: self._runner.feed(ip.ToolsChanged()))

    # ----- what others read ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._runner.model.state

    @property
    def muted(self) -> bool:
        """The microphone is muted."""
        return self._runner.model.muted

    @property
    def enabled(self) -> bool:
        """The assistant is on (off: no wake word, no conversations; distinct from the mic's mute)."""
        return self._runner.model.enabled

    @property
    def dnd(self) -> bool:
        """Do not disturb: no cues, announcements held or dropped (``audio.dnd_announcements``)."""
        return self._runner.model.dnd

    @property
    def ringing(self) -> bool:
        return self._runner.model.ring is not None

    @property
    def ring_max_s(self) -> float:
        """How long a timer rings when nobody stops it."""
        return self._runner.model.params.ring_max_s

    @ring_max_s.setter
    def ring_max_s(self, seconds: float) -> None:
        m = self._runner.model
        m.params = dataclasses.replace(m.params, ring_max_s=float(seconds))

    @property
    def conversation(self) -> Conv | None:
        """The open conversation, if any (read-only use)."""
        return self._runner.model.conv

    def render_instructions(self) -> str:
        """``realtime.instructions`` with its placeholders filled for this moment."""
        return self.setup.instructions()

    # ----- start / stop ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore mute, volume, on/off and do-not-disturb; publish the initial state."""
        muted, volume, enabled, dnd = False, self.settings.audio.volume, True, False
        self._store = self._open_store()
        if self._store is not None:
            try:
                saved = self._store.load()
                muted, volume, enabled, dnd = bool(saved.muted), int(saved.volume), bool(saved.enabled), bool(saved.dnd)
            except Exception as exc:
                _LOG.warning("could not read the saved mute/volume state: %s: %s", type(exc).__name__, exc)
        self.volume = max(0, min(100, volume))
        self.playback.volume = self.volume
        self.bus.publish(VolumeChanged(volume=self.volume, source="startup"))
        self._runner.feed(ip.Start(muted=muted))
        if not enabled:
            self._runner.feed(ip.Enable(False, "saved state"))
        if dnd:
            self._runner.feed(ip.Dnd(True, "saved state"))

    async def stop(self) -> None:
        """End any conversation or ringing (closing its socket) and drop queued announcements."""
        self._runner.feed(ip.Shutdown())
        await self._runner.stop()

    def _open_store(self) -> Any:
        try:
            from . import state_store
        except ImportError:
            return None
        try:
            return state_store.StateStore.for_settings(self.settings)
        except Exception as exc:
            _LOG.warning("mute/volume will not survive a restart: %s: %s", type(exc).__name__, exc)
            return None

    def _persist(self) -> None:
        if self._store is None:
            return
        try:
            self._store.update(muted=self.muted, volume=self.volume, enabled=self.enabled, dnd=self.dnd)
        except Exception as exc:
            _LOG.warning("could not save the mute/volume state: %s: %s", type(exc).__name__, exc)

    def _set_capture_muted(self, muted: bool) -> None:
        self.capture.muted = muted


    # ----- microphone -------------------------------------------------------------------------------

    def _analyze(self, frame: AudioFrame) -> AudioFrame:
        """In the capture's analysis thread: score the frame (fed continuously so the model's feature window
        never has gaps; acted on only when it matters)."""
        with self._wake_lock:
            detection = self.wake.process(frame.for_wake)
        return frame if detection is None else dataclasses.replace(frame, wake=detection)

    def _reset_wake(self) -> None:
        with self._wake_lock:
            self.wake.reset()

    def on_frame(self, frame: AudioFrame) -> None:
        """Capture's callback, on the loop: pre-roll, conversation audio, wake word."""
        if self.muted or not self.enabled:
            return  # capture discards at the source; this guards a frame already on its way
        self._preroll.append(frame)
        if wants_audio(self._runner.model):
            self._runner.feed(ip.Frame(frame.pcm24k, frame.echo_settled))
        if frame.wake is not None:
            self.on_wake(frame.wake, frame.t)

    def on_wake(self, det: Detection, t: float) -> None:
        """A wake-word detection in the frame captured at ``t``."""
        frames = tuple(f.pcm24k for f in self._preroll.since(t - self.lookback_s))
        score = det.score
        if self.arbiter is not None and self.state is State.IDLE:
            # Speakers compare how loud they heard the wake word: the nearest one answers.
            score = claim_score(det.score, b"".join(f.pcm16k for f in self._preroll.since(t - WAKE_WORD_S)))
        self._runner.feed(ip.Wake(det.model, det.score, frames, score))

    def _button_frames(self) -> tuple[bytes, ...]:
        return tuple(f.pcm24k for f in self._preroll.since(time.monotonic() - BUTTON_LOOKBACK_S))

    # ----- the actions of buttons, MQTT and tools ---------------------------------------------------

    async def set_muted(self, muted: bool, source: str) -> None:
        """Mute: no mic frame leaves capture, any conversation is closed, playback stops."""
        self._runner.feed(ip.Mute(muted, source))

    async def set_enabled(self, enabled: bool, source: str) -> None:
        """Switch the assistant on or off."""
        self._runner.feed(ip.Enable(bool(enabled), source))

    async def set_dnd(self, on: bool, source: str) -> None:
        """Do not disturb on or off."""
        self._runner.feed(ip.Dnd(bool(on), source))

    async def toggle_mute(self, source: str) -> None:
        await self.set_muted(not self.muted, source)

    async def talk_pressed(self) -> None:
        """Talk button: idle -> converse; speaking -> stop; listening/follow-up -> end; ringing -> stop."""
        self._runner.feed(ip.TalkPressed(self._button_frames()))

    async def talk_down(self) -> None:
        """Push-to-talk: the talk button went down; the person's turn streams until :meth:`talk_up`."""
        self._runner.feed(ip.TalkDown(self._button_frames()))

    async def talk_up(self) -> None:
        """Push-to-talk: released; the turn is committed and answered."""
        self._runner.feed(ip.TalkUp())

    async def start_conversation(self, prompt: str | None = None, source: str = "api") -> None:
        """Open a session without the wake word; with ``prompt`` the assistant speaks first."""
        if self.muted:
            _LOG.info("start conversation (%s) ignored: muted", source)
            return
        self._runner.feed(ip.StartConversation(source, prompt or None, () if prompt else self._button_frames()))

    async def stop_speaking(self, source: str = "api") -> None:
        """Stop the reply now (the barge-in path) and wait for the person to answer."""
        self._runner.feed(ip.StopSpeaking(source))

    async def stop_conversation(self, source: str = "api") -> None:
        """Stop a reply, end the conversation or stop the ringing, at once (automations)."""
        self._runner.feed(ip.StopConversation(source))

    def request_end(self, reason: str) -> bool:
        """End the open conversation after the current reply (end_conversation tool)."""
        if self.conversation is None:
            return False
        self._runner.feed(ip.RequestEnd(reason))
        return True

    async def set_volume(self, volume: int, source: str) -> None:
        """Set the speech volume 0-100 (applied to the next samples written)."""
        volume = max(0, min(100, int(volume)))
        self.playback.volume = volume
        changed = volume != self.volume
        self.volume = volume
        if changed or source != "startup":
            self.bus.publish(VolumeChanged(volume=volume, source=source))
        self._persist()

    async def announce(self, text: str, *, chime: bool = True, then_listen: bool = False) -> None:
        """Speak ``text`` verbatim through a realtime session, after any running conversation."""
        text = text.strip()[:ANNOUNCEMENT_MAX_CHARS]
        if text:
            self._runner.feed(ip.Announce(Announcement(text, chime, then_listen)))

    async def ask(self, text: str, source: str = "api") -> None:
        """A text question, answered aloud (in the open conversation, or in a new one)."""
        text = text.strip()[:ANNOUNCEMENT_MAX_CHARS]
        if text:
            self._runner.feed(ip.Ask(text, source))

    # ----- timers and reminders ----------------------------------------------------------------------

    def ring(self, ring_id: str, kind: str, text: str) -> None:
        """A timer or reminder is due: ring (now, or once the running conversation is over)."""
        self._runner.feed(ip.Ring(ring_id, kind, text))

    def stop_ringing(self, source: str) -> bool:
        """Stop the ringing; True if something was ringing."""
        if self._runner.model.ring is None:
            return False
        self._runner.feed(ip.StopRinging(source))
        return True


__all__ = ["Announcement", "Assistant", "Interruption"]
