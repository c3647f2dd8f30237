"""Wake arbitration: when several speakers hear the same wake word, only one answers.

Protocol (all speakers on one broker share ``<topic_prefix>/_arbitration/claim``):

- On a detection a speaker publishes a claim, QoS 0, not retained:
  ``{"device_id": "kitchen", "score": 0.93, "t": <unix s>, "id": "<hex>"}``.
- A round starts with its first claim (as each speaker sees it) and closes ``arbitration_ms``
  later, or as soon as every speaker known to be online has claimed. The best score wins;
  a tie goes to the lowest ``device_id``. Every speaker applies the same rule to the same claims,
  so exactly one wins.
- A speaker whose own detection comes later than half the window after a round's first claim
  (but within ``LATE_S``) stands down at once: that round is being or has been decided, and its
  claim could reach the others after they decided.
- Peers are the speakers whose ``<topic_prefix>/<id>/availability`` is ``online``. With no peer
  online and no round open, :meth:`Arbiter.claim` returns True at once: no added delay.

The score should be :func:`claim_score` (mostly the wake word's loudness here, so the speaker
nearest the person answers; wake word scores barely depend on loudness). The words said meanwhile
are not lost: the assistant starts the session from the pre-roll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Settings

if TYPE_CHECKING:
    from .mqtt import MqttConnection

_LOG = logging.getLogger(__name__)

JOIN_MARGIN_S = 0.04  # time left in a round for a late claim to reach every speaker
LATE_S = 1.5  # a claim this recent means the same utterance was already claimed elsewhere
CLAIM_TOPIC = "{prefix}/_arbitration/claim"


@dataclass(frozen=True, slots=True)
class Claim:
    device_id: str
    score: float
    id: str
    arrived: float  # time.monotonic() when this speaker made or received it


def speech_level(pcm16k: bytes) -> float:
    """Loudness of the wake word in dBFS: the 90th percentile of 20 ms RMS levels of S16LE audio.

    Pass the audio around the detection (e.g. the last 1.5 s at 16 kHz). The percentile keeps a
    single click or door slam from counting as speech.
    """
    samples = np.frombuffer(pcm16k[: len(pcm16k) // 2 * 2], dtype="<i2").astype(np.float64)
    n = len(samples) // 320
    if n == 0:
        return -96.0
    frames = samples[: n * 320].reshape(n, 320)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    level = float(np.percentile(rms, 90))
    return max(-96.0, 20.0 * math.log10(max(level, 1e-9) / 32768.0))


def claim_score(wake_score: float, pcm16k: bytes) -> float:
    """The score to claim with: mostly how loud the wake word was here, a little how sure the model is.

    Wake word scores do not follow loudness (hey_jarvis gives 0.95-0.96 for the same words at
    0 dB and at -30 dB), and the speaker nearest the person hears them loudest: it should answer.
    """
    loudness = (speech_level(pcm16k) + 96.0) / 96.0  # 0..1
    return round(0.9 * loudness + 0.1 * max(0.0, min(1.0, float(wake_score))), 6)


def claim_topic(settings: Settings) -> str:
    """The shared claim topic of all speakers under the same topic prefix."""
    return CLAIM_TOPIC.format(prefix=settings.mqtt.topic_prefix)


def winner(claims: list[Claim]) -> Claim:
    """Best score; a tie goes to the lowest device id."""
    return min(claims, key=lambda c: (-c.score, c.device_id))


class Arbiter:
    """Decides whether this speaker answers a wake word heard by several speakers."""

    def __init__(self, settings: Settings, mqtt: MqttConnection | None) -> None:
        m = settings.mqtt
        self.device_id = m.device_id
        self.window_s = m.arbitration_ms / 1000.0
        # A speaker may still join a round this long after its first claim: late enough for the
        # 80 ms frame phase between speakers, early enough for its claim to reach every other
        # speaker before their windows close (so all of them judge the same claims).
        self.join_s = max(self.window_s / 2, self.window_s - max(JOIN_MARGIN_S, self.window_s / 5))
        self._prefix = m.topic_prefix
        self._topic = claim_topic(settings)
        self._mqtt = mqtt
        self._peers: set[str] = set()
        self._claims: list[Claim] = []
        self._changed: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubs: list[Callable[[], None]] = []
        if mqtt is not None:
            self._unsubs.append(mqtt.subscribe(f"{self._prefix}/+/availability", self._on_availability, qos=1))
            self._unsubs.append(mqtt.subscribe(self._topic, self._on_claim, qos=0))

    @property
    def peers(self) -> frozenset[str]:
        """Other speakers currently online on the broker."""
        return frozenset(self._peers)

    def close(self) -> None:
        """Unsubscribe (the connection itself belongs to the caller)."""
        for unsub in self._unsubs:
            try:
                unsub()
            except Exception:
                pass
        self._unsubs.clear()

    # -- incoming

    def _on_availability(self, topic: str, payload: bytes, retained: bool) -> None:
        device = topic[len(self._prefix) + 1 : -len("/availability")]
        if not device or "/" in device or device == self.device_id:
            return
        if payload.strip() == b"online":
            self._peers.add(device)
        else:
            self._peers.discard(device)

    def _on_claim(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            return  # a retained claim is stale by definition
        try:
            obj = json.loads(payload)
            device, score, cid = obj["device_id"], obj["score"], obj["id"]
            if not (isinstance(device, str) and isinstance(cid, str) and isinstance(score, (int, float))):
                raise TypeError("wrong field types")
            if isinstance(score, bool) or not math.isfinite(score):
                raise TypeError("score is not a finite number")
        except (ValueError, KeyError, TypeError) as exc:
            _LOG.warning("ignored a malformed claim on %s: %s", topic, exc)
            return
        if device == self.device_id:
            return  # our own claim coming back
        now = time.monotonic()
        self._prune(now)
        self._claims.append(Claim(device, float(score), cid, now))
        if self._changed is not None:
            self._changed.set()

    def _prune(self, now: float) -> None:
        self._claims = [c for c in self._claims if now - c.arrived <= LATE_S + self.window_s]

    # -- the decision

    def _send(self, claim: Claim) -> None:
        payload = json.dumps(
            {"device_id": claim.device_id, "score": round(claim.score, 6), "t": round(time.time(), 3), "id": claim.id}
        )

        async def job() -> None:
            try:
                await self._mqtt.publish(self._topic, payload, qos=0, retain=False)  # type: ignore[union-attr]
            except Exception as exc:
                _LOG.debug("claim not published: %s", exc)

        task = asyncio.get_running_loop().create_task(job())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def claim(self, score: float) -> bool:
        """Claim the wake word just detected; True if this speaker should answer it."""
        now = time.monotonic()
        if self._mqtt is None or not self._mqtt.connected:
            return True
        self._prune(now)
        own = Claim(self.device_id, float(score), uuid.uuid4().hex, now)
        recent = [c for c in self._claims if c.device_id != self.device_id and now - c.arrived <= LATE_S]
        if recent:
            start = min(c.arrived for c in recent)
            if now - start > self.join_s:
                _LOG.info("wake word claimed %.0f ms earlier by %s: standing down",
                          (now - start) * 1000, ", ".join(sorted({c.device_id for c in recent})))
                return False
        else:
            start = now
        self._claims.append(own)
        self._send(own)  # sent even when alone: a speaker that detects later then stands down
        if not recent and not self._peers:
            return True
        deadline = start + self.window_s
        self._changed = asyncio.Event()
        try:
            while True:
                in_round = [c for c in self._claims if start <= c.arrived <= deadline]
                claimed = {c.device_id for c in in_round}
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._peers | {self.device_id}) <= claimed:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._changed = None
        best = winner([c for c in self._claims if start <= c.arrived <= deadline])
        won = best.device_id == self.device_id
        _LOG.info("wake arbitration: %s (score %.3f) among %s", "won" if won else f"lost to {best.device_id}",
                  own.score, ", ".join(sorted(claimed)))
        return won


__all__ = ["Arbiter", "Claim", "LATE_S", "claim_score", "claim_topic", "speech_level", "winner"]
