"""Test hook: a daemon started with this folder on PYTHONPATH and ``SPEAKER_TEST_CLOCK_FILE`` set
sees ``time.time()`` shifted by the number of seconds in that file (read again every 0.1 s), as if
the system clock had been set. Only the wall clock moves; CLOCK_MONOTONIC does not, as on Linux."""

import os
import time

_path = os.environ.get("SPEAKER_TEST_CLOCK_FILE")
if _path:
    _real_time = time.time
    _state = {"offset": 0.0, "read": 0.0}

    def _shifted() -> float:
        now = time.monotonic()
        if now - _state["read"] > 0.1:
            _state["read"] = now
            try:
                with open(_path, encoding="ascii") as f:
                    _state["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _real_time() + _state["offset"]

    time.time = _shifted
