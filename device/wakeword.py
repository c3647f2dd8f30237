"""The wake word detector: openWakeWord models, one 80 ms frame at a time, in the capture's analysis thread.

Default engine: the models pyopen-wakeword ships, run by its bundled TFLite with one thread and
the XNNPACK delegate (:mod:`device.wake_engine`). Optional engine ``onnx``: the ``openwakeword``
package (``pip install 'realtime-speaker[onnx]'``) for people's own .onnx models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from device.audio.frames import FRAME_16K
from device.config import ConfigError, Settings, WakeConfig
from device.wake_engine import BUILTIN_MODELS, EngineError, OpenWakeWordEngine, builtin_model_path

FRAME_SAMPLES = FRAME_16K  # 80 ms at 16 kHz
GUARD_SAMPLES = 16000  # no detections in the first second after start or reset


class WakeWordError(Exception):
    """The wake word model or engine cannot be used; the message names the cause."""


@dataclass(frozen=True)
class Detection:
    model: str
    score: float
    t: float  # time.monotonic() when the frame that crossed the threshold was processed


class _Engine(Protocol):
    def process(self, pcm: bytes) -> float: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class _OnnxEngine:
    """openWakeWord's own package with ONNX runtime (optional dependency)."""

    def __init__(self, model: str) -> None:
        try:
            from openwakeword.model import Model  # type: ignore[import-not-found]
        except ImportError:
            raise WakeWordError(
                "wake.engine = 'onnx' needs the openwakeword package: pip install 'realtime-speaker[onnx]' "
                "(or use engine = 'tflite' with the built-in models)"
            ) from None
        try:
            self._model = Model(wakeword_models=[model], inference_framework="onnx")
        except Exception as exc:  # openwakeword raises assorted types for a bad model
            raise WakeWordError(f"openwakeword cannot load wake model {model!r}: {exc}") from None

    def process(self, pcm: bytes) -> float:
        scores = self._model.predict(np.frombuffer(pcm, dtype=np.int16))
        return float(max(scores.values())) if scores else 0.0

    def reset(self) -> None:
        self._model.reset()

    def close(self) -> None:
        pass


def resolve_model(cfg: WakeConfig) -> tuple[str, str]:
    """(name, model path or built-in name for the engine); raises WakeWordError with the cause."""
    spec = cfg.model.strip()
    is_path = "/" in spec or spec.endswith((".tflite", ".onnx"))
    if cfg.engine == "tflite":
        if not is_path:
            if spec not in BUILTIN_MODELS:
                raise WakeWordError(
                    f"wake.model: unknown built-in model {spec!r} (built-in: {', '.join(BUILTIN_MODELS)}; "
                    "or give the path to a .tflite file)"
                )
            return spec, str(builtin_model_path(spec))
        path = Path(spec).expanduser()
        if path.suffix == ".onnx":
            raise WakeWordError(f"wake.model: {path} is an ONNX model; set wake.engine = 'onnx' to use it")
        if not path.is_file():
            raise WakeWordError(f"wake.model: model file {path} does not exist")
        return path.stem, str(path)
    if is_path:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WakeWordError(f"wake.model: model file {path} does not exist")
        return path.stem, str(path)
    return spec, spec


class WakeWord:
    """Scores 80 ms frames; reports a :class:`Detection` when the score crosses the threshold.

    Detections are suppressed during the first second of audio after start or :meth:`reset`
    (the model's buffers start from silence) and for ``refractory_s`` after a detection; a score
    that stays above the threshold counts once.
    """

    def __init__(self, cfg: WakeConfig) -> None:
        self.cfg = cfg
        self.name, target = resolve_model(cfg)
        self._engine: _Engine
        if cfg.engine == "onnx":
            self._engine = _OnnxEngine(target)
        else:
            try:
                self._engine = OpenWakeWordEngine(target, threads=cfg.threads, xnnpack=True)
            except EngineError as exc:
                raise WakeWordError(f"wake.model: {exc}") from None
        self.threshold = cfg.threshold
        self._refractory = int(cfg.refractory_s * 16000)
        self.score = 0.0  # last frame's score
        self._samples = 0  # audio seen since start/reset
        self._blocked_until = GUARD_SAMPLES
        self._armed = True

    @property
    def engine_description(self) -> str:
        """How the model runs (engine, threads, XNNPACK), for ``speaker check``."""
        if isinstance(self._engine, OpenWakeWordEngine):
            return self._engine.description
        return "onnx (openwakeword)"

    def process(self, pcm16k: bytes) -> Detection | None:
        """Score one frame (1280 samples S16LE mono at 16 kHz)."""
        score = self._engine.process(pcm16k)
        self.score = score
        self._samples += len(pcm16k) >> 1
        if score <= self.threshold:
            self._armed = True
            return None
        if self._armed and self._samples > self._blocked_until:
            # One detection per crossing: the score must drop below the threshold again (and the
            # refractory period pass) before the next one.
            self._armed = False
            self._blocked_until = self._samples + self._refractory
            return Detection(self.name, score, time.monotonic())
        return None

    def reset(self) -> None:
        """Forget the audio so far (e.g. after a conversation); re-arms the first-second guard."""
        self._engine.reset()
        self._samples = 0
        self._blocked_until = GUARD_SAMPLES
        self._armed = True
        self.score = 0.0

    def close(self) -> None:
        self._engine.close()


def check_model(settings: Settings) -> None:
    """Raise ConfigError (naming the file and ``wake.model``) if the configured model cannot be used."""
    try:
        resolve_model(settings.wake)
    except WakeWordError as exc:
        raise ConfigError(f"{settings.path}: {exc}") from None


def probe_model(cfg: WakeConfig) -> str:
    """Load the model and score one second of silence; for ``speaker check``."""
    ww = WakeWord(cfg)
    try:
        silence = bytes(FRAME_SAMPLES * 2)
        t0 = time.perf_counter()
        for _ in range(13):
            ww.process(silence)
        ms = (time.perf_counter() - t0) * 1000
    finally:
        ww.close()
    engine = ww.engine_description
    return f"wake model {ww.name} ({engine}) loaded; 1 s of audio scored in {ms:.0f} ms"
