"""Sound cues, generated once: short, soft two-note chimes at 24 kHz S16LE mono."""

from __future__ import annotations

from functools import cache

import numpy as np

RATE = 24000
CUES = ("wake", "done", "error", "mute_on", "mute_off", "alarm")


def _note(freq: float, ms: float, *, glide_to: float | None = None, level: float = 0.5) -> np.ndarray:
    n = int(RATE * ms / 1000)
    t = np.arange(n) / RATE
    if glide_to is None:
        phase = 2 * np.pi * freq * t
    else:
        f = np.linspace(freq, glide_to, n)
        phase = 2 * np.pi * np.cumsum(f) / RATE
    # A bell-like tone: fundamental plus a quiet octave, fast attack, exponential decay.
    tone = np.sin(phase) + 0.25 * np.sin(2 * phase)
    attack = np.minimum(1.0, t / 0.006)
    decay = np.exp(-t / (ms / 1000 / 3.0))
    release = np.minimum(1.0, (n - np.arange(n)) / (RATE * 0.004))  # no click at the end
    return tone * attack * decay * release * (level / 1.25)


def _square(freq: float, ms: float, level: float = 0.7) -> np.ndarray:
    """A soft-edged square beep: unlike the bell-like notes of the other cues."""
    n = int(RATE * ms / 1000)
    t = np.arange(n) / RATE
    tone = np.tanh(4.0 * np.sin(2 * np.pi * freq * t)) / np.tanh(4.0)
    edge = np.minimum(1.0, np.minimum(np.arange(n), n - 1 - np.arange(n)) / (RATE * 0.003))  # no clicks
    return tone * edge * level


def _gap(ms: float) -> np.ndarray:
    return np.zeros(int(RATE * ms / 1000))


@cache
def cue_pcm(name: str) -> bytes:
    """The cue ``name`` (one of CUES) as 24 kHz S16LE mono bytes."""
    if name == "wake":  # rising fifth: "I'm listening"
        x = np.concatenate([_note(659.3, 90), _note(987.8, 140)])
    elif name == "done":  # falling fifth
        x = np.concatenate([_note(987.8, 90), _note(659.3, 160)])
    elif name == "error":  # two low, slightly sour notes
        x = np.concatenate([_note(392.0, 110), _gap(30), _note(370.0, 180)])
    elif name == "mute_on":  # gliding down
        x = _note(740.0, 220, glide_to=440.0)
    elif name == "mute_off":  # gliding up
        x = _note(440.0, 220, glide_to=740.0)
    elif name == "alarm":  # a timer: four quick high beeps, louder and brighter than any other cue
        beep = _square(1760.0, 80)
        x = np.concatenate([beep, _gap(50), beep, _gap(50), beep, _gap(50), beep])
    else:
        raise ValueError(f"unknown sound cue {name!r} (known: {', '.join(CUES)})")
    return np.round(x * 32767).astype("<i2").tobytes()


def cue_ms(name: str) -> int:
    return len(cue_pcm(name)) * 1000 // (2 * RATE)
