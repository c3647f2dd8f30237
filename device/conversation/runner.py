"""Runs the conversation machine: feeds it inputs and carries out its effects.

The runner owns everything with a side: the realtime sockets and their tasks, tool calls, waits
for the speaker to drain, deadlines (``loop.call_at``), cues, playback and the capture's mute. It
lives on the event loop; :meth:`Runner.feed` is the one door into the machine, and inputs that
arrive while effects are being carried out wait their turn, so every step sees a settled model.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..realtime import protocol
from ..realtime import server_events as se
from ..realtime.mcp_events import McpEvents
from ..realtime.session import RealtimeSession, SessionClosed
from . import effects as fx
from . import inputs as ip
from .machine import Model, step

if TYPE_CHECKING:
    from ..arbitration import Arbiter
    from ..audio.playback import Playback
    from ..config import RealtimeConfig
    from ..events import EventBus
    from ..realtime.session_setup import SessionSetup
    from ..realtime.tokens import TokenSource
    from ..tools.registry import ToolRegistry

_LOG = logging.getLogger("speaker.assistant")

CLOSE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Interruption:
    """One barge-in: what was truncated (tests and the benchmark read these)."""

    item_id: str | None
    played_ms: int
    received_ms: int
    audio_end_ms: int
    t: float
    stop_s: float  # how long Playback.stop() took


@dataclass
class _Link:
    """One conversation's socket and tasks."""

    cid: int
    out: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    session: RealtimeSession | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


@dataclass
class Hooks:
    """What the runner needs from the device around it (the Assistant provides these)."""

    set_capture_muted: Callable[[bool], None]
    clear_preroll: Callable[[], None]
    reset_wake: Callable[[], None]
    persist: Callable[[], None]


class Runner:
    """The machine's model plus the effects' machinery."""

    def __init__(
        self,
        model: Model,
        *,
        rt: RealtimeConfig,
        bus: EventBus,
        playback: Playback,
        tokens: TokenSource | None,
        tools: ToolRegistry,
        arbiter: Arbiter | None,
        setup: SessionSetup,
        hooks: Hooks,
    ) -> None:
        self.model = model
        self.rt = rt
        self.setup = setup  # instructions, tools and the session.update payloads
        self.mcp_events = McpEvents()
        self.bus = bus
        self.playback = playback
        self.tokens = tokens
        self.tools = tools
        self.arbiter = arbiter
        self.hooks = hooks
        self.interruptions: collections.deque[Interruption] = collections.deque(maxlen=50)
        self._inbox: collections.deque[ip.Input] = collections.deque()
        self._busy = False
        self._links: dict[int, _Link] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._cues: set[asyncio.Task[Any]] = set()
        self._tool_tasks: set[asyncio.Task[Any]] = set()

    # ----- the one door into the machine ------------------------------------------------------------

    def feed(self, event: ip.Input) -> None:
        """Step the machine with ``event`` and carry out its effects (on the loop)."""
        self._inbox.append(event)
        if self._busy:
            return  # a step in progress: this one follows it
        self._busy = True
        try:
            while self._inbox:
                ev = self._inbox.popleft()
                try:
                    self.model, effects = step(self.model, ev, time.monotonic())
                except Exception:
                    _LOG.exception("the conversation machine failed on %s", type(ev).__name__)
                    continue
                for effect in effects:
                    try:
                        self._do(effect)
                    except Exception:
                        _LOG.exception("effect %s failed", type(effect).__name__)
        finally:
            self._busy = False

    # ----- effects ------------------------------------------------------------------------------------

    def _do(self, e: fx.Effect) -> None:
        if isinstance(e, fx.Send):
            link = self._links.get(e.cid)
            if link is not None:
                link.out.put_nowait(e.event)
        elif isinstance(e, fx.PlayAudio):
            self.playback.write(e.pcm24k)
        elif isinstance(e, fx.Publish):
            self.bus.publish(e.event)
        elif isinstance(e, fx.Arm):
            self._disarm(e.name)
            self._timers[e.name] = asyncio.get_running_loop().call_at(e.at, self._fire, e.name, e.fire)
        elif isinstance(e, fx.Disarm):
            self._disarm(e.name)
        elif isinstance(e, fx.Log):
            _LOG.log(e.level, "%s", e.message)
        elif isinstance(e, fx.BeginReply):
            self.playback.begin(e.item_id)
        elif isinstance(e, fx.Cue):
            self._cue(e.name)
        elif isinstance(e, fx.StopPlayback):
            for task in list(self._cues):  # a cue asked for but not yet queued must not sound after this
                task.cancel()
            self.playback.stop()
        elif isinstance(e, fx.Truncate):
            self._truncate(e)
        elif isinstance(e, fx.Configure):
            self._send(e.cid, self.setup.session_update)
            if e.manual_turns:
                self._send(e.cid, protocol.manual_turns)
        elif isinstance(e, fx.Prompt):
            self._send(e.cid, lambda: protocol.response_create(
                self.setup.instructions()
                + "\n\nYou start this conversation yourself; speak first, briefly. What to say or ask: " + e.text))
        elif isinstance(e, fx.UpdateTools):
            self._send(e.cid, self.setup.tools_update)
        elif isinstance(e, fx.Claim):
            self._spawn(e.cid, self._claim(e.cid, e.score))
        elif isinstance(e, fx.Open):
            self._links[e.cid] = _Link(e.cid)
            self._spawn(e.cid, self._open(e.cid))
        elif isinstance(e, fx.Close):
            self._close(e.cid)
        elif isinstance(e, fx.CallTool):
            task = asyncio.get_running_loop().create_task(self._tool(e))
            self._tool_tasks.add(task)
            task.add_done_callback(self._tool_tasks.discard)
            task.add_done_callback(self._task_done)
        elif isinstance(e, fx.AwaitDrain):
            self._spawn(e.cid, self._drain(e))
        elif isinstance(e, fx.SetCaptureMuted):
            self.hooks.set_capture_muted(e.muted)
        elif isinstance(e, fx.ClearPreroll):
            self.hooks.clear_preroll()
        elif isinstance(e, fx.ResetWake):
            self.hooks.reset_wake()
        elif isinstance(e, fx.Persist):
            self.hooks.persist()
        else:
            raise TypeError(f"unknown effect {e!r}")

    def _send(self, cid: int, build: Callable[[], dict[str, Any]]) -> None:
        link = self._links.get(cid)
        if link is not None:
            link.out.put_nowait(build())

    def _fire(self, name: str, event: ip.Input) -> None:
        self._timers.pop(name, None)
        self.feed(event)

    def _disarm(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _truncate(self, e: fx.Truncate) -> None:
        pb = self.playback
        played = received = 0
        if e.item_id is not None:
            # Read before stop(): the device buffer still says what had not been played yet.
            played, received = pb.played_ms(e.item_id), pb.received_ms(e.item_id)
        t0 = time.monotonic()
        pb.stop()
        stop_s = time.monotonic() - t0
        end_ms = max(0, min(played, received))
        if e.item_id is not None:
            self._send(e.cid, lambda: protocol.item_truncate(e.item_id or "", 0, end_ms))
        self.interruptions.append(Interruption(e.item_id, played, received, end_ms, t0, stop_s))
        _LOG.info("interrupted by %s: played %d ms of %d ms received (item %s)", e.why, played, received, e.item_id)

    def _cue(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._play_cue(name))
        self._cues.add(task)
        task.add_done_callback(self._cues.discard)

    async def _play_cue(self, name: str) -> None:
        try:
            await self.playback.play_cue(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _LOG.warning("cue %s failed: %s: %s", name, type(exc).__name__, exc)

    # ----- conversation tasks -------------------------------------------------------------------------

    def _spawn(self, cid: int, coro: Any) -> None:
        link = self._links.get(cid)
        task = asyncio.get_running_loop().create_task(coro)
        if link is None:  # the arbitration comes before the socket
            link = self._links[cid] = _Link(cid)
        link.tasks.add(task)
        task.add_done_callback(link.tasks.discard)
        task.add_done_callback(self._task_done)

    @staticmethod
    def _task_done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _LOG.error("conversation task failed", exc_info=task.exception())

    async def _claim(self, cid: int, score: float) -> None:
        assert self.arbiter is not None
        try:
            won = await self.arbiter.claim(score)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.feed(ip.OpenFailed(cid, "internal", f"arbitration: {type(exc).__name__}: {exc}"))
            return
        self.feed(ip.Claimed(cid, won))

    async def _open(self, cid: int) -> None:
        rt = self.rt
        if self._closing:  # the previous session is closed before the next one opens
            await asyncio.wait(set(self._closing), timeout=CLOSE_TIMEOUT_S + 0.5)
        if self.tokens is None:
            self.feed(ip.OpenFailed(cid, "token", "no token source: set [auth] token_url or api_key_file (or OPENAI_API_KEY)"))
            return
        try:
            key = await self.tokens.get()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # TokenError carries status and a secret-free message
            self.feed(ip.OpenFailed(cid, "token", f"{type(exc).__name__}: {exc}"))
            return
        try:
            session = await RealtimeSession.connect(rt.url, rt.model, key.value.reveal(), rt.connect_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.feed(ip.OpenFailed(cid, "connect", f"{rt.url}: {type(exc).__name__}: {exc}"))
            return
        link = self._links.get(cid)
        if link is None:  # closed while connecting
            await _close_session(session)
            return
        link.session = session
        self._spawn(cid, self._sender(link))
        self.feed(ip.Opened(cid))
        if cid in self._links:
            self._spawn(cid, self._reader(link))

    async def _sender(self, link: _Link) -> None:
        assert link.session is not None
        try:
            while True:
                event = await link.out.get()
                await link.session.send(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.feed(ip.ConnectionLost(link.cid, f"sending failed: {type(exc).__name__}: {exc}"))

    async def _reader(self, link: _Link) -> None:
        session = link.session
        assert session is not None
        try:
            while True:
                raw = await session.recv()
                try:
                    event = se.parse(raw)
                    culprit = session.sent_type(event.caused_by) if isinstance(event, se.ServerError) else None
                except Exception:
                    _LOG.exception("parsing server event %s failed", raw.get("type"))
                    continue
                self.mcp_events.note(event)  # remote MCP servers' tools and calls: logged
                self.feed(ip.Server(link.cid, event, culprit))
        except asyncio.CancelledError:
            raise
        except SessionClosed as exc:
            self.feed(ip.ConnectionLost(link.cid, str(exc) or "closed by the server"))
        except Exception as exc:
            self.feed(ip.ConnectionLost(link.cid, f"{type(exc).__name__}: {exc}"))

    async def _tool(self, e: fx.CallTool) -> None:
        result = await self.tools.call(e.name, e.arguments, self.rt.tool_timeout_s)
        _LOG.debug("tool %s(%s) -> %s", e.name, e.arguments, result.output_json)
        self.feed(ip.ToolDone(
            e.cid, e.call_id, e.response_id, e.name, result.arguments, result.output, result.duration_s, result.output_json,
        ))

    async def _drain(self, e: fx.AwaitDrain) -> None:
        try:
            await asyncio.wait_for(self.playback.drained(), e.timeout_s)
        except TimeoutError:
            _LOG.warning("the speaker did not finish playing the reply in time; going on")
        self.feed(ip.ReplyHeard(e.cid, e.turn))

    def _close(self, cid: int) -> None:
        link = self._links.pop(cid, None)
        if link is None:
            return
        task = asyncio.get_running_loop().create_task(self._shut(link))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _shut(self, link: _Link) -> None:
        tasks = [t for t in link.tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        if link.session is not None:
            await _close_session(link.session)

    async def stop(self) -> None:
        """Wait for closing sockets; cancel cues, tools and deadlines."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=CLOSE_TIMEOUT_S + 2.0)
        for name in list(self._timers):
            self._disarm(name)
        for task in list(self._cues) + list(self._tool_tasks):
            task.cancel()


async def _close_session(session: RealtimeSession) -> None:
    try:
        await asyncio.wait_for(session.close(), CLOSE_TIMEOUT_S)
    except Exception as exc:
        _LOG.debug("closing the realtime session: %s: %s", type(exc).__name__, exc)
