"""[timers] and [device] config keys (issue 12): defaults, and errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.config import ConfigError, load_settings
from device.timers.clock import local_zone

pytestmark = pytest.mark.timeout(30)


def test_defaults_and_values(tmp_path: Path) -> None:
    p = tmp_path / "speaker.toml"
    p.write_text("")
    s = load_settings(p, env={})
    assert (s.timers.ring_max_s, s.timers.missed_grace_s, s.device.timezone) == (300, 600, "")
    p.write_text('[timers]\nring_max_s = 60\nmissed_grace_s = 0\n[device]\ntimezone = "Europe/Berlin"\n')
    s = load_settings(p, env={})
    assert (s.timers.ring_max_s, s.timers.missed_grace_s, s.device.timezone) == (60, 0, "Europe/Berlin")
    assert str(local_zone(s.device.timezone)) == "Europe/Berlin"


@pytest.mark.parametrize("text, expected", [
    ('[device]\ntimezone = "Mars/Olympus"\n', r"'device.timezone' must be an IANA time zone such as 'Europe/Berlin' or 'UTC', got 'Mars/Olympus'"),
    ('[device]\ntimezone = "../../etc/passwd"\n', r"'device.timezone' must be an IANA time zone"),
    ("[timers]\nring_max_s = 0\n", r"'timers.ring_max_s' must be between 5 and 3600, got 0"),
    ("[timers]\nmissed_grace_s = -1\n", r"'timers.missed_grace_s' must be between 0 and 86400"),
    ('[timers]\nring_max_s = "5m"\n', r"'timers.ring_max_s' must be an integer, got '5m'"),
    ("[timers]\nsnooze_s = 60\n", r"unknown key 'timers.snooze_s'"),
])
def test_bad_values_name_the_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "speaker.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_settings(p, env={})
    assert str(p) in str(info.value)


def test_the_system_zone_is_a_zone_with_dst_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    assert str(local_zone("")) == "America/New_York"
    monkeypatch.delenv("TZ")
    zone = local_zone("")
    assert hasattr(zone, "key") or str(zone) == "localtime"
