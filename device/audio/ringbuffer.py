"""Pre-roll: the most recent frames, so the words right after the wake word are not lost."""

from __future__ import annotations

import math
from collections import deque

from device.audio.frames import AudioFrame


class PreRoll:
    """Keeps the last ``seconds`` of frames (on the loop; not thread-safe)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._frames: deque[AudioFrame] = deque(maxlen=max(1, math.ceil(seconds / 0.08)))

    def append(self, frame: AudioFrame) -> None:
        self._frames.append(frame)

    def since(self, t: float) -> list[AudioFrame]:
        """Frames read at or after monotonic time ``t``, oldest first."""
        out: list[AudioFrame] = []
        for frame in reversed(self._frames):
            if frame.t < t:
                break
            out.append(frame)
        out.reverse()
        return out

    def clear(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)
