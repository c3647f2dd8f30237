"""The conversation core: a pure state machine (machine.py) driven by a runner (runner.py)."""
