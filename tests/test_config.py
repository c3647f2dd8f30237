"""Config errors: each kind names the file, the key and what is expected, exits 2, no traceback."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from device.config import ConfigError, Secret, load_settings
from device.logs import RedactSecrets
from tests.rig.daemon import ROOT, run_cli

pytestmark = pytest.mark.timeout(60)


def write(tmp_path: Path, text: str, name: str = "speaker.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[wake]\nthreshold = 1.5\n", r"'wake.threshold' must be between 0.0 and 1.0, got 1.5"),
        ("[wake]\nthreshhold = 0.5\n", r"unknown key 'wake.threshhold'"),
        ("[audio]\nvolume = \"loud\"\n", r"'audio.volume' must be an integer, got 'loud'"),
        ("[realtime]\nbarge_in = \"always\"\n", r"'realtime.barge_in' must be one of 'wake_word', 'voice'"),
        ("[mqtt]\nport = 70000\n", r"'mqtt.port' must be between 1 and 65535"),
        ("[mqtt]\ndevice_id = \"kitchen/+\"\n", r"'mqtt.device_id' must match"),
        ("[speakers]\nx = 1\n", r"unknown section \[speakers\]"),
        ("[audio\ninput = 1\n", r"invalid TOML"),
        ("[realtime]\nurl = \"https://api.openai.com\"\n", r"'realtime.url' must start with ws:// or wss://"),
        ("[[devices]]\nname = \"lamp\"\ntype = \"light\"\n", r"'devices\[0\].command_topic' is required"),
        ("[[devices]]\ntype = \"light\"\ncommand_topic = \"a/set\"\n", r"missing key 'devices\[0\].name'"),
        ("[auth]\ntoken_url = \"http://h:8780/v1/realtime/token\"\n", r"'auth.device_secret_file' is required"),
    ],
)
def test_config_error_messages(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_settings(path, env={})
    assert str(path) in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
    missing_secret = write(tmp_path, '[auth]\ntoken_url = "http://h/t"\ndevice_secret_file = "%s"\n' % (tmp_path / "none.secret"))
    with pytest.raises(ConfigError, match=r"'auth.device_secret_file': secret file .*none.secret does not exist"):
        load_settings(missing_secret, env={})
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(write(tmp_path, f'[auth]\napi_key_file = "{empty}"\n'), env={})
    if os.geteuid() != 0:  # root reads everything
        locked = tmp_path / "locked.secret"
        locked.write_text("s3cr3t")
        locked.chmod(0)
        with pytest.raises(ConfigError, match="not readable"):
            load_settings(write(tmp_path, f'[auth]\napi_key_file = "{locked}"\n'), env={})


def test_secrets_from_files_and_env_never_show(tmp_path: Path) -> None:
    secret = tmp_path / "device.secret"
    secret.write_text("dev-secret-123456\n")
    s = load_settings(write(tmp_path, f'[auth]\ntoken_url = "http://h/t"\ndevice_secret_file = "{secret}"\n'), env={})
    assert s.auth.mode == "service"
    assert s.auth.device_secret is not None and s.auth.device_secret.reveal() == "dev-secret-123456"
    assert "dev-secret-123456" not in repr(s)
    env_key = load_settings(write(tmp_path, "", "b.toml"), env={"OPENAI_API_KEY": "sk-env-abcdef"})
    assert env_key.auth.mode == "direct" and "sk-env-abcdef" not in repr(env_key)
    assert load_settings(write(tmp_path, "", "c.toml"), env={}).auth.mode == "none"


def test_redaction_filter_scrubs_messages_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactSecrets(["sk-live-secret"]))
    with caplog.at_level(logging.INFO):
        logger.info("header was Bearer %s", "sk-live-secret")
        try:
            raise ValueError("bad key sk-live-secret")
        except ValueError:
            logger.exception("failed")
    text = caplog.text
    assert "sk-live-secret" not in text and "***" in text
    assert Secret("x", "f").__repr__() == "Secret(from f)"


def test_example_config_is_valid_apart_from_its_secret_file(tmp_path: Path) -> None:
    text = (ROOT / "config" / "speaker.toml").read_text()
    secret = tmp_path / "device.secret"
    secret.write_text("abc123456789")
    s = load_settings(write(tmp_path, text.replace("/etc/speaker/device.secret", str(secret))), env={})
    assert s.mqtt.device_id == "kitchen" and s.wake.model == "hey_jarvis"
    assert "{{devices}}" in s.realtime.instructions


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[wake]\nmodel = \"hey_javis\"\n", r"wake.model: unknown built-in model 'hey_javis'"),
        ("[wake]\nmodel = \"/nonexistent/jarvis.tflite\"\n", r"wake.model: model file /nonexistent/jarvis.tflite does not exist"),
    ],
)
def test_wake_model_errors_name_file_and_key_at_run_and_check(tmp_path: Path, text: str, expected: str) -> None:
    """config.py does not load the wake engine: the model is checked by `run` (exit 2) and `check`."""
    from device.cli import load_and_check

    path = write(tmp_path, text)
    load_settings(path, env={})  # the file itself is fine
    with pytest.raises(ConfigError, match=expected) as info:
        load_and_check(str(path))
    assert str(path) in str(info.value)
    run = run_cli(["run", "--config", str(path)])
    assert run.returncode == 2 and "Traceback" not in run.stderr and "wake.model" in run.stderr
    check = run_cli(["check", "--config", str(path)])
    assert check.returncode == 1 and "FAIL  config:" in check.stdout and "wake.model" in check.stdout


def test_config_does_not_import_the_wake_engine_or_alsa() -> None:
    import subprocess
    import sys

    code = ("import sys, device.config, device.conversation.machine, device.conversation.runner; "
            "bad = [m for m in ('device.wakeword', 'device.wake_engine', 'alsaaudio') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_run_config_error_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "[wake]\nthreshold = -1\n")
    result = run_cli(["run", "--config", str(path)])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"speaker: config error: {path}: 'wake.threshold' must be between 0.0 and 1.0" in result.stderr


def test_check_reports_a_config_error_as_a_failed_check(tmp_path: Path) -> None:
    path = write(tmp_path, "[wake]\nthreshold = -1\n")
    result = run_cli(["check", "--config", str(path)])
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"FAIL  config: {path}: 'wake.threshold' must be between 0.0 and 1.0, got -1.0"]
