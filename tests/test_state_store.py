"""The mute state and volume survive a restart; a broken state file never stops the speaker."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from device.config import AudioConfig, Settings, StateConfig
from device.state_store import FILENAME, SavedState, StateStore


def test_round_trip_survives_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state", default_volume=70)
    assert store.load() == SavedState(muted=False, volume=70)
    assert store.save(SavedState(muted=True, volume=33))

    restarted = StateStore(tmp_path / "state", default_volume=70)
    assert restarted.load() == SavedState(muted=True, volume=33)
    assert json.loads((tmp_path / "state" / FILENAME).read_text()) == {"muted": True, "volume": 33, "enabled": True, "dnd": False}


def test_switched_off_and_do_not_disturb_survive_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load()
    store.update(enabled=False, dnd=True)
    assert StateStore(tmp_path).load() == SavedState(muted=False, volume=70, enabled=False, dnd=True)
    (tmp_path / FILENAME).write_text('{"muted": false, "volume": 50, "enabled": "no", "dnd": 1}')
    assert StateStore(tmp_path).load() == SavedState(muted=False, volume=50, enabled=True, dnd=False)  # bad flags: defaults


def test_update_changes_one_field_and_persists(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load()
    assert store.update(volume=45) == SavedState(muted=False, volume=45)
    assert store.update(muted=True) == SavedState(muted=True, volume=45)
    assert store.update(volume=250).volume == 100  # clamped
    assert StateStore(tmp_path).load() == SavedState(muted=True, volume=100)


def test_for_settings_uses_state_dir_and_configured_volume(tmp_path: Path) -> None:
    settings = Settings(path=tmp_path / "speaker.toml", audio=AudioConfig(volume=55), state=StateConfig(dir=str(tmp_path / "s")))
    store = StateStore.for_settings(settings)
    assert store.path == tmp_path / "s" / FILENAME
    assert store.load() == SavedState(muted=False, volume=55)


def test_missing_file_gives_defaults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "device.state_store")
    assert StateStore(tmp_path / "nowhere", default_volume=20).load() == SavedState(False, 20)
    assert "no saved state" in caplog.text


@pytest.mark.parametrize(
    "content",
    [b"{\"muted\": tr", b"\x00\xff\xfe garbage", b"[1, 2]", b"", b"null"],
    ids=["truncated", "binary", "list", "empty", "null"],
)
def test_corrupt_file_is_logged_and_defaults_used(tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    (tmp_path / FILENAME).write_bytes(content)
    store = StateStore(tmp_path, default_volume=64)
    assert store.load() == SavedState(muted=False, volume=64)
    assert str(tmp_path / FILENAME) in caplog.text
    # and the next save repairs it
    assert store.save(SavedState(True, 10))
    assert StateStore(tmp_path).load() == SavedState(True, 10)


def test_invalid_fields_fall_back_one_by_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / FILENAME).write_text(json.dumps({"muted": True, "volume": "loud"}))
    assert StateStore(tmp_path, default_volume=50).load() == SavedState(muted=True, volume=50)
    assert "'volume' must be an integer 0-100" in caplog.text

    (tmp_path / FILENAME).write_text(json.dumps({"muted": "yes", "volume": 12}))
    assert StateStore(tmp_path, default_volume=50).load() == SavedState(muted=False, volume=12)
    assert "'muted' must be true or false" in caplog.text

    (tmp_path / FILENAME).write_text(json.dumps({"muted": True, "volume": 101}))
    assert StateStore(tmp_path, default_volume=50).load().volume == 50


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path)
    assert store.save(SavedState(True, 40))

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    assert store.save(SavedState(False, 90)) is False
    assert "cannot save state" in caplog.text and "No space left" in caplog.text
    monkeypatch.undo()
    assert StateStore(tmp_path).load() == SavedState(True, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]


def test_unwritable_state_dir_is_survivable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = StateStore(blocker / "state")
    assert store.load() == SavedState()
    assert store.save(SavedState(True, 1)) is False
    assert store.update(muted=True).muted is True  # holds in memory until restart
    assert str(blocker / "state") in caplog.text


def test_stale_temp_files_from_a_crash_are_removed(tmp_path: Path) -> None:
    (tmp_path / f".{FILENAME}.abc123.tmp").write_text('{"muted": tr')
    (tmp_path / FILENAME).write_text('{"muted": true, "volume": 5}')
    assert StateStore(tmp_path).load() == SavedState(True, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]


def test_a_bad_speaker_pace_file_is_named_and_measured_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The speaker's pace against a microphone on another card is kept beside the state; a file
    that is corrupt, out of range or not writable is logged by name, and the pace is measured again."""
    from device.audio.echo_memory import FILENAME as PACE
    from device.audio.echo_memory import PaceMemory

    memory = PaceMemory(tmp_path, microphone="plughw:1", speaker="default")
    assert memory.load() is None  # none kept yet: nothing to say
    assert memory.save(-48.317) and PaceMemory(tmp_path, microphone="plughw:1", speaker="default").load() == -48.32
    caplog.set_level(logging.INFO)
    for raw, why in (("{not json", "unusable"), ('{"microphone": "plughw:1", "speaker": "default", "speaker_ppm": 9000}', "beyond"),
                     ('{"microphone": "plughw:1", "speaker": "default", "speaker_ppm": "fast"}', "not a number"),
                     ('{"microphone": "plughw:2", "speaker": "default", "speaker_ppm": 12.5}', "learnt for microphone 'plughw:2'")):
        (tmp_path / PACE).write_text(raw)
        caplog.clear()
        assert memory.load() is None, raw
        assert why in caplog.text and str(tmp_path / PACE) in caplog.text, caplog.text
    (tmp_path / PACE).unlink()
    (tmp_path / PACE).mkdir()  # (a directory in the way: root can write anywhere else)
    assert not memory.save(30.0) and "cannot keep the speaker's pace in " + str(tmp_path / PACE) in caplog.text


def test_a_bad_echo_path_file_is_named_and_learnt_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The echo path the canceller learnt is kept beside the state, for the two PCMs it was learnt
    on; a file that is corrupt, of another filter size, for other PCMs or not writable is logged
    by name, and the path is learnt again."""
    import base64

    import numpy as np

    from device.audio.echo_memory import PATH_FILENAME as PATH
    from device.audio.echo_memory import EchoPath, PathMemory

    memory = PathMemory(tmp_path, microphone="plughw:1", speaker="default", taps=4096)
    assert memory.load() is None  # none kept yet: nothing to say
    taps = (np.random.default_rng(0).standard_normal(4096) * 0.05).astype(np.float32)
    assert memory.save(EchoPath(2480, taps))
    kept = PathMemory(tmp_path, microphone="plughw:1", speaker="default", taps=4096).load()
    assert kept is not None and kept.delay == 2480 and np.array_equal(kept.taps, taps)
    good = json.loads((tmp_path / PATH).read_text())
    caplog.set_level(logging.INFO)

    def b64(x: np.ndarray) -> str:
        return base64.b64encode(x.astype("<f4").tobytes()).decode()

    for change, why in (({"taps": "###"}, "not base64"), ({"taps": b64(taps[:100])}, "hold 100 values, not 4096"),
                        ({"taps": b64(np.full(4096, np.nan))}, "not finite"), ({"delay": -5}, "delay -5"),
                        ({"delay": "late"}, "not a number"), ({"rate": 48000}, "rate is 48000"),
                        ({"speaker": "hw:2"}, "learnt for microphone 'plughw:1' and speaker 'hw:2'")):
        (tmp_path / PATH).write_text(json.dumps({**good, **change}))
        caplog.clear()
        assert memory.load() is None, change
        assert why in caplog.text and str(tmp_path / PATH) in caplog.text, caplog.text
    (tmp_path / PATH).write_text("[1, 2")
    caplog.clear()
    assert memory.load() is None and "unusable" in caplog.text
    assert PathMemory(tmp_path, microphone="plughw:1", speaker="default", taps=2048).load() is None  # another filter
    (tmp_path / PATH).unlink()
    (tmp_path / PATH).mkdir()
    assert not memory.save(EchoPath(2480, taps)) and "cannot keep the echo path in " + str(tmp_path / PATH) in caplog.text
