"""The speaker's pace against the microphone, kept across restarts.

A microphone on another card than the speaker keeps another clock. The echo front-end measures
how far apart the two run (after about 45 s of the speaker playing) and tells the echo reference;
until then the echo drifts and both cancellers trail it. The pace belongs to the pair of cards,
so it is kept in ``<state_dir>/echo_pace.json`` with the two PCM names: after a restart the
reference reads at that pace from the first reply. A pace kept for other PCM names is not used.
One that no longer holds (other hardware behind the same names) shows as a drift again, and is
measured and corrected as a first one is.

A missing, unreadable or corrupt file is logged and ignored: the pace is then measured again.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from device.state_store import write_atomic

_LOG = logging.getLogger(__name__)

FILENAME = "echo_pace.json"
MAX_PPM = 2000.0  # no sound card's clock is this far off (crystals: within 100 ppm); beyond it the file is wrong

__all__ = ["PaceMemory"]


class PaceMemory:
    """Loads and saves the speaker's pace (ppm faster than the microphone) for one pair of PCMs."""

    def __init__(self, directory: str | Path, *, microphone: str, speaker: str) -> None:
        self.path = Path(directory) / FILENAME
        self.microphone = microphone
        self.speaker = speaker

    def load(self) -> float | None:
        """The pace kept for these two PCMs, or None (none kept, kept for others, or unusable: logged)."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            _LOG.warning("cannot read the speaker's pace from %s (%s: %s); it is measured again",
                         self.path, type(exc).__name__, exc)
            return None
        try:
            data: Any = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            ppm = data.get("speaker_ppm")
            if isinstance(ppm, bool) or not isinstance(ppm, (int, float)) or not math.isfinite(ppm):
                raise ValueError(f"speaker_ppm is {ppm!r}, not a number")
            if abs(ppm) > MAX_PPM:
                raise ValueError(f"speaker_ppm {ppm} is beyond +-{MAX_PPM:.0f}")
        except ValueError as exc:  # (json.JSONDecodeError is one)
            _LOG.warning("the speaker's pace in %s is unusable (%s); it is measured again", self.path, exc)
            return None
        if data.get("microphone") != self.microphone or data.get("speaker") != self.speaker:
            _LOG.info("the speaker's pace in %s was measured for microphone %r and speaker %r, not %r and %r; "
                      "it is measured again", self.path, data.get("microphone"), data.get("speaker"),
                      self.microphone, self.speaker)
            return None
        return float(ppm)

    def save(self, ppm: float) -> bool:
        """Keep ``ppm`` for these two PCMs (atomically); False, logged, if it could not be written."""
        payload = json.dumps({"microphone": self.microphone, "speaker": self.speaker,
                              "speaker_ppm": round(float(ppm), 2)}) + "\n"
        try:
            write_atomic(self.path, payload)
        except OSError as exc:
            _LOG.warning("cannot keep the speaker's pace in %s (%s: %s); it is measured again after a restart",
                         self.path, type(exc).__name__, exc)
            return False
        return True
