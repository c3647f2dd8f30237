"""Speech for tests: espeak-ng synthesis converted by sox to 16 kHz S16 mono, cached per session."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

RATE = 16000


class Speech:
    """``say(text)`` -> int16 samples at 16 kHz mono (cached for the session)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        for tool in ("espeak-ng", "sox"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"the test rig needs {tool} (Debian package {tool})")

    def say(self, text: str, *, voice: str = "en-us", speed: int = 150) -> np.ndarray:
        key = hashlib.sha1(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
        raw = self.cache / f"{key}.raw"
        if not raw.exists():
            wav = self.cache / f"{key}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True, timeout=30)
            subprocess.run(["sox", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", str(raw)],
                           check=True, timeout=30)
        return np.fromfile(raw, dtype="<i2")

    @staticmethod
    def trim(x: np.ndarray, threshold: int = 300) -> np.ndarray:
        """Without leading and trailing silence."""
        loud = np.flatnonzero(np.abs(x) > threshold)
        return x[loud[0] : loud[-1] + 1] if len(loud) else x[:0]

    @staticmethod
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(int(RATE * seconds), dtype=np.int16)


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return Speech(tmp_path_factory.mktemp("speech"))
