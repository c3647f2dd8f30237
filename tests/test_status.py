"""What a person sees of a running daemon: journal priorities and `speaker status`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.rig.daemon import ROOT, run_cli
from tests.rig.simulator import write_device_config

LOG_SOME = """
import logging
from device.logs import setup_logging
setup_logging("debug", ["s3cr3t-value"])
logging.getLogger("speaker").info("state idle -> listening (wake)")
logging.getLogger("speaker").warning("microphone gone")
logging.getLogger("device.mqtt").error("token s3cr3t-value refused\\nsecond line")
logging.getLogger("speaker").debug("detail")
"""


@pytest.mark.parametrize("journal", [True, False])
def test_journal_gets_priorities_instead_of_timestamps(tmp_path: Path, journal: bool) -> None:
    out = tmp_path / "stderr"
    with open(out, "wb") as fh:
        st = os.fstat(fh.fileno())
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("JOURNAL_STREAM", None)
        if journal:  # systemd names the stream it connected stderr to
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", LOG_SOME], stderr=fh, env=env, check=True, timeout=30)
    lines = out.read_text().splitlines()
    assert "s3cr3t-value" not in out.read_text()
    if journal:
        assert lines == ["<6>speaker: state idle -> listening (wake)", "<4>speaker: microphone gone",
                         "<3>device.mqtt: token *** refused", "<3>second line", "<7>speaker: detail"]
    else:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    speaker: state idle -> listening", lines[0]), lines
        assert not any(line.startswith("<") for line in lines)


@pytest.mark.timeout(90)
@pytest.mark.simulator(pace=0)
def test_status_shows_state_uptime_last_error_and_last_conversation(tmp_path, alsa_rig, speech, simulator, daemon_factory) -> None:
    mic = alsa_rig.start_mic("test_mic")
    config = write_device_config(tmp_path, simulator, sections={
        "audio": {"input": "test_mic", "output": "test_spk"},
        "realtime": {"follow_up_s": 0.5},
        "auth": {"timeout_s": 1.0},
        "state": {"dir": str(tmp_path / "state")},
    })

    def status() -> subprocess.CompletedProcess[str]:
        return run_cli(["status", "--config", str(config)], env=alsa_rig.env)

    first = status()
    assert first.returncode == 3 and "no status file" in first.stdout, first.stdout

    simulator.fail_client_secrets = 500
    d = daemon_factory(["run", "--config", str(config)], alsa_rig.env)
    d.wait_for(r"ready: listening", timeout=20)
    idle = status()
    assert idle.returncode == 0, idle.stdout + idle.stderr
    assert re.search(r"^state:\s+idle$", idle.stdout, re.M) and re.search(r"^uptime:\s+\d+ s \(pid \d+\)$", idle.stdout, re.M)
    assert "last error:        none" in idle.stdout and "last conversation: none yet" in idle.stdout

    words = np.concatenate([speech.say("hey jarvis, what is the weather like"), speech.silence(1.0)])
    mark = d.mark()
    mic.play(words)
    d.wait_for(r"state error -> idle", timeout=20, start=mark)
    simulator.fail_client_secrets = None
    mark = d.mark()
    mic.play(words)
    d.wait_for(r"conversation ended \(no follow-up\)", timeout=20, start=mark)
    d.wait_for(r"state \w+ -> idle", timeout=5, start=mark)

    after = status()
    assert after.returncode == 0, after.stdout
    assert re.search(r"^conversations:\s+2, errors: 1$", after.stdout, re.M), after.stdout
    assert re.search(r"^last error:\s+token: TokenError: .*HTTP 500", after.stdout, re.M), after.stdout
    conv = re.search(r"^last conversation: .*, ([\d.]+) s, ended: no follow-up, tool calls: 0, tokens: (\d+)$", after.stdout, re.M)
    assert conv and float(conv.group(1)) > 0.5 and int(conv.group(2)) > 0, after.stdout
    assert simulator.api_key not in after.stdout
    # And what processing the microphone takes this CPU, once a window of it was measured.
    deadline = time.monotonic() + 12
    while "processing takes" not in after.stdout:
        assert time.monotonic() < deadline, after.stdout
        time.sleep(1.0)
        after = status()
    assert re.search(r"^microphone:\s+processing takes \d+ % of real time \(wake word \d+ %\); no echo cancellation$",
                     after.stdout, re.M), after.stdout

    assert d.stop(signal.SIGTERM) == 0
    stopped = status()
    assert stopped.returncode == 3 and "not running (last state: stopped)" in stopped.stdout, stopped.stdout
    assert "errors: 1" in stopped.stdout  # the history stays readable
