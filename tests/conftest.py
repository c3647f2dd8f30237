"""Shared fixtures: the test rig of real parts (ALSA file PCMs, espeak-ng speech, mosquitto,
the realtime simulator, the daemon as a subprocess)."""

pytest_plugins = [
    "tests.rig.alsa",
    "tests.rig.speech",
    "tests.rig.broker",
    "tests.rig.simulator",
    "tests.rig.daemon",
]
