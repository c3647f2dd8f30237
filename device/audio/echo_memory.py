"""What the echo canceller learnt about this device, kept across restarts.

Two things belong to the hardware and the room, not to one run of the daemon, and each is kept in
the state directory with the two PCM names it was learnt on (kept for other names, it is not used):

- **The speaker's pace** (``echo_pace.json``). A microphone on another card than the speaker keeps
  another clock. The echo front-end measures how far apart the two run (after about 45 s of the
  speaker playing) and tells the echo reference; until then the echo drifts and both cancellers
  trail it. Kept, the reference reads at that pace from the first reply. One that no longer holds
  (other hardware behind the same names) shows as a drift again, and is measured and corrected as
  a first one is.
- **The echo path** (``echo_path.json``): how late and how the speaker's sound comes back to the
  microphone, as the linear canceller learnt it (its delay and its filter). A cold canceller needs
  the first seconds of the first reply after boot to learn the room, and a reply is not streamed
  until it has (so the voice cannot interrupt it then); started from the kept path, it cancels
  from the first word, once the path is seen to hold (:meth:`device.audio.echo.EchoFrontEnd.start_from`).

A missing, unreadable or corrupt file is logged with its path and ignored: that is then learnt
again.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.state_store import write_atomic

_LOG = logging.getLogger(__name__)

FILENAME = "echo_pace.json"
PATH_FILENAME = "echo_path.json"
MAX_PPM = 2000.0  # no sound card's clock is this far off (crystals: within 100 ppm); beyond it the file is wrong
MAX_TAP = 8.0  # an echo path gains less than this much in any one tap (a microphone hears the speaker quieter)

__all__ = ["EchoPath", "PaceMemory", "PathMemory"]


class _PairFile:
    """A JSON object kept for one pair of PCMs (``what`` names it in the log)."""

    what = ""
    filename = ""

    def __init__(self, directory: str | Path, *, microphone: str, speaker: str) -> None:
        self.path = Path(directory) / self.filename
        self.microphone = microphone
        self.speaker = speaker

    def _load(self) -> Any:
        """What is kept for these two PCMs (as :meth:`_parse` reads it), or None (logged)."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            _LOG.warning("cannot read %s from %s (%s: %s); it is learnt again", self.what, self.path, type(exc).__name__, exc)
            return None
        try:
            data: Any = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            value = self._parse(data)
        except ValueError as exc:  # (json.JSONDecodeError is one)
            _LOG.warning("%s in %s is unusable (%s); it is learnt again", self.what, self.path, exc)
            return None
        if data.get("microphone") != self.microphone or data.get("speaker") != self.speaker:
            _LOG.info("%s in %s was learnt for microphone %r and speaker %r, not %r and %r; it is learnt again",
                      self.what, self.path, data.get("microphone"), data.get("speaker"), self.microphone, self.speaker)
            return None
        return value

    def _parse(self, data: dict[str, Any]) -> Any:
        """The value ``data`` holds; ValueError, naming the key, if it holds none usable."""
        raise NotImplementedError

    def _save(self, fields: dict[str, Any]) -> bool:
        payload = json.dumps({"microphone": self.microphone, "speaker": self.speaker, **fields}) + "\n"
        try:
            write_atomic(self.path, payload)
        except OSError as exc:
            _LOG.warning("cannot keep %s in %s (%s: %s); it is learnt again after a restart",
                         self.what, self.path, type(exc).__name__, exc)
            return False
        return True


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} is {value!r}, not a number")
    return float(value)


class PaceMemory(_PairFile):
    """Loads and saves the speaker's pace (ppm faster than the microphone) for one pair of PCMs."""

    what = "the speaker's pace"
    filename = FILENAME

    def load(self) -> float | None:
        """The pace kept for these two PCMs, or None (none kept, kept for others, or unusable: logged)."""
        return self._load()

    def _parse(self, data: dict[str, Any]) -> float:
        ppm = _number(data, "speaker_ppm")
        if abs(ppm) > MAX_PPM:
            raise ValueError(f"speaker_ppm {ppm} is beyond +-{MAX_PPM:.0f}")
        return ppm

    def save(self, ppm: float) -> bool:
        """Keep ``ppm`` for these two PCMs (atomically); False, logged, if it could not be written."""
        return self._save({"speaker_ppm": round(float(ppm), 2)})


@dataclass(frozen=True)
class EchoPath:
    """The linear canceller's echo path at 16 kHz: the echo lags the echo reference by ``delay``
    samples, and ``taps`` (from a few ms before that) are the filter that turns what was played
    into what the microphone heard."""

    delay: int
    taps: np.ndarray  # float32

    @property
    def delay_ms(self) -> float:
        """The delay in ms."""
        return self.delay / 16.0


class PathMemory(_PairFile):
    """Loads and saves the echo path (:class:`EchoPath`) for one pair of PCMs; ``taps`` is how many
    filter taps the canceller has (a kept filter of another size is not used)."""

    what = "the echo path"
    filename = PATH_FILENAME

    def __init__(self, directory: str | Path, *, microphone: str, speaker: str, taps: int, rate: int = 16000) -> None:
        super().__init__(directory, microphone=microphone, speaker=speaker)
        self.taps = taps
        self.rate = rate

    def load(self) -> EchoPath | None:
        """The echo path kept for these two PCMs, or None (none kept, kept for others, or unusable: logged)."""
        return self._load()

    def _parse(self, data: dict[str, Any]) -> EchoPath:
        if _number(data, "rate") != self.rate:
            raise ValueError(f"rate is {data['rate']}, not {self.rate}")
        delay = _number(data, "delay")
        if delay != int(delay) or not 0 <= delay <= self.rate:
            raise ValueError(f"delay {delay} is not a whole number of samples within a second")
        try:
            taps = np.frombuffer(base64.b64decode(data.get("taps", ""), validate=True), dtype="<f4")
        except (binascii.Error, TypeError, ValueError) as exc:
            raise ValueError(f"taps are not base64 of 32-bit floats ({exc})") from None
        if len(taps) != self.taps:
            raise ValueError(f"taps hold {len(taps)} values, not {self.taps}")
        if not np.all(np.isfinite(taps)) or float(np.max(np.abs(taps))) > MAX_TAP:
            raise ValueError(f"taps are not finite or beyond +-{MAX_TAP:g}")
        return EchoPath(int(delay), taps.astype(np.float32))

    def save(self, path: EchoPath) -> bool:
        """Keep ``path`` for these two PCMs (atomically); False, logged, if it could not be written."""
        taps = base64.b64encode(np.asarray(path.taps, dtype="<f4").tobytes()).decode("ascii")
        return self._save({"rate": self.rate, "delay": int(path.delay), "taps": taps})
