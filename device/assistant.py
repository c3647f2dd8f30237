"""The conversation state machine: wake word -> realtime session -> reply -> follow-up -> idle.

One :class:`Assistant` lives on the event loop and is the only owner of conversation state. A
conversation (one realtime session) is a :class:`_Conversation` run as one task; microphone frames,
server events, buttons and MQTT commands all reach it on the loop, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .audio.ringbuffer import PreRoll
from .arbitration import claim_score
from .config import Settings
from .events import (
    AnnouncementEvent,
    ConversationEnded,
    ErrorEvent,
    Event,
    EventBus,
    MuteChanged,
    State,
    StateChanged,
    ToolCalled,
    Transcript,
    VolumeChanged,
    WakeDetected,
)
from .realtime import protocol
from .realtime.session import RealtimeSession, SessionClosed
from .realtime.mcp_events import McpEvents
from .realtime.session_setup import SessionSetup
from .tools.registry import ToolRegistry

if TYPE_CHECKING:
    from .arbitration import Arbiter
    from .audio.capture import AudioFrame, Capture
    from .audio.playback import Playback
    from .realtime.tokens import TokenSource
    from .wakeword import Detection, WakeWord

_LOG = logging.getLogger("speaker.assistant")

PREROLL_S = 3.0  # recent microphone audio kept for the words after the wake word
# openWakeWord fires 200-550 ms after the end of the wake word, while the person is already
# saying the next words: the session's input starts this long before the detection.
WAKE_WORD_S = 1.5  # audio that holds the whole wake word, for the arbitration score
LOOKBACK_S = 0.6
BUTTON_LOOKBACK_S = 0.2  # people start talking while pressing the talk button
FIRST_TURN_MIN_S = 6.0  # after the wake word, wait at least this long for speech to start
ERROR_HOLD_S = 1.2  # longest the error state waits for its cue before idle; < 2 s in total
ERROR_MIN_S = 0.5  # shortest time the error state is shown
SUPERVISE_S = 0.1  # how often timers (silence, follow-up, session age) are checked
CLOSE_TIMEOUT_S = 1.0
SESSION_GRACE_S = 60.0  # a session past max_session_s mid-turn gets this long to finish the reply
ANNOUNCEMENT_MAX_CHARS = 2000
DRAIN_SLACK_S = 5.0

# Races with the server's own turn handling (it interrupted or answered first): nothing to tell anyone.
_BENIGN_ERRORS = {"response_cancel_not_active", "conversation_already_has_active_response"}
_NORMAL_ENDS = {"no speech", "no follow-up", "end_conversation", "talk button", "session limit"}


class _Failure(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class _StandDown(Exception):
    """Another speaker won the wake-word arbitration."""


@dataclass(frozen=True)
class Announcement:
    """A text to be spoken verbatim, queued behind any running conversation."""

    text: str
    chime: bool = True
    then_listen: bool = False


@dataclass(frozen=True)
class Interruption:
    """One barge-in: what was truncated (tests and the benchmark read these)."""

    item_id: str | None
    played_ms: int
    received_ms: int
    audio_end_ms: int
    t: float
    stop_s: float  # how long Playback.stop() took


def _add_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    """Sum response.done usage into ``total`` (numbers added, nested details merged)."""
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            sub = total.setdefault(key, {})
            if isinstance(sub, dict):
                _add_usage(sub, value)


class _Conversation:
    """One realtime session from opening to close. Only the Assistant creates and drives it."""

    def __init__(
        self,
        a: Assistant,
        *,
        trigger: str,
        frames: list[AudioFrame] | None,
        score: float = 0.0,
        prompt: str | None = None,
        announcement: Announcement | None = None,
    ) -> None:
        self.a = a
        self.trigger = trigger
        self.score = score
        self.prompt = prompt
        self.announcement = announcement
        self.session: RealtimeSession | None = None
        self.out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # The microphone is open for the person's turn; closed while the assistant speaks first.
        self.mic_open = frames is not None
        self.pending: list[AudioFrame] | None = list(frames or [])  # held while connecting
        self.finished: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.failure: _Failure | None = None
        self.stood_down = False
        self.usage: dict[str, Any] = {}
        self.active_response: str | None = None
        self.cancelled: set[str] = set()  # responses whose remaining audio is discarded
        self.item: str | None = None  # reply item currently going to the speaker
        self.item_response: str | None = None
        self.calls: dict[str, list[asyncio.Task[None]]] = {}
        self.end_reason: str | None = None  # end after the current reply (tool, session age)
        self.expect_since: float | None = None  # waiting for the server since then
        self.last_server = time.monotonic()
        self.listen_deadline: float | None = None
        self.follow_deadline: float | None = None
        self.turn = 0  # bumped by new speech or an interruption; stale drain waits see it
        self.opened_at: float | None = None
        self.appended_ms = 0
        self.first_append_t: float | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.spoke = False  # any reply audio reached the speaker
        self.reply_ms = 0  # reply audio received so far (bounds the wait for it to be played)
        self.last_error_t = 0.0
        self.announced = False

    # ----- microphone ------------------------------------------------------------------------------

    def push(self, frame: AudioFrame) -> None:
        """A live microphone frame: held while connecting, streamed when the mic is open."""
        if not self.mic_open or self.finished.done():
            return
        if self.pending is not None:
            self.pending.append(frame)
            return
        st = self.a.state
        if st in (State.LISTENING, State.THINKING, State.FOLLOW_UP) or (
            st is State.SPEAKING and self.a.rt.barge_in == "voice"
        ):
            self._append(frame.pcm24k)

    def _append(self, pcm24k: bytes) -> None:
        if not pcm24k:  # the first frame after the microphone (re)starts has no 24 kHz audio yet
            return
        if self.first_append_t is None:
            self.first_append_t = time.monotonic()
        self.out.put_nowait(protocol.audio_append(pcm24k))
        self.appended_ms += len(pcm24k) * 1000 // 48000

    def stream_frames(self, frames: list[AudioFrame]) -> None:
        """Send already-captured frames (pre-roll) ahead of the live ones."""
        self.mic_open = True
        if self.pending is not None:
            self.pending.extend(frames)
            return
        for f in frames:
            self._append(f.pcm24k)

    # ----- lifecycle ---------------------------------------------------------------------------------

    def finish(self, reason: str) -> None:
        if not self.finished.done():
            self.finished.set_result(reason)

    def fail(self, where: str, message: str) -> None:
        if not self.finished.done():
            self.failure = _Failure(where, message)
            self.finish("error")

    def request_end(self, reason: str) -> None:
        """End after the current reply has been played (the end_conversation tool)."""
        self.end_reason = reason

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOG.error("conversation task failed", exc_info=task.exception())

    async def run(self) -> str:
        """Open, converse, close. Returns the reason it ended."""
        reason = "ended"
        try:
            await self._open()
            reason = await self._supervise()
        except _Failure as f:
            self.failure = f
            reason = "error"
        except _StandDown:
            self.stood_down = True
            reason = "another speaker answers"
        except asyncio.CancelledError:
            reason = self.a._cancel_reason or "cancelled"
            raise
        except Exception as exc:  # a bug here must not leave the speaker stuck in a conversation
            _LOG.exception("conversation failed unexpectedly")
            self.failure = _Failure("internal", f"{type(exc).__name__}: {exc}")
            reason = "error"
        finally:
            if self.finished.done() and self.failure is None:
                reason = self.finished.result()
            self.finish(reason)
            await self._close()
        return reason

    async def _open(self) -> None:
        a = self.a
        rt = a.rt
        if self.trigger == "wake" and a.arbiter is not None and not await a.arbiter.claim(self.score):
            raise _StandDown()
        # Only now: a speaker that loses the arbitration shows and plays nothing.
        a._set_state(State.LISTENING if self.mic_open else State.THINKING, self.trigger)
        if self.announcement is None:
            a._cue("wake")  # not awaited: the cue must not delay streaming
        elif self.announcement.chime:
            a._cue("wake")
        if a.tokens is None:
            raise _Failure("token", "no token source: set [auth] token_url or api_key_file (or OPENAI_API_KEY)")
        try:
            key = await a.tokens.get()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # TokenError carries status and a secret-free message
            raise _Failure("token", f"{type(exc).__name__}: {exc}") from None
        try:
            self.session = await RealtimeSession.connect(rt.url, rt.model, key.value.reveal(), rt.connect_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _Failure("connect", f"{rt.url}: {type(exc).__name__}: {exc}") from None
        now = time.monotonic()
        self.opened_at = self.last_server = now
        self.out.put_nowait(a.setup.session_update())
        self._spawn(self._sender())
        self._spawn(self._reader())
        pending, self.pending = self.pending or [], None
        if self.mic_open:
            for f in pending:
                self._append(f.pcm24k)
            self.listen_deadline = now + max(rt.follow_up_s, FIRST_TURN_MIN_S)
        if self.announcement is not None:
            text = self.announcement.text
            ev = protocol.response_create(
                "Read this announcement aloud exactly as written, word for word, adding nothing before "
                f'or after it: "{text}"'
            )
            ev.setdefault("response", {})["tool_choice"] = "none"
            self.out.put_nowait(ev)
            self.expect_since = now
        elif self.prompt:
            self.out.put_nowait(
                protocol.response_create(
                    a.render_instructions()
                    + "\n\nYou start this conversation yourself; speak first, briefly. What to say or ask: "
                    + self.prompt
                )
            )
            self.expect_since = now

    async def _supervise(self) -> str:
        rt = self.a.rt
        while True:
            done, _ = await asyncio.wait({self.finished}, timeout=SUPERVISE_S)
            if done:
                return self.finished.result()
            now = time.monotonic()
            st = self.a.state
            if self.expect_since is not None:
                silent = now - max(self.expect_since, self.last_server)
                if silent > rt.response_timeout_s:
                    self.fail("session", f"the server sent nothing for {silent:.1f} s while a reply was due")
                    continue
            if st is State.LISTENING and self.listen_deadline is not None and now > self.listen_deadline:
                self.finish("no speech")
            elif st is State.FOLLOW_UP and self.follow_deadline is not None and now > self.follow_deadline:
                self.finish("no follow-up")
            elif self.opened_at is not None and now - self.opened_at > rt.max_session_s:
                idle_turn = st is State.FOLLOW_UP or (st is State.LISTENING and self.listen_deadline is not None)
                if idle_turn or now - self.opened_at > rt.max_session_s + SESSION_GRACE_S:
                    self.finish("session limit")
                elif self.end_reason is None:
                    _LOG.info("session is %.0f s old: ending it after this reply", now - self.opened_at)
                    self.end_reason = "session limit"

    async def _close(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        if self.session is not None:
            try:
                await asyncio.wait_for(self.session.close(), CLOSE_TIMEOUT_S)
            except Exception as exc:
                _LOG.debug("closing the realtime session: %s: %s", type(exc).__name__, exc)

    async def _sender(self) -> None:
        assert self.session is not None
        try:
            while True:
                event = await self.out.get()
                await self.session.send(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._closed(f"sending failed: {type(exc).__name__}: {exc}")

    async def _reader(self) -> None:
        assert self.session is not None
        try:
            while True:
                event = await self.session.recv()
                self.last_server = time.monotonic()
                try:
                    self._handle(event)
                except Exception:
                    _LOG.exception("handling server event %s failed", event.get("type"))
        except asyncio.CancelledError:
            raise
        except SessionClosed as exc:
            self._closed(str(exc) or "closed by the server")
        except Exception as exc:
            self._closed(f"{type(exc).__name__}: {exc}")

    def _closed(self, why: str) -> None:
        if self.finished.done():
            return
        st = self.a.state
        if st is State.FOLLOW_UP and self.active_response is None:
            _LOG.info("the server closed the session during the follow-up window (%s)", why)
            self.finish("closed by the server")
        else:
            self.fail("session", f"connection lost while {st.value}: {why}")

    # ----- server events ---------------------------------------------------------------------------

    def _handle(self, ev: dict[str, Any]) -> None:
        if self.finished.done():
            return
        a = self.a
        kind = ev.get("type", "")
        now = time.monotonic()
        for reply in a.mcp_events.handle(ev):  # remote MCP tools: logged; approval requests declined
            self.out.put_nowait(reply)
        if kind == "error":
            err = ev.get("error") or {}
            code = err.get("code") or err.get("type") or "error"
            message = err.get("message") or ""
            if code in _BENIGN_ERRORS:
                _LOG.debug("server: %s: %s", code, message)
                return
            culprit = self.session.sent_type(err.get("event_id") or "") if self.session is not None else None
            _LOG.warning("server error %s: %s%s", code, message, f" (in reply to {culprit})" if culprit else "")
            self.last_error_t = now
            if culprit == "session.update":
                # The server rejects a whole update: going on would mean no instructions, no tools,
                # and the server's default turn detection. Say so instead of a worse assistant.
                self.fail("session", f"the server rejected the session configuration: {code}: {message}")
                return
            a._publish(ErrorEvent(where="session", message=f"{code}: {message}"))
        elif kind == "input_audio_buffer.speech_started":
            voice = a.rt.barge_in == "voice"
            if a.state is State.SPEAKING and not voice:
                # Speech in audio streamed before the reply began; only the wake word interrupts.
                _LOG.debug("speech started while speaking (wake_word barge-in): not an interruption")
                return
            if self.active_response is not None:
                # The person goes on talking: drop whatever of the reply still arrives. With
                # barge_in = "voice" the server cancels it itself (interrupt_response is on; a
                # response.cancel would only race it); with "wake_word" nothing has played yet, so
                # cancelling cannot be the speaker hearing itself.
                self.cancelled.add(self.active_response)
                if not voice:
                    self.out.put_nowait(protocol.response_cancel())
            if a.state is State.SPEAKING or (self.item is not None and a.playback.busy):
                self.interrupt("voice", cancel=False)
            self.turn += 1
            self.listen_deadline = self.follow_deadline = None
            a._set_state(State.LISTENING, "speech")
        elif kind == "input_audio_buffer.speech_stopped":
            if a.state in (State.LISTENING, State.FOLLOW_UP):
                self.expect_since = now
                a._set_state(State.THINKING, "speech ended")
        elif kind == "input_audio_buffer.committed":
            if a.state in (State.LISTENING, State.FOLLOW_UP):
                self.expect_since = self.expect_since or now
                a._set_state(State.THINKING, "turn committed")
        elif kind == "input_audio_buffer.timeout_triggered":
            if a.state is State.LISTENING:
                self.finish("no speech")
        elif kind == "conversation.item.input_audio_transcription.completed":
            text = (ev.get("transcript") or "").strip()
            if text:
                a._publish(Transcript(role="user", text=text))
        elif kind == "conversation.item.input_audio_transcription.failed":
            _LOG.info("input transcription failed: %s", (ev.get("error") or {}).get("message"))
        elif kind == "response.created":
            self.active_response = (ev.get("response") or {}).get("id")
            self.expect_since = self.expect_since or now
            if a.state in (State.LISTENING, State.FOLLOW_UP):
                self.listen_deadline = self.follow_deadline = None
                a._set_state(State.THINKING, "reply")
        elif kind == "response.output_audio.delta":
            self._audio_delta(ev)
        elif kind == "response.output_audio_transcript.done":
            text = (ev.get("transcript") or "").strip()
            if text:
                a._publish(Transcript(role="assistant", text=text))
        elif kind == "response.function_call_arguments.done":
            rid = ev.get("response_id") or ""
            self.calls.setdefault(rid, []).append(
                self._spawn(self._tool(ev.get("call_id", ""), ev.get("name", ""), ev.get("arguments", "")))
            )
        elif kind == "response.done":
            self._response_done(ev.get("response") or {})

    def _audio_delta(self, ev: dict[str, Any]) -> None:
        a = self.a
        rid = ev.get("response_id")
        if rid in self.cancelled:
            return
        item = ev.get("item_id") or ""
        if item != self.item:
            a.playback.begin(item)
            self.item, self.item_response = item, rid
        audio = protocol.decode_audio_delta(ev)
        a.playback.write(audio)
        self.reply_ms += protocol.pcm_ms(len(audio))
        self.spoke = True
        if a.state is not State.SPEAKING:
            a._set_state(State.SPEAKING, "reply")

    def _response_done(self, resp: dict[str, Any]) -> None:
        rid = resp.get("id")
        usage = resp.get("usage")
        if isinstance(usage, dict):
            _add_usage(self.usage, usage)
            _LOG.info("response %s: %s; usage %s", rid, resp.get("status"), usage)
        if rid == self.active_response:
            self.active_response = None
        self.expect_since = None
        calls = self.calls.pop(rid or "", [])
        if rid in self.cancelled or resp.get("status") == "cancelled":
            # Interrupted (by us or by the server's VAD): the person's new turn decides what follows.
            return
        if resp.get("status") == "failed":
            details = resp.get("status_details") or {}
            err = details.get("error") or {}
            message = err.get("message") or err.get("code") or details.get("reason") or "no details"
            _LOG.warning("response %s failed: %s", rid, message)
            if time.monotonic() - self.last_error_t > 1.0:  # else the error event said it already
                self.a._publish(ErrorEvent(where="session", message=f"response failed: {message}"))
            self.a._cue("error")  # the person hears that this turn failed; they may try again
        if calls:
            self._spawn(self._after_tools(calls))
        else:
            self._spawn(self._after_reply(self.turn))

    async def _tool(self, call_id: str, name: str, arguments: str) -> None:
        result = await self.a.tools.call(name, arguments, self.a.rt.tool_timeout_s)
        _LOG.debug("tool %s(%s) -> %s", name, arguments, result.output_json)
        self.a._publish(ToolCalled(name=name, arguments=result.arguments, result=result.output, duration_s=result.duration_s))
        if not self.finished.done():
            self.out.put_nowait(protocol.function_call_output(call_id, result.output_json))

    async def _after_tools(self, calls: list[asyncio.Task[None]]) -> None:
        turn = self.turn
        await asyncio.gather(*calls, return_exceptions=True)
        if self.finished.done() or turn != self.turn:
            return
        # Also after end_conversation: the model says its goodbye, then the conversation ends.
        self.out.put_nowait(protocol.response_create())
        self.expect_since = time.monotonic()

    async def _after_reply(self, turn: int) -> None:
        """The reply is complete: once it has been heard, end or open the follow-up window."""
        if self.spoke:
            try:
                await asyncio.wait_for(self.a.playback.drained(), self.reply_ms / 1000 + DRAIN_SLACK_S)
            except TimeoutError:
                _LOG.warning("the speaker did not finish playing the reply in time; going on")
        if self.finished.done() or turn != self.turn or self.active_response is not None:
            return
        if self.a.state not in (State.SPEAKING, State.THINKING):
            return  # the person is talking again
        if self.announcement is not None and not self.announced:
            self.announced = True
            self.a._publish(AnnouncementEvent(text=self.announcement.text, status="spoken"))
            if not self.announcement.then_listen:
                self.finish("announcement")
                return
        if self.end_reason is not None:
            self.finish(self.end_reason)
            return
        self.enter_follow_up()

    def enter_follow_up(self) -> None:
        if self.a.rt.follow_up_s <= 0:
            self.finish("no follow-up")
            return
        self.item = None
        self.mic_open = True
        self.follow_deadline = time.monotonic() + self.a.rt.follow_up_s
        self.a._set_state(State.FOLLOW_UP, "reply heard")

    # ----- barge-in --------------------------------------------------------------------------------

    def interrupt(self, why: str, *, cancel: bool = True) -> Interruption:
        """Silence the speaker now, drop the rest of the reply, tell the server what was heard."""
        pb = self.a.playback
        item = self.item
        played = received = 0
        if item is not None:
            # Read before stop(): the device buffer still says what had not been played yet.
            played, received = pb.played_ms(item), pb.received_ms(item)
        t0 = time.monotonic()
        pb.stop()
        stop_s = time.monotonic() - t0
        end_ms = max(0, min(played, received))
        for rid in (self.active_response, self.item_response):
            if rid:
                self.cancelled.add(rid)
        if self.active_response is not None and cancel:
            self.out.put_nowait(protocol.response_cancel())
        if item is not None:
            self.out.put_nowait(protocol.item_truncate(item, 0, end_ms))
        self.item = self.item_response = None
        self.turn += 1
        self.expect_since = None
        record = Interruption(item, played, received, end_ms, t0, stop_s)
        self.a.interruptions.append(record)
        _LOG.info("interrupted by %s: played %d ms of %d ms received (item %s)", why, played, received, item)
        return record


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
        self.mcp_events = McpEvents()
        self.lookback_s = lookback_s
        self.state = State.IDLE
        self.muted = False
        self.volume = settings.audio.volume
        self.interruptions: collections.deque[Interruption] = collections.deque(maxlen=50)
        self._preroll = PreRoll(PREROLL_S)
        self._conv: _Conversation | None = None
        self._task: asyncio.Task[None] | None = None
        self._announcements: collections.deque[Announcement] = collections.deque()
        self._cancel_reason: str | None = None
        self._cues: set[asyncio.Task[Any]] = set()
        self._store: Any = None
        self._started = False
        tools.on_change(self._tools_changed)

    # ----- properties for the presence/LEDs and tests -----------------------------------------------

    @property
    def conversation(self) -> _Conversation | None:
        """The open conversation, if any (read-only use)."""
        return self._conv

    def _tools_changed(self) -> None:
        # Devices discovered mid-conversation become usable at once.
        conv = self._conv
        if conv is not None and conv.session is not None and not conv.finished.done():
            conv.out.put_nowait(self.setup.tools_update())

    def render_instructions(self) -> str:
        return self.setup.instructions()

    # ----- start / stop ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore mute and volume, publish the initial state."""
        self._started = True
        muted, volume = False, self.settings.audio.volume
        self._store = self._open_store()
        if self._store is not None:
            try:
                saved = self._store.load()
                muted, volume = bool(saved.muted), int(saved.volume)
            except Exception as exc:
                _LOG.warning("could not read the saved mute/volume state: %s: %s", type(exc).__name__, exc)
        self.volume = max(0, min(100, volume))
        self.playback.volume = self.volume
        self._publish(VolumeChanged(volume=self.volume, source="startup"))
        if muted:
            self.muted = True
            self.capture.muted = True
            self._publish(MuteChanged(muted=True, source="startup"))
            self._set_state(State.MUTED, "saved state")
        else:
            self._publish(MuteChanged(muted=False, source="startup"))
            self._publish(StateChanged(old=State.IDLE, new=State.IDLE, reason="startup"))

    async def stop(self) -> None:
        """End any conversation (closing its socket) and drop queued announcements."""
        self._started = False
        self._drop_announcements("shutting down")
        await self._cancel_conversation("shutdown")
        for task in list(self._cues):
            task.cancel()

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
            self._store.update(muted=self.muted, volume=self.volume)
        except Exception as exc:
            _LOG.warning("could not save the mute/volume state: %s: %s", type(exc).__name__, exc)

    # ----- events -------------------------------------------------------------------------------------

    def _publish(self, event: Event) -> None:
        self.bus.publish(event)

    def _set_state(self, new: State, reason: str = "") -> None:
        old = self.state
        if new is old:
            return
        self.state = new
        self._publish(StateChanged(old=old, new=new, reason=reason))

    def _cue(self, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(self._play_cue(name))
        self._cues.add(task)
        task.add_done_callback(self._cues.discard)
        return task

    async def _play_cue(self, name: str) -> None:
        try:
            await self.playback.play_cue(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _LOG.warning("cue %s failed: %s: %s", name, type(exc).__name__, exc)

    # ----- microphone -------------------------------------------------------------------------------

    def on_frame(self, frame: AudioFrame) -> None:
        """Capture's callback, on the loop: pre-roll, conversation audio, wake word."""
        if self.muted:
            return  # capture discards at the source; this guards a frame already on its way
        self._preroll.append(frame)
        conv = self._conv
        if conv is not None:
            conv.push(frame)
        # Fed continuously so the model's feature window never has gaps; acted on only when it matters.
        detection = self.wake.process(frame.pcm16k)
        if detection is not None:
            self._on_wake(detection, frame)

    def _on_wake(self, det: Detection, frame: AudioFrame) -> None:
        st = self.state
        conv = self._conv
        barge = st is State.SPEAKING and conv is not None and self.rt.barge_in == "wake_word"
        if not (barge or (st is State.IDLE and conv is None)):
            _LOG.debug("wake word ignored while %s", st.value)
            return
        self._publish(WakeDetected(model=det.model, score=det.score))
        frames = self._preroll.since(frame.t - self.lookback_s)
        if barge:
            assert conv is not None
            conv.interrupt("wake word")
            if conv.announcement is not None and not conv.announced:
                conv.announced = True  # cut short by the person, who now talks: a conversation
                self._publish(AnnouncementEvent(text=conv.announcement.text, status="spoken", reason="interrupted by the wake word"))
            conv.listen_deadline = time.monotonic() + max(self.rt.follow_up_s, FIRST_TURN_MIN_S)
            self._set_state(State.LISTENING, "wake word")
            self._cue("wake")
            conv.stream_frames(frames)
            return
        score = det.score
        if self.arbiter is not None:
            # Speakers compare how loud they heard the wake word: the nearest one answers.
            score = claim_score(det.score, b"".join(f.pcm16k for f in self._preroll.since(frame.t - WAKE_WORD_S)))
        self._begin("wake", frames=frames, score=score)

    # ----- conversations -----------------------------------------------------------------------------

    def _begin(
        self,
        trigger: str,
        *,
        frames: list[AudioFrame] | None,
        score: float = 0.0,
        prompt: str | None = None,
        announcement: Announcement | None = None,
    ) -> None:
        conv = _Conversation(self, trigger=trigger, frames=frames, score=score, prompt=prompt, announcement=announcement)
        self._conv = conv
        self._cancel_reason = None
        self._task = asyncio.get_running_loop().create_task(self._run(conv))

    async def _run(self, conv: _Conversation) -> None:
        reason = "ended"
        try:
            reason = await conv.run()
        except asyncio.CancelledError:
            reason = self._cancel_reason or "cancelled"
            raise
        finally:
            await self._after(conv, reason)

    async def _after(self, conv: _Conversation, reason: str) -> None:
        """Back to idle (or muted) after a conversation, with the right cue."""
        if conv.announcement is not None and not conv.announced:
            self._publish(AnnouncementEvent(text=conv.announcement.text, status="dropped", reason=reason))
        if conv.stood_down:
            _LOG.info("wake word: another speaker answers")
        else:
            if conv.failure is not None:
                f = conv.failure
                _LOG.error("conversation failed: %s: %s", f.where, f.message)
                self._publish(ErrorEvent(where=f.where, message=f.message))
            self._publish(ConversationEnded(reason=f"error: {conv.failure.where}" if conv.failure else reason, usage=conv.usage))
        try:
            if conv.failure is not None and not self.muted:
                self.playback.stop()
                self._set_state(State.ERROR, f"{conv.failure.where} failed")
                t0 = time.monotonic()
                cue = self._cue("error")
                # The error state stays visible (LED) while the cue plays, then idle; < 2 s in total.
                await asyncio.wait({cue}, timeout=ERROR_HOLD_S)
                await asyncio.sleep(max(0.0, ERROR_MIN_S - (time.monotonic() - t0)))
            elif reason in _NORMAL_ENDS and not self.muted:
                self._cue("done")
        finally:
            if self._conv is conv:
                self._conv = None
                self._task = None
            if self.muted:
                self._set_state(State.MUTED, reason)
            elif self._conv is None:
                self._set_state(State.IDLE, reason)
                if self._started:
                    asyncio.get_running_loop().call_soon(self._next_announcement)

    async def _cancel_conversation(self, reason: str) -> None:
        task, conv = self._task, self._conv
        if task is None or conv is None:
            return
        self._cancel_reason = reason
        conv.finish(reason)
        if not task.done():
            self.playback.stop()
        task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), 3.0)
        except (asyncio.CancelledError, TimeoutError):
            pass
        except Exception:
            _LOG.exception("conversation cleanup failed")

    def request_end(self, reason: str) -> bool:
        """End the open conversation after the current reply (end_conversation tool)."""
        if self._conv is None:
            return False
        self._conv.request_end(reason)
        return True

    # ----- the actions of buttons, MQTT and tools ---------------------------------------------------

    async def set_muted(self, muted: bool, source: str) -> None:
        """Mute: no mic frame leaves capture, any conversation is closed, playback stops."""
        if muted == self.muted:
            return
        if muted:
            self.capture.muted = True
            self.muted = True
            self._preroll.clear()
            self._drop_announcements("muted")
            # All of this before the first await, so a concurrent unmute sees a consistent state.
            conv = self._conv
            if conv is not None:
                conv.finish("muted")
            self.playback.stop()
            self._set_state(State.MUTED, source)
            self._publish(MuteChanged(muted=True, source=source))
            self._persist()
            await self._cancel_conversation("muted")
            if self.muted:
                self._cue("mute_on")
        else:
            self.muted = False
            self._preroll.clear()
            self.wake.reset()
            self.capture.muted = False
            self._set_state(State.IDLE, source)
            self._publish(MuteChanged(muted=False, source=source))
            self._persist()
            self._cue("mute_off")

    async def toggle_mute(self, source: str) -> None:
        await self.set_muted(not self.muted, source)

    async def talk_pressed(self) -> None:
        """Talk button: idle -> converse; speaking -> stop; listening/follow-up -> end."""
        st = self.state
        if st is State.IDLE and self._conv is None:
            await self.start_conversation(source="button")
        elif st is State.SPEAKING:
            await self.stop_speaking("button")
        elif self._conv is not None and st in (State.LISTENING, State.FOLLOW_UP, State.THINKING):
            self._conv.finish("talk button")
        else:
            _LOG.info("talk button ignored while %s", st.value)

    async def start_conversation(self, prompt: str | None = None, source: str = "api") -> None:
        """Open a session without the wake word; with ``prompt`` the assistant speaks first."""
        if self.muted:
            _LOG.info("start conversation (%s) ignored: muted", source)
            return
        if self._conv is not None or self.state is not State.IDLE:
            _LOG.info("start conversation (%s) ignored: already %s", source, self.state.value)
            return
        if prompt:
            self._begin(source, frames=None, prompt=prompt)
        else:
            self._begin(source, frames=self._preroll.since(time.monotonic() - BUTTON_LOOKBACK_S))

    async def stop_speaking(self, source: str = "api") -> None:
        """Stop the reply now (the barge-in path) and wait for the person to answer."""
        conv = self._conv
        if conv is None or self.state is not State.SPEAKING:
            _LOG.info("stop speaking (%s) ignored while %s", source, self.state.value)
            return
        conv.interrupt(source)
        if conv.announcement is not None and not conv.announced:
            conv.announced = True  # heard, if not to its end
            self._publish(AnnouncementEvent(text=conv.announcement.text, status="spoken", reason=f"stopped by {source}"))
            if not conv.announcement.then_listen:
                conv.finish("stopped")
                return
        conv.enter_follow_up()

    async def set_volume(self, volume: int, source: str) -> None:
        """Set the speech volume 0-100 (applied to the next samples written)."""
        volume = max(0, min(100, int(volume)))
        self.playback.volume = volume
        changed = volume != self.volume
        self.volume = volume
        if changed or source != "startup":
            self._publish(VolumeChanged(volume=volume, source=source))
        self._persist()

    async def announce(self, text: str, *, chime: bool = True, then_listen: bool = False) -> None:
        """Speak ``text`` verbatim through a realtime session, after any running conversation."""
        text = text.strip()[:ANNOUNCEMENT_MAX_CHARS]
        if not text:
            return
        if self.muted:
            self._publish(AnnouncementEvent(text=text, status="dropped", reason="muted"))
            return
        self._announcements.append(Announcement(text, chime, then_listen))
        self._publish(AnnouncementEvent(text=text, status="queued"))
        self._next_announcement()

    def _next_announcement(self) -> None:
        if self.muted or self._conv is not None or self.state is not State.IDLE or not self._announcements:
            return
        self._begin("announce", frames=None, announcement=self._announcements.popleft())

    def _drop_announcements(self, reason: str) -> None:
        while self._announcements:
            ann = self._announcements.popleft()
            self._publish(AnnouncementEvent(text=ann.text, status="dropped", reason=reason))


__all__ = ["Announcement", "Assistant", "Interruption"]
